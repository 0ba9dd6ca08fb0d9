"""Handlers run by the local Lambda service in tests/test_local_lambda.py (each in its own worker process)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Module state survives between invocations on a warm worker.
_INVOCATIONS = 0


def echo(event: dict[str, Any], context: Any) -> Any:
    """Report the event, this worker's pid and invocation count, and what the runtime gave the handler."""
    global _INVOCATIONS
    _INVOCATIONS += 1
    time.sleep(event.get("sleep", 0))
    if "size" in event:
        return "x" * event["size"]
    spawned = subprocess.Popen(["sleep", "60"]).pid if event.get("spawn") else None
    return {
        "event": event,
        "pid": os.getpid(),
        "count": _INVOCATIONS,
        "spawned": spawned,
        "request_id": context.aws_request_id,
        "client_context": getattr(context.client_context, "custom", None),
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_arn": context.invoked_function_arn,
        "memory_mb": context.memory_limit_in_mb,
        "cwd": os.getcwd(),
        "env": {name: os.environ.get(name) for name in ("GREETING", "STAGE", "TMPDIR", "PYTHONPATH", "BUCKET")},
    }


def sleep(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Sleep ``event["seconds"]``."""
    time.sleep(event["seconds"])
    return {"pid": os.getpid()}


def fail(event: dict[str, Any], context: Any) -> None:
    """Raise, or kill the worker outright with ``{"exit": code}``."""
    if "exit" in event:
        os._exit(event["exit"])
    raise ValueError(event.get("message", "boom"))


def fan_out(event: dict[str, Any], context: Any) -> list[Any]:
    """Invoke the child function ``event["n"]`` times in parallel through boto3 and return its answers."""
    import boto3

    client = boto3.client("lambda")

    def call(i: int) -> Any:
        response = client.invoke(FunctionName=os.environ["CHILD_FUNCTION"], Payload=json.dumps({"i": i}))
        return json.loads(response["Payload"].read())

    with ThreadPoolExecutor(event["n"]) as pool:
        return list(pool.map(call, range(event["n"])))
