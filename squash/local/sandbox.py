"""One Lambda execution environment: a warm ``awslambdaric`` worker process and the Runtime API it polls.

Each sandbox has its own Runtime API listener, as each AWS execution environment does: an invocation handed
out by ``/invocation/next`` then belongs to exactly this process, which lets the service kill the right
process at the deadline and count cold starts per worker. Workers run in their own process group so that a
kill also reaches anything the handler started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

from squash.local.template import FunctionSpec

log = logging.getLogger(__name__)

# AWS's own Function.ResponseSizeTooLarge message names this limit (6 MiB plus 100 bytes of envelope).
RESPONSE_LIMIT = 6_291_556
UNHANDLED = "Unhandled"
_RUNTIME = "/2018-06-01/runtime"
_INVOCATION_PATH = re.compile(rf"^{_RUNTIME}/invocation/([^/]+)/(response|error)$")
# Variables a worker may inherit from the host; everything else comes from the template or the stack.
_HOST_VARIABLES = ("PATH", "LANG", "LC_ALL")


class QuietHTTPServer(ThreadingHTTPServer):
    """Loopback HTTP server with daemon request threads and a backlog that absorbs bursts of fan-out."""

    daemon_threads = True
    # The default backlog of 5 makes connection bursts wait for a 1 s SYN retransmit.
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        """Ignore peers that went away (a killed worker, a client that gave up); report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive handler without Nagle delays or request logging."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, delayed ACK holds the body ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging."""

    def read_body(self) -> bytes:
        """The request body (Content-Length framed)."""
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        """Send a complete response with an explicit length so the connection stays usable."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


@dataclass(frozen=True)
class Result:
    """What the Invoke API returns for one invocation."""

    body: bytes
    function_error: str | None = None
    error_type: str | None = None


def error_result(error_type: str, message: str) -> Result:
    """A function error shaped as AWS reports errors raised outside the handler."""
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return Result(body=body, function_error=UNHANDLED, error_type=error_type)


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=0"


class Invocation:
    """One request travelling from the Invoke API to a worker and back; finished exactly once."""

    def __init__(self, payload: bytes, *, function_arn: str, client_context: str | None = None) -> None:
        self.request_id = str(uuid.uuid4())
        self.payload = payload
        self.function_arn = function_arn
        self.client_context = client_context
        self.trace_id = _trace_id()
        self.deadline = 0.0  # epoch seconds, set when a worker picks the invocation up
        self.started = threading.Event()  # picked up, or finished before that
        self.done = threading.Event()
        self.result: Result | None = None
        self._lock = threading.Lock()

    def finish(self, result: Result) -> bool:
        """Record the outcome; False when another outcome (response, timeout, exit) got there first."""
        with self._lock:
            if self.result is not None:
                return False
            self.result = result
        self.started.set()
        self.done.set()
        return True


class SandboxGone(Exception):
    """The worker died between being chosen and being given work."""


class Sandbox:
    """A worker process running ``python -m awslambdaric <handler>`` against its own Runtime API."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        env: Mapping[str, str],
        tmp_dir: Path,
        log_path: Path | None,
        prewarmed: bool,
        on_ready: Callable[[Sandbox], None],
        on_exit: Callable[[Sandbox], None],
    ) -> None:
        self.spec = spec
        self.invocations = 0
        self.prewarmed = prewarmed
        self.ready = threading.Event()  # the runtime asked for its first invocation: init is over
        self.init_seconds = 0.0
        self.dead = False
        self._env = env
        self._tmp_dir = tmp_dir
        self._log_path = log_path
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Invocation | None] = queue.SimpleQueue()
        self._assigned: Invocation | None = None
        self._server = QuietHTTPServer(("127.0.0.1", 0), _RuntimeHandler)
        self._server.sandbox = self  # type: ignore[attr-defined]
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaped = False
        self._monitor_thread = threading.Thread(target=self._monitor, daemon=True)
        self._started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the Runtime API listener and the worker process; `SandboxGone` if already stopped."""
        with self._lock:
            # Under the lock, so a concurrent terminate() either precedes the spawn or sees the process.
            if self.dead:
                self._server.server_close()
                raise SandboxGone
            threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True).start()
            try:
                self._proc = self._spawn()
            except BaseException:
                self.dead = True
                self._close()
                raise
            self._monitor_thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        env = {name: os.environ[name] for name in _HOST_VARIABLES if name in os.environ}
        env.update(self._env)
        env.update(
            AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{self._server.server_address[1]}",
            AWS_LAMBDA_INITIALIZATION_TYPE="provisioned-concurrency" if self.prewarmed else "on-demand",
            AWS_LAMBDA_LOG_STREAM_NAME=f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}",
            TMPDIR=str(self._tmp_dir),
        )
        log_file: IO[bytes] | None = open(self._log_path, "ab") if self._log_path else None  # noqa: SIM115
        try:
            self._started_at = time.monotonic()
            return subprocess.Popen(
                [sys.executable, "-m", "awslambdaric", self.spec.handler],
                cwd=self.spec.code_uri,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT if log_file else None,
                start_new_session=True,
            )
        finally:
            if log_file:
                log_file.close()

    def assign(self, invocation: Invocation) -> bool:
        """Hand ``invocation`` to the worker; True when it is the worker's first (a cold start)."""
        with self._lock:
            if self.dead:
                raise SandboxGone
            self._assigned = invocation
            self.invocations += 1
            first = self.invocations == 1
        self._inbox.put(invocation)
        return first

    def release(self) -> None:
        """Forget the finished invocation."""
        with self._lock:
            self._assigned = None

    def kill(self) -> None:
        """Kill the worker's whole process group now (deadline passed)."""
        self._stop(signal.SIGKILL)

    def terminate(self) -> None:
        """Ask the worker's process group to stop."""
        self._stop(signal.SIGTERM)

    def _stop(self, signum: int) -> None:
        with self._lock:
            self.dead = True
        self._signal(signum)

    def wait(self, timeout: float | None) -> bool:
        """Wait until the worker has exited and been reaped and the listener is closed; True when done."""
        if self._monitor_thread.ident is None:
            return True
        self._monitor_thread.join(timeout)
        return not self._monitor_thread.is_alive()

    def _close(self) -> None:
        self._inbox.put(None)
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def _signal(self, signum: int) -> None:
        # Once the group is reaped its id may be reused by an unrelated process: never signal it again.
        if self._proc is None or self._reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
            os.killpg(self._proc.pid, signum)

    def _monitor(self) -> None:
        assert self._proc is not None
        code = self._proc.wait()
        # Kill anything the handler left behind in the group.
        self._signal(signal.SIGKILL)
        with self._lock:
            self.dead = True
            self._reaped = True
            invocation = self._assigned
        if invocation is not None:
            # Worded as the AWS runtime words it ("signal: killed", "exit status 1").
            reason = f"signal: {(signal.strsignal(-code) or str(-code)).lower()}" if code < 0 else f"exit status {code}"
            message = f"RequestId: {invocation.request_id} Error: Runtime exited with error: {reason}"
            invocation.finish(error_result("Runtime.ExitError", message))
        self.ready.set()  # wake anyone waiting for an init that will never finish
        self._on_exit(self)
        self._close()

    # Runtime API, called from the listener's request threads.

    def next_invocation(self) -> Invocation | None:
        """Block until there is work; None when the sandbox is closing."""
        if not self.ready.is_set():
            self.init_seconds = time.monotonic() - self._started_at
            self._on_ready(self)
            self.ready.set()
        invocation = self._inbox.get()
        if invocation is not None:
            invocation.deadline = time.time() + self.spec.timeout
            invocation.started.set()
        return invocation

    def current(self, request_id: str) -> Invocation | None:
        """The assigned invocation when ``request_id`` names it."""
        with self._lock:
            invocation = self._assigned
        return invocation if invocation is not None and invocation.request_id == request_id else None

    def init_failed(self, body: bytes, error_type: str | None) -> None:
        """The handler could not be loaded: the worker exits, and the waiting invocation gets the error."""
        with self._lock:
            self.dead = True
            invocation = self._assigned
        log.warning("%s: init failed: %s", self.spec.name, body.decode(errors="replace"))
        if invocation is not None:
            invocation.finish(Result(body=body, function_error=UNHANDLED, error_type=error_type))


class _RuntimeHandler(QuietHandler):
    """The Lambda Runtime API (2018-06-01) for one sandbox."""

    server: QuietHTTPServer

    @property
    def sandbox(self) -> Sandbox:
        return self.server.sandbox  # type: ignore[attr-defined, no-any-return]

    def do_GET(self) -> None:
        if self.path != f"{_RUNTIME}/invocation/next":
            self.reply(404)
            return
        invocation = self.sandbox.next_invocation()
        if invocation is None:
            self.close_connection = True
            self.reply(503)
            return
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int(invocation.deadline * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        self.reply(200, invocation.payload, headers)

    def do_POST(self) -> None:
        body = self.read_body()
        accepted = b'{"status":"OK"}'
        error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
        if self.path == f"{_RUNTIME}/init/error":
            self.sandbox.init_failed(body, error_type)
            self.reply(202, accepted)
            return
        match = _INVOCATION_PATH.match(self.path)
        invocation = self.sandbox.current(match.group(1)) if match else None
        if match is None or invocation is None:
            self.reply(400, b'{"errorMessage":"Invalid request ID","errorType":"InvalidRequestID"}')
            return
        if match.group(2) == "error":
            result = Result(body=body, function_error=UNHANDLED, error_type=error_type)
        elif len(body) > RESPONSE_LIMIT:
            message = (
                f"Response payload size ({len(body)} bytes) exceeded maximum allowed payload size "
                f"({RESPONSE_LIMIT} bytes)."
            )
            result = error_result("Function.ResponseSizeTooLarge", message)
        else:
            result = Result(body=body)
        invocation.finish(result)
        self.reply(202, accepted)
