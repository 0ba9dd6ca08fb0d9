"""The warm workers of one local function: started on demand up to a limit, reused most recent first,
throttled when all are busy (as AWS does), and counted (`FunctionStats`)."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from squash.local.sandbox import Result, Sandbox
from squash.local.template import FunctionSpec

if TYPE_CHECKING:
    from squash.local.lambda_service import LambdaService


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
