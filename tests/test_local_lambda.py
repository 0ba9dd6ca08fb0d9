"""Tests of squash.local: the local Lambda service through boto3, moto S3, stack lifecycle, template, CLI.

Handlers live in tests/local_functions/app/handlers.py and are wired by tests/local_functions/template.yaml.
One stack serves the whole module; counters are compared as before/after differences.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from squash.compute.aws_lambda import LambdaInvoker
from squash.compute.retry import retryable
from squash.errors import InvalidInputError, WorkerCrashedError
from squash.local import FunctionSpec, LocalStack, load_functions
from squash.local.invoke_api import REQUEST_LIMIT, STATS_PATH
from squash.local.sandbox import RESPONSE_LIMIT
from squash.local.testing import local_stack_fixture

FUNCTIONS = Path(__file__).parent / "local_functions"
TEMPLATE = FUNCTIONS / "template.yaml"
REPO_ROOT = Path(__file__).resolve().parents[1]

local_stack = local_stack_fixture(TEMPLATE, workers=2)


def _client() -> Any:
    """A Lambda client configured only by the environment; no retries, so throttles surface as on AWS."""
    return boto3.client("lambda", config=Config(retries={"total_max_attempts": 1}, read_timeout=30))


def _invoke(client: Any, name: str, event: Any = None, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(event or {}), **kwargs)
    return response, json.loads(response["Payload"].read() or b"null")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; an unreaped zombie counts as gone."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


def _wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def test_template_reads_functions_with_globals_and_intrinsics() -> None:
    specs = {spec.logical_id: spec for spec in load_functions(TEMPLATE, parameters={"Stage": "ci"})}
    echo, parent, sleepy = specs["Echo"], specs["Parent"], specs["Sleepy"]
    assert echo.name == "Echo" and echo.handler == "handlers.echo"
    assert echo.code_uri == FUNCTIONS / "app"
    assert (echo.memory_size, echo.timeout, echo.reserved_concurrency) == (256, 5.0, None)
    # Globals merged under the function's own variables; !ImportValue cannot be known locally: left out.
    assert echo.environment == {"STAGE": "ci", "GREETING": "hello-ci"}
    assert parent.name == "ci-parent" and parent.alias == "live" and parent.timeout == 20.0
    assert parent.environment["CHILD_FUNCTION"] == "arn:aws:lambda:us-east-1:123456789012:function:Echo"
    assert (sleepy.reserved_concurrency, sleepy.memory_size) == (1, 128)
    with pytest.raises(InvalidInputError, match="not declared"):
        load_functions(TEMPLATE, parameters={"Nope": "1"})


def test_template_intrinsic_forms(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "template.yaml").write_text(
        """
Parameters:
  Env: {Type: String, Default: dev}
  Size: {Type: Number, Default: 512}
Resources:
  Data:
    Type: AWS::S3::Bucket
    Properties: {BucketName: !Sub "data-${Env}"}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code
      Handler: app.handler
      MemorySize: !Ref Size
      Environment:
        Variables:
          SUB_LIST: !Sub ["${A}-${AWS::Region}", {A: !Ref Env}]
          JOINED: !Join ["/", [a, !Ref Env]]
          PICKED: !Select [1, !Split [",", "x,y,z"]]
          LITERAL: !Sub "${!NotAVariable}"
          BUCKET: !Ref Data
          BUCKET_ARN: !GetAtt Data.Arn
          FLAG: true
          CONDITIONAL: !If [IsProd, a, b]
"""
    )
    (spec,) = load_functions(tmp_path / "template.yaml", region="eu-west-1")
    assert spec.memory_size == 512 and spec.timeout == 3.0
    assert spec.environment == {
        "SUB_LIST": "dev-eu-west-1",
        "JOINED": "a/dev",
        "PICKED": "y",
        "LITERAL": "${NotAVariable}",
        "BUCKET": "data-dev",
        "BUCKET_ARN": "arn:aws:s3:::data-dev",
        "FLAG": "true",
    }
    (tmp_path / "template.yaml").write_text("Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n")
    with pytest.raises(InvalidInputError, match="no CodeUri"):
        load_functions(tmp_path / "template.yaml")


def test_echo_round_trip_configured_by_environment(local_stack: LocalStack) -> None:
    assert os.environ["AWS_ENDPOINT_URL_LAMBDA"] == local_stack.lambda_endpoint_url
    context = base64.b64encode(json.dumps({"custom": {"caller": "test"}}).encode()).decode()
    response, body = _invoke(_client(), "Echo", {"hello": [1, 2]}, ClientContext=context)
    assert response["StatusCode"] == 200 and "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    assert response["ResponseMetadata"]["RequestId"] == body["request_id"]
    assert body["event"] == {"hello": [1, 2]} and body["client_context"] == {"caller": "test"}
    assert body["function_arn"] == "arn:aws:lambda:us-east-1:123456789012:function:Echo"
    assert body["memory_mb"] == "256" and 0 < body["remaining_ms"] <= 5000
    assert body["cwd"] == str(FUNCTIONS / "app")
    env = body["env"]
    assert env["GREETING"] == "hello-local" and env["STAGE"] == "local" and env["BUCKET"] is None
    assert env["TMPDIR"].startswith(str(local_stack.scratch_dir))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(FUNCTIONS / "app"), str(REPO_ROOT)]


def test_warm_workers_are_reused_and_cold_starts_counted_per_worker(local_stack: LocalStack) -> None:
    client = _client()
    answers = [_invoke(client, "Echo")[1] for _ in range(4)]
    assert len({a["pid"] for a in answers}) == 1
    counts = [a["count"] for a in answers]
    assert counts == list(range(counts[0], counts[0] + 4))
    # Two overlapping invocations need a second worker: the pool grows to its limit of 2.
    results: list[Any] = []
    together = threading.Barrier(2)

    def call() -> None:
        together.wait()
        results.append(_invoke(client, "Echo", {"sleep": 0.5})[1])

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r["pid"] for r in results}) == 2
    for _ in range(3):
        _invoke(client, "Echo")
    stats = local_stack.stats()["Echo"]
    assert stats["workers_started"] == 2 and len(stats["pids"]) == 2
    assert stats["cold_starts"] == 2  # once per worker, however many invocations followed
    assert stats["init_seconds_total"] > 0


def test_fan_out_through_the_inherited_endpoint(local_stack: LocalStack) -> None:
    response, body = _invoke(_client(), "local-parent", {"n": 2})
    assert "FunctionError" not in response, body
    assert [child["event"] for child in body] == [{"i": 0}, {"i": 1}]
    assert all(child["env"]["GREETING"] == "hello-local" for child in body)


def test_handler_exception_returns_the_aws_error_envelope(local_stack: LocalStack) -> None:
    response, body = _invoke(_client(), "Failing", {"message": "bad input"})
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "bad input"
    assert body["requestId"] and "raise ValueError" in "".join(body["stackTrace"])


def test_worker_exit_is_reported_and_the_worker_replaced(local_stack: LocalStack) -> None:
    client = _client()
    response, body = _invoke(client, "Failing", {"exit": 3})
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("Runtime exited with error: exit status 3")
    assert _invoke(client, "Failing")[1]["errorType"] == "ValueError"


def test_a_dead_worker_is_a_retryable_crash_for_the_invoker(local_stack: LocalStack) -> None:
    with pytest.raises(WorkerCrashedError, match=r"Failing crashed .*Runtime\.ExitError.*exit status 3") as crashed:
        LambdaInvoker(_client()).invoke("Failing", b'{"exit": 3}')
    assert retryable(crashed.value)


def test_import_error_is_an_init_error(local_stack: LocalStack) -> None:
    response, body = _invoke(_client(), "Broken")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ImportModuleError" and "no_such_module" in body["errorMessage"]


def test_reserved_concurrency_throttles_immediately(local_stack: LocalStack) -> None:
    client = _client()
    start = threading.Barrier(2)
    outcomes: list[Any] = []

    def call() -> None:
        start.wait()
        try:
            outcomes.append(_invoke(client, "Sleepy", {"seconds": 1})[0]["StatusCode"])
        except client.exceptions.TooManyRequestsException as exc:
            outcomes.append(exc.response)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    throttled = [o for o in outcomes if isinstance(o, dict)]
    assert len(throttled) == 1 and 200 in outcomes
    assert throttled[0]["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert throttled[0]["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert local_stack.stats()["Sleepy"]["throttles"] == 1


def test_timeout_kills_and_replaces_the_worker(local_stack: LocalStack) -> None:
    client = _client()
    first_pid = _invoke(client, "Slowpoke", {"seconds": 0})[1]["pid"]
    started = time.monotonic()
    response, body = _invoke(client, "Slowpoke", {"seconds": 30})
    assert time.monotonic() - started < 5
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Sandbox.Timedout"
    assert body["errorMessage"].endswith("Task timed out after 1.00 seconds")
    assert _wait_dead([first_pid]) == []
    response, body = _invoke(client, "Slowpoke", {"seconds": 0})
    assert "FunctionError" not in response and body["pid"] != first_pid
    assert local_stack.stats()["Slowpoke"]["timeouts"] == 1


def test_api_errors_and_invocation_types(local_stack: LocalStack) -> None:
    client = _client()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="NoSuchFunction", Payload=b"{}")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="Echo", Qualifier="7", Payload=b"{}")
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName="Echo", Payload=b"x" * (REQUEST_LIMIT + 1))
    response, body = _invoke(client, "Echo", {"size": RESPONSE_LIMIT + 1})
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Function.ResponseSizeTooLarge"
    assert client.invoke(FunctionName="local-parent:live", InvocationType="DryRun")["StatusCode"] == 204
    arn = "arn:aws:lambda:us-east-1:123456789012:function:Echo:$LATEST"
    assert client.invoke(FunctionName=arn, InvocationType="DryRun")["StatusCode"] == 204
    before = local_stack.stats()["Echo"]["invocations"]
    assert client.invoke(FunctionName="Echo", InvocationType="Event", Payload=b"{}")["StatusCode"] == 202
    local_stack.wait_idle(timeout=10)
    assert local_stack.stats()["Echo"]["invocations"] == before + 1
    with urllib.request.urlopen(local_stack.lambda_endpoint_url + STATS_PATH) as reply:
        served = json.load(reply)["functions"]
    assert served.keys() == local_stack.stats().keys() and served["Echo"]["invocations"] == before + 1


@pytest.mark.parametrize(
    "payload",
    [
        b'{"x": NaN}',
        b'{"x": [1, Infinity]}',
        b'{"x": -Infinity}',
        b'{"a": 1} {"b": 2}',  # trailing content
        b'{"a": ',
        b"not json",
        b'{"a": "\xff"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_payloads_that_are_not_strict_json_are_refused_as_aws_does(local_stack: LocalStack, payload: bytes) -> None:
    client = _client()
    before = local_stack.stats()["Echo"]["invocations"]
    for invocation_type in ("RequestResponse", "Event"):
        with pytest.raises(client.exceptions.InvalidRequestContentException, match="Could not parse request body"):
            client.invoke(FunctionName="Echo", InvocationType=invocation_type, Payload=payload)
    assert local_stack.stats()["Echo"]["invocations"] == before


def test_strict_json_and_empty_payloads_reach_the_handler_as_aws_delivers_them(local_stack: LocalStack) -> None:
    client = _client()
    strict = {"big": 10**30, "tiny": 5e-324, "text": "é\U0001f600", "escaped": "\\ud800"}
    assert _invoke(client, "Echo", strict)[1]["event"] == strict
    body = json.loads(client.invoke(FunctionName="Echo")["Payload"].read())
    assert body["event"] == {}  # AWS hands an empty payload to the function as {}


@pytest.mark.parametrize(
    "context", ["not base64!", base64.b64encode(b"[1, 2]").decode(), base64.b64encode(b"{").decode()]
)
def test_client_context_must_be_base64_of_a_json_object(local_stack: LocalStack, context: str) -> None:
    client = _client()
    with pytest.raises(client.exceptions.InvalidRequestContentException, match="Base64-encoded JSON object"):
        client.invoke(FunctionName="Echo", Payload=b"{}", ClientContext=context)


def test_wait_idle_covers_calls_nobody_waits_for(local_stack: LocalStack) -> None:
    before = local_stack.stats()["Sleepy"]["invocations"]
    response, _ = _invoke(_client(), "Sleepy", {"seconds": 1}, InvocationType="Event")
    assert response["StatusCode"] == 202
    with pytest.raises(TimeoutError, match="1 invocations still running"):
        local_stack.wait_idle(timeout=0.05)
    local_stack.wait_idle(timeout=10)
    assert local_stack.stats()["Sleepy"]["invocations"] == before + 1


def test_s3_through_moto_server(local_stack: LocalStack) -> None:
    s3 = boto3.client("s3")
    assert s3.meta.endpoint_url == local_stack.s3_endpoint_url
    s3.create_bucket(Bucket="squash-local-test")
    s3.put_object(Bucket="squash-local-test", Key="a/b.bin", Body=b"\x00\x01payload")
    assert s3.get_object(Bucket="squash-local-test", Key="a/b.bin")["Body"].read() == b"\x00\x01payload"
    ranged = s3.get_object(Bucket="squash-local-test", Key="a/b.bin", Range="bytes=2-4")
    assert ranged["Body"].read() == b"pay"


def test_stack_exit_kills_workers_and_restores_environment(tmp_path: Path) -> None:
    before = dict(os.environ)
    spec = FunctionSpec(name="Solo", code_uri=FUNCTIONS / "app", handler="handlers.echo", timeout=5)
    with LocalStack(functions=[spec], workers=2, prewarm=True) as stack:
        pids = stack.worker_pids()
        assert len(pids) == 2 and stack.stats()["Solo"]["workers_started"] == 2
        assert os.environ["AWS_ENDPOINT_URL_LAMBDA"] == stack.lambda_endpoint_url
        body = _invoke(_client(), "Solo", {"spawn": True})[1]
        grandchild = body["spawned"]
        assert body["pid"] in pids and _alive(grandchild)
        assert stack.stats()["Solo"]["cold_starts"] == 0  # pre-warmed workers do not make callers wait
        scratch = stack.scratch_dir
    assert dict(os.environ) == before
    assert _wait_dead([*pids, grandchild], timeout=2) == []
    assert not scratch.exists()


def test_cli_up_and_down(tmp_path: Path) -> None:
    env_file = tmp_path / ".squash-local.env"
    command = [sys.executable, "-m", "squash.cli", "local"]
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen(
            [*command, "up", "--template", str(TEMPLATE), "--workers", "1", "--env-file", str(env_file)],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "squash local up did not become ready"
            time.sleep(0.05)
        exports = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        assert (tmp_path / ".squash-local.pid").read_text().strip() == str(up.pid)
        client = boto3.client("lambda", endpoint_url=exports["AWS_ENDPOINT_URL_LAMBDA"], config=Config(read_timeout=30))
        worker = _invoke(client, "Echo", {"via": "cli"})[1]["pid"]
        down = subprocess.run(
            [*command, "down", "--env-file", str(env_file)], capture_output=True, text=True, timeout=30
        )
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=10) == 0
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGKILL)
            up.wait()
    assert "export AWS_ENDPOINT_URL_LAMBDA=" in (tmp_path / "up.log").read_text()
    assert not env_file.exists() and not (tmp_path / ".squash-local.pid").exists()
    assert _wait_dead([worker], timeout=2) == []
