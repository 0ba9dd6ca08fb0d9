"""A local AWS Lambda: the Invoke API on loopback, backed by pools of warm ``awslambdaric`` workers.

boto3 reaches it through ``AWS_ENDPOINT_URL_LAMBDA``. Behaviour follows AWS where a caller can see it:
``RequestResponse``/``Event``/``DryRun`` invocation types, error envelopes with ``X-Amz-Function-Error``,
``ResourceNotFoundException`` (404), ``RequestTooLargeException`` (413), ``InvalidRequestContentException``
(400) for a payload that is not strict JSON (``NaN`` and ``Infinity`` included) or a client context that is
not base64 of a JSON object, an empty payload handed to the function as ``{}``, immediate throttling with
``TooManyRequestsException`` (429) when a function's workers are all busy, ``Sandbox.Timedout`` at the
template's timeout (the worker is killed and later replaced), ``Runtime.ExitError`` when a worker dies.

Not emulated: versions and aliases beyond ``$LATEST`` and the template's ``AutoPublishAlias``, retries and
destinations of ``Event`` invocations, ``LogType=Tail``, layers, the memory limit (``MemorySize`` is only
reported to the handler) and the template's ``Runtime`` (workers run on this interpreter).
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from squash.errors import InvalidInputError
from squash.local.sandbox import (
    Invocation,
    QuietHandler,
    QuietHTTPServer,
    Result,
    Sandbox,
    SandboxGone,
    error_result,
)
from squash.local.template import DEFAULT_ACCOUNT, DEFAULT_REGION, FunctionSpec

log = logging.getLogger(__name__)

REQUEST_LIMIT = 6_291_456  # synchronous invoke payload, as on AWS
ASYNC_REQUEST_LIMIT = 1_048_576  # Event invoke payload, as on AWS
# How long a cold worker may take to import its handler before the invocation times out. AWS allows 10 s of
# init and then retries init within the function timeout; this is that bound.
INIT_TIMEOUT = 10.0
STATS_PATH = "/squash-local/stats"
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
# name, name:qualifier, account:function:name[:qualifier], or a full function ARN.
_FUNCTION_REF = re.compile(
    r"^(?:arn:aws[\w-]*:lambda:[\w-]+:\d{12}:function:|\d{12}:function:)?([\w-]+)(?::([\w$-]+))?$"
)
_REPO_ROOT = Path(__file__).resolve().parents[2]  # holds the squash package


@dataclass
class FunctionStats:
    """Counters for one function. ``errors`` counts every function error, timeouts and exits included.

    ``cold_starts`` counts invocations that waited for a worker's init (as AWS and Powertools do): the first
    invocation of a worker started on demand, not of a pre-warmed one.
    """

    invocations: int = 0
    cold_starts: int = 0
    throttles: int = 0
    errors: int = 0
    timeouts: int = 0
    workers_started: int = 0
    init_seconds_total: float = 0.0  # start of the worker process to its first request for work


class FunctionPool:
    """The warm workers of one function, at most ``limit`` of them, started on demand."""

    def __init__(self, spec: FunctionSpec, *, limit: int, service: LambdaService) -> None:
        self.spec = spec
        self.limit = limit
        self.stats = FunctionStats()
        self._service = service
        self._cond = threading.Condition()
        self._idle: list[Sandbox] = []
        self._live: set[Sandbox] = set()
        self._closing = False

    @property
    def throttle_reason(self) -> str:
        reserved = self.spec.reserved_concurrency
        if reserved is not None and reserved <= self.limit:
            return "ReservedFunctionConcurrentInvocationLimitExceeded"
        return "ConcurrentInvocationLimitExceeded"

    def acquire(self, *, wait: bool) -> Sandbox | None:
        """An idle worker, else a new one while under the limit; None when throttled (or closing).

        With ``wait`` (``Event`` invocations, which AWS queues) block until a worker is free instead.
        """
        with self._cond:
            while True:
                if self._closing:
                    return None
                if self._idle:
                    # Most recently used first, as AWS keeps reusing the warmest environment.
                    return self._idle.pop()
                if len(self._live) < self.limit:
                    sandbox = self._new_sandbox(prewarmed=False)
                    break
                if not wait:
                    self.stats.throttles += 1
                    return None
                self._cond.wait()
        self._start(sandbox)
        return sandbox

    def release(self, sandbox: Sandbox) -> None:
        """Return a worker after an invocation; dead ones are dropped (the next need starts a new one)."""
        sandbox.release()
        with self._cond:
            if sandbox.dead or self._closing:
                self._live.discard(sandbox)
            else:
                self._idle.append(sandbox)
            self._cond.notify()

    def record(self, result: Result, *, cold: bool) -> None:
        with self._cond:
            self.stats.invocations += 1
            self.stats.cold_starts += cold
            self.stats.errors += result.function_error is not None
            self.stats.timeouts += result.error_type == "Sandbox.Timedout"

    def prewarm(self, count: int) -> list[Sandbox]:
        """Start workers until ``count`` are live (capped at the limit); returns the new ones."""
        new = []
        while True:
            with self._cond:
                if self._closing or len(self._live) >= min(count, self.limit):
                    return new
                sandbox = self._new_sandbox(prewarmed=True)
            self._start(sandbox)
            new.append(sandbox)
            with self._cond:
                if not sandbox.dead:
                    self._idle.append(sandbox)
                    self._cond.notify()

    def sandboxes(self) -> list[Sandbox]:
        with self._cond:
            return list(self._live)

    def snapshot(self) -> dict[str, float | int | list[int]]:
        """The counters plus the live workers' pids."""
        with self._cond:
            live = list(self._live)
            stats = asdict(self.stats)
        return {**stats, "pids": [s.pid for s in live if s.pid is not None]}

    def close(self) -> list[Sandbox]:
        """Stop handing out workers; returns the live ones for the caller to stop."""
        with self._cond:
            self._closing = True
            self._idle.clear()
            self._cond.notify_all()
            return list(self._live)

    def _new_sandbox(self, *, prewarmed: bool) -> Sandbox:
        sandbox = self._service.make_sandbox(
            self.spec, prewarmed=prewarmed, on_ready=self._on_ready, on_exit=self._on_exit
        )
        self._live.add(sandbox)
        self.stats.workers_started += 1
        return sandbox

    def _start(self, sandbox: Sandbox) -> None:
        try:
            sandbox.start()
        except BaseException:
            self._on_exit(sandbox)
            raise

    def _on_ready(self, sandbox: Sandbox) -> None:
        with self._cond:
            self.stats.init_seconds_total += sandbox.init_seconds

    def _on_exit(self, sandbox: Sandbox) -> None:
        with self._cond:
            self._live.discard(sandbox)
            if sandbox in self._idle:
                self._idle.remove(sandbox)
            self._cond.notify()


class LambdaService:
    """The Invoke API for ``functions`` on ``127.0.0.1``, with up to ``workers`` warm workers per function.

    A function's pool holds ``min(workers, ReservedConcurrentExecutions)`` workers. Workers get ``env`` (the
    stack passes its S3 endpoint and dummy credentials) and ``AWS_ENDPOINT_URL_LAMBDA`` set to this service,
    so fan-out from a handler comes back here. Worker output goes to ``log_dir/<function>.log``, or to this
    process's stdout/stderr when ``log_dir`` is None.
    """

    def __init__(
        self,
        functions: Iterable[FunctionSpec],
        *,
        scratch_dir: Path,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT,
    ) -> None:
        if workers < 1:
            raise InvalidInputError(f"workers must be at least 1, got {workers}")
        self.region = region
        self.account_id = account_id
        self._scratch_dir = Path(scratch_dir)
        self._log_dir = log_dir
        self._env = dict(env or {})
        self._pools: dict[str, FunctionPool] = {}
        for spec in functions:
            if spec.name in self._pools:
                raise InvalidInputError(f"two functions are named {spec.name!r}")
            limit = workers if spec.reserved_concurrency is None else min(workers, spec.reserved_concurrency)
            self._pools[spec.name] = FunctionPool(spec, limit=limit, service=self)
        self._server = QuietHTTPServer(("127.0.0.1", 0), _InvokeHandler)
        self._server.service = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)
        self._sequence = itertools.count(1)  # next() is atomic: pools may call concurrently
        self._running = 0  # invocations accepted and not yet recorded, across every function
        self._running_cond = threading.Condition()

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def functions(self) -> dict[str, FunctionSpec]:
        return {name: pool.spec for name, pool in self._pools.items()}

    def start(self) -> LambdaService:
        self._thread.start()
        return self

    def __enter__(self) -> LambdaService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prewarm(self, names: Iterable[str] | None = None, *, timeout: float = 60.0) -> None:
        """Start every worker of the named functions (default: all) and wait until each has loaded."""
        chosen = list(self._pools) if names is None else list(names)
        unknown = set(chosen) - set(self._pools)
        if unknown:
            raise InvalidInputError(f"unknown functions: {sorted(unknown)}")
        started = [s for name in chosen for s in self._pools[name].prewarm(self._pools[name].limit)]
        deadline = time.monotonic() + timeout
        for sandbox in started:
            if not sandbox.ready.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{sandbox.spec.name}: worker not ready after {timeout} s")

    def stats(self) -> dict[str, dict[str, float | int | list[int]]]:
        """Per function: the `FunctionStats` counters plus the live worker pids."""
        return {name: pool.snapshot() for name, pool in self._pools.items()}

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no invocation is running, so `stats` covers every call made so far.

        A caller that abandons a call (a losing hedge, a call past its deadline) returns before the service
        has finished and counted it; counters read right after such a caller returns can still change.
        """
        with self._running_cond:
            if not self._running_cond.wait_for(lambda: self._running == 0, timeout):
                raise TimeoutError(f"{self._running} invocations still running after {timeout} s")

    def worker_pids(self) -> list[int]:
        """Pids of every live worker."""
        return [s.pid for pool in self._pools.values() for s in pool.sandboxes() if s.pid is not None]

    def close(self, grace: float = 2.0) -> None:
        """Stop every worker (SIGTERM to its process group, SIGKILL after ``grace`` s) and the listener."""
        sandboxes = [s for pool in self._pools.values() for s in pool.close()]
        for sandbox in sandboxes:
            sandbox.terminate()
        deadline = time.monotonic() + grace
        for sandbox in sandboxes:
            if not sandbox.wait(max(0.0, deadline - time.monotonic())):
                sandbox.kill()
        for sandbox in sandboxes:
            sandbox.wait(None)
        if self._thread.ident is not None:
            self._server.shutdown()
        self._server.server_close()

    def make_sandbox(
        self,
        spec: FunctionSpec,
        *,
        prewarmed: bool,
        on_ready: Callable[[Sandbox], None],
        on_exit: Callable[[Sandbox], None],
    ) -> Sandbox:
        """A not-yet-started worker for ``spec`` with the environment AWS would give it."""
        env = {
            **spec.environment,
            **self._env,
            # Fan-out from a handler must reach this service whatever the caller's environment says.
            "AWS_ENDPOINT_URL_LAMBDA": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "_HANDLER": spec.handler,
            "LAMBDA_TASK_ROOT": str(spec.code_uri),
            "PYTHONPATH": f"{spec.code_uri}:{_REPO_ROOT}",
            "TZ": ":UTC",
            # Lambda has no AWS config files; keep a developer's profiles out of the workers.
            "AWS_CONFIG_FILE": str(self._scratch_dir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self._scratch_dir / "no-aws-credentials"),
        }
        log_path = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self._log_dir / f"{spec.name}.log"
        return Sandbox(
            spec,
            env=env,
            tmp_dir=self._scratch_dir / "tmp" / f"{spec.name}-{next(self._sequence)}",
            log_path=log_path,
            prewarmed=prewarmed,
            on_ready=on_ready,
            on_exit=on_exit,
        )

    def pool(self, name: str) -> FunctionPool | None:
        return self._pools.get(name)

    def invoke(self, pool: FunctionPool, invocation: Invocation, *, wait: bool) -> bool:
        """Run ``invocation`` to completion, setting its ``result``; False when throttled."""
        with self._running_cond:
            self._running += 1
        try:
            return self._run(pool, invocation, wait=wait)
        finally:
            with self._running_cond:
                self._running -= 1
                self._running_cond.notify_all()

    def _run(self, pool: FunctionPool, invocation: Invocation, *, wait: bool) -> bool:
        try:
            sandbox = pool.acquire(wait=wait)
        except SandboxGone:  # stopped while starting: the service is closing
            sandbox = None
        if sandbox is None:
            return False
        cold = False
        try:
            cold = sandbox.assign(invocation) and not sandbox.prewarmed
            self._await(sandbox, invocation)
        except SandboxGone:
            message = f"RequestId: {invocation.request_id} Error: Runtime exited with error: exit status 1"
            invocation.finish(error_result("Runtime.ExitError", message))
        finally:
            pool.release(sandbox)
        assert invocation.result is not None
        pool.record(invocation.result, cold=cold)
        return True

    def _await(self, sandbox: Sandbox, invocation: Invocation) -> None:
        timeout = sandbox.spec.timeout
        picked_up = invocation.started.wait(INIT_TIMEOUT + timeout)
        if picked_up and invocation.done.wait(max(0.0, invocation.deadline - time.time())):
            return
        message = f"RequestId: {invocation.request_id} Error: Task timed out after {timeout:.2f} seconds"
        if invocation.finish(error_result("Sandbox.Timedout", message)):
            sandbox.kill()


def _strict_json(payload: bytes) -> object:
    """``payload`` parsed as Lambda's Invoke parses it: strict JSON, which has no NaN or Infinity.

    Raises:
        ValueError: naming what is wrong.
    """
    try:
        return json.loads(payload, parse_constant=_non_standard_token)
    except RecursionError:
        raise ValueError("nested deeper than the parser allows") from None


def _non_standard_token(token: str) -> None:
    raise ValueError(f"Non-standard token '{token}': strict JSON has no NaN or Infinity")


def _client_context(header: str) -> str | None:
    """The decoded client context, or None unless it is base64 of a JSON object (as AWS requires)."""
    try:
        text = base64.b64decode(header, validate=True).decode()
        return text if isinstance(_strict_json(text.encode()), dict) else None
    except ValueError:  # also a bad base64 (binascii.Error) or UTF-8 (UnicodeDecodeError)
        return None


def _error_body(message: str, **extra: str) -> bytes:
    return json.dumps({"Type": "User", "message": message, **extra}).encode()


class _InvokeHandler(QuietHandler):
    """``POST /2015-03-31/functions/{name}/invocations`` and ``GET /squash-local/stats``."""

    server: QuietHTTPServer

    @property
    def service(self) -> LambdaService:
        return self.server.service  # type: ignore[attr-defined, no-any-return]

    def do_GET(self) -> None:
        if urlsplit(self.path).path == STATS_PATH:
            body = json.dumps({"functions": self.service.stats()}).encode()
            self.reply(200, body, {"Content-Type": "application/json"})
        else:
            self._error(404, "UnknownOperationException", "Unknown operation")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        match = _INVOKE_PATH.match(url.path)
        if match is None:
            self.read_body()
            self._error(404, "UnknownOperationException", "Unknown operation")
            return
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        limit = ASYNC_REQUEST_LIMIT if invocation_type == "Event" else REQUEST_LIMIT
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self._discard(length)
            message = f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
            self._error(413, "RequestTooLargeException", message)
            return
        # AWS refuses a body that is not strict JSON and hands an empty one to the function as {}.
        payload = self.rfile.read(length) or b"{}"
        try:
            _strict_json(payload)
        except ValueError as exc:
            message = f"Could not parse request body into json: Could not parse payload into json: {exc}"
            self._error(400, "InvalidRequestContentException", message)
            return
        pool = self._lookup(unquote(match.group(1)), parse_qs(url.query).get("Qualifier", [None])[0])
        if pool is None:
            return
        if invocation_type == "DryRun":
            self.reply(204)
            return
        if invocation_type not in ("Event", "RequestResponse"):
            self._error(400, "InvalidParameterValueException", f"Invalid invocation type: {invocation_type}")
            return
        context = self.headers.get("X-Amz-Client-Context")
        client_context = _client_context(context) if context else None
        if context and client_context is None:
            message = "Client context must be a valid Base64-encoded JSON object."
            self._error(400, "InvalidRequestContentException", message)
            return
        arn = pool.spec.arn(self.service.region, self.service.account_id)
        invocation = Invocation(payload, function_arn=arn, client_context=client_context)
        if invocation_type == "Event":
            threading.Thread(target=self._invoke_async, args=(pool, invocation), daemon=True).start()
            self.reply(202, headers={"x-amzn-RequestId": invocation.request_id})
        else:
            self._invoke_sync(pool, invocation)

    def _lookup(self, reference: str, qualifier: str | None) -> FunctionPool | None:
        match = _FUNCTION_REF.match(reference)
        name, inline_qualifier = match.groups() if match else (reference, None)
        pool = self.service.pool(name)
        qualifier = qualifier or inline_qualifier
        if pool is None or qualifier not in (None, "$LATEST", pool.spec.alias):
            arn = f"arn:aws:lambda:{self.service.region}:{self.service.account_id}:function:{reference}"
            self._error(404, "ResourceNotFoundException", f"Function not found: {arn}")
            return None
        return pool

    def _invoke_sync(self, pool: FunctionPool, invocation: Invocation) -> None:
        try:
            admitted = self.service.invoke(pool, invocation, wait=False)
        except OSError as exc:  # a worker could not be started
            self._error(500, "ServiceException", f"could not start a worker for {pool.spec.name}: {exc}")
            return
        if not admitted:
            reason = pool.throttle_reason
            self._error(429, "TooManyRequestsException", "Rate Exceeded.", Reason=reason)
            return
        result = invocation.result
        assert result is not None
        headers = {
            "Content-Type": "application/json",
            "X-Amz-Executed-Version": "$LATEST",
            "x-amzn-RequestId": invocation.request_id,
        }
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        self.reply(200, result.body, headers)

    def _invoke_async(self, pool: FunctionPool, invocation: Invocation) -> None:
        self.service.invoke(pool, invocation, wait=True)
        result = invocation.result
        if result is not None and result.function_error:
            detail = result.body[:2000].decode(errors="replace")
            log.warning("%s: Event invocation %s failed: %s", pool.spec.name, invocation.request_id, detail)

    def _discard(self, length: int) -> None:
        # Read the oversized body so the client sees our 413 rather than a reset connection.
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _error(self, status: int, error_type: str, message: str, **extra: str) -> None:
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error_type}
        self.reply(status, _error_body(message, **extra), headers)
