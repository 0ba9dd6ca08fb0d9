"""Invoke deployed functions through the AWS Lambda Invoke API (RequestResponse).

boto3 is imported when the first client is built, not with this module, because import time is cold-start
time. No endpoint is set here: boto3 reads ``AWS_ENDPOINT_URL_LAMBDA`` or ``AWS_ENDPOINT_URL``, which is how
the same code reaches the local Lambda service (squash.local).

botocore's own retries are off (one attempt per call): `squash.compute.retry` is the one retry layer, under
each node's retry budget, so throttled calls are not retried three times inside every Squash attempt.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from squash.compute.base import remote_error
from squash.errors import (
    InvocationError,
    InvocationTimeoutError,
    LimitExceededError,
    ThrottledInvocationError,
    WorkerCrashedError,
)

_THROTTLED = frozenset({"TooManyRequestsException", "EC2ThrottledException", "ThrottlingException"})
_TOO_LARGE = frozenset({"RequestTooLargeException", "RequestEntityTooLargeException"})
_TIMED_OUT = frozenset({"Sandbox.Timedout"})
# The runtime died under the handler (killed, exited, lost): the handler did not fail, its worker did.
_CRASHED = frozenset({"Runtime.ExitError", "Runtime.Unknown"})
_RESPONSE_TOO_LARGE = "Function.ResponseSizeTooLarge"


class LambdaInvoker:
    """Synchronous Lambda invocations from many threads through one client.

    Args:
        client: a boto3 Lambda client to use (tests pass a stubbed one); give it botocore retries off
            (``Config(retries={"total_max_attempts": 1})``) as the default one, built on first use, has.
        max_connections: HTTP connections kept open, at least the widest fan-out, so no thread waits for one.
        read_timeout: seconds to wait for a response; keep it above the invoked functions' timeout, or a slow
            child is abandoned (and retried) while still running.
    """

    def __init__(self, client: Any = None, *, max_connections: int = 64, read_timeout: float = 910.0) -> None:
        self._client = client
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    max_pool_connections=self.max_connections,
                    read_timeout=self.read_timeout,
                    connect_timeout=10,
                    retries={"mode": "standard", "total_max_attempts": 1},
                )
                self._client = boto3.client("lambda", config=config)
            return self._client

    def invoke(self, function: str, payload: bytes) -> dict[str, Any]:
        from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

        try:
            response = self.client.invoke(FunctionName=function, InvocationType="RequestResponse", Payload=payload)
            body = response["Payload"].read()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "Unknown"), error.get("Message", str(exc))
            if code in _THROTTLED:
                raise ThrottledInvocationError(
                    f"{function} was throttled ({code}: {message}); raise its concurrency or retry later"
                ) from exc
            if code in _TOO_LARGE:
                raise LimitExceededError(f"the request to {function} is too large ({code}: {message})") from exc
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            raise InvocationError(
                f"invoking {function} failed with {code}: {message}", retryable=status >= 500
            ) from exc
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise InvocationTimeoutError(f"{function} did not answer in time: {exc}") from exc
        if response.get("FunctionError"):
            self._raise_function_error(function, body)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise InvocationError(f"{function} returned a response that is not JSON ({exc})") from exc

    @staticmethod
    def _raise_function_error(function: str, body: bytes) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        error_type = str(payload.get("errorType", "Unhandled"))
        message = str(payload.get("errorMessage", body[:500].decode("utf-8", "replace")))
        if error_type in _TIMED_OUT or "Task timed out" in message:
            raise InvocationTimeoutError(f"{function} timed out: {message}")
        if error_type in _CRASHED:
            raise WorkerCrashedError(f"{function} crashed before answering ({error_type}: {message})")
        if error_type == _RESPONSE_TOO_LARGE:
            raise LimitExceededError(f"the response of {function} is over Lambda's payload limit: {message}")
        raise remote_error(function, error_type, message)
