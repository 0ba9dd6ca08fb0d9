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

import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from squash.errors import InvalidInputError
from squash.local.function_pool import FunctionPool
from squash.local.invoke_api import InvokeHandler
from squash.local.sandbox import Invocation, QuietHTTPServer, Sandbox, SandboxGone, error_result
from squash.local.template import DEFAULT_ACCOUNT, DEFAULT_REGION, FunctionSpec

# How long a cold worker may take to import its handler before the invocation times out. AWS allows 10 s of
# init and then retries init within the function timeout; this is that bound.
INIT_TIMEOUT = 10.0
_REPO_ROOT = Path(__file__).resolve().parents[2]  # holds the squash package


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
        self._server = QuietHTTPServer(("127.0.0.1", 0), InvokeHandler)
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
