"""Fault handling around invocations: deadlines, retries with backoff, and hedged fan-outs.

- `Deadline`: an absolute time (epoch ms, as it travels in requests) every level checks before heavy work
  and never waits past.
- `retrying`: retries transient errors (throttling, timeouts, 5xx, storage slow-downs) with exponential
  backoff and full jitter, bounded in attempts and by the deadline; other errors are raised at once.
- `FanOut`: runs a node's invocations concurrently, re-invokes stragglers (hedging) and stops waiting at
  the deadline, reporting each call's result or error.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from squash.config import RuntimeConfig
from squash.errors import (
    InvocationError,
    InvocationTimeoutError,
    SquashError,
    ThrottledError,
    ThrottledInvocationError,
)

T = TypeVar("T")
# Its own generator: jitter must not consume (or depend on) the global `random` state of the application.
_JITTER = random.Random()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Deadline:
    """An absolute deadline in epoch milliseconds; ``None`` (no deadline) is handled by the callers."""

    epoch_ms: int

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(now_ms() + int(seconds * 1000))

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return (self.epoch_ms - now_ms()) / 1000

    def earlier(self, seconds: float) -> Deadline:
        """The deadline to give a callee, leaving ``seconds`` to send its answer back."""
        return Deadline(self.epoch_ms - int(seconds * 1000))

    def check(self, what: str) -> None:
        """Raise `InvocationTimeoutError` if the deadline has passed."""
        if self.remaining() <= 0:
            raise InvocationTimeoutError(f"the query deadline passed {-self.remaining():.3f} s ago, before {what}")


def retryable(exc: BaseException) -> bool:
    """Transient faults: throttling (functions or storage), timeouts, and service errors marked retryable."""
    if isinstance(exc, ThrottledInvocationError | InvocationTimeoutError | ThrottledError):
        return True
    return isinstance(exc, InvocationError) and exc.retryable


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    base_delay: float
    max_delay: float

    @classmethod
    def of(cls, config: RuntimeConfig) -> RetryPolicy:
        return cls(config.retry_attempts, config.retry_base_delay, config.retry_max_delay)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**attempt)] (attempt 0 is the first retry)."""
        cap = min(self.max_delay, self.base_delay * 2**attempt)
        return (rng or _JITTER).uniform(0, cap)


class Attempts:
    """Thread-safe counts of retries and hedges made by one node, reported in its metrics."""

    def __init__(self) -> None:
        self.retries = 0
        self.hedges = 0
        self._lock = threading.Lock()

    def add(self, *, retries: int = 0, hedges: int = 0) -> None:
        with self._lock:
            self.retries += retries
            self.hedges += hedges


def retrying(
    fn: Callable[[], T], policy: RetryPolicy, deadline: Deadline | None, what: str, attempts: Attempts | None = None
) -> T:
    """``fn()``, retried on `retryable` errors while attempts and the deadline allow.

    Raises:
        InvocationTimeoutError: the deadline left no time for another attempt (chained to the last error).
        SquashError: the last error, if not retryable or out of attempts.
    """
    for attempt in range(policy.attempts):
        try:
            return fn()
        except SquashError as exc:
            if not retryable(exc) or attempt + 1 == policy.attempts:
                raise
            pause = policy.delay(attempt)
            if deadline is not None and deadline.remaining() <= pause:
                raise InvocationTimeoutError(
                    f"{what}: no time left before the deadline to retry after {type(exc).__name__}: {exc}"
                ) from exc
            if attempts is not None:
                attempts.add(retries=1)
            time.sleep(pause)
    raise AssertionError("unreachable: the last attempt returns or raises")


class FanOut(Generic[T]):
    """Concurrent calls of one node, started at construction; `results` waits for them.

    Args:
        calls: one zero-argument callable per invocation (each does its own retries).
        limit: most calls running at once (hedges may add threads beyond it, they are rare).
        deadline: stop waiting when it is this close (`results` reports unfinished calls as timeouts).
        hedge_after: minimum seconds before a call still running gets a duplicate; None disables hedging.
        attempts: where hedges are counted.

    Abandoned calls (losing hedges, calls past the deadline) are not waited for: their answers are dropped.
    """

    def __init__(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        limit: int,
        deadline: Deadline | None,
        hedge_after: float | None = None,
        attempts: Attempts | None = None,
    ) -> None:
        self.calls = list(calls)
        self.deadline = deadline
        self.hedge_after = hedge_after
        self.attempts = attempts
        workers = max(1, min(len(self.calls), limit))
        # Room for hedges beyond the limit, so a duplicate never queues behind the straggler it replaces.
        extra = len(self.calls) if hedge_after is not None else 0
        self._pool = ThreadPoolExecutor(max_workers=workers + extra, thread_name_prefix="squash-fan-out")
        self._started: dict[Future[T], float] = {}
        self._owner: dict[Future[T], int] = {}
        self._lock = threading.Lock()
        for i in range(len(self.calls)):
            self._submit(i)

    def _submit(self, i: int) -> Future[T]:
        # Registered before it can start, so `run` can record its own start time under its future.
        future: Future[T] = Future()
        self._owner[future] = i

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            with self._lock:
                self._started[future] = time.perf_counter()
            try:
                future.set_result(self.calls[i]())
            except BaseException as exc:  # handed to the waiting node, as Executor does
                future.set_exception(exc)

        self._pool.submit(run)
        return future

    def results(self) -> list[T | SquashError]:
        """Each call's value or `SquashError` (an `InvocationTimeoutError` for calls cut by the deadline)."""
        out: dict[int, T | SquashError] = {}
        copies: dict[int, list[Future[T]]] = {i: [f] for f, i in self._owner.items()}
        durations: list[float] = []
        seen: set[Future[T]] = set()
        try:
            while len(out) < len(self.calls):
                live = [f for i, fs in copies.items() if i not in out for f in fs if f not in seen]
                if not any(f.done() for f in live):
                    timeout = self._next_wake()
                    if self._past_deadline():
                        break
                    wait(live, timeout=timeout, return_when=FIRST_COMPLETED)
                for f in [f for f in live if f.done()]:
                    seen.add(f)
                    i = self._owner[f]
                    if i in out:
                        continue
                    exc = f.exception()
                    if exc is None:
                        out[i] = f.result()
                        with self._lock:
                            durations.append(time.perf_counter() - self._started[f])
                    elif all(c.done() for c in copies[i]):
                        # Every copy failed: report the first one's error.
                        first = copies[i][0].exception()
                        if not isinstance(first, SquashError):
                            raise first  # type: ignore[misc]  # a bug, not a fault: surface it
                        out[i] = first
                self._hedge(copies, out, durations)
            for i in range(len(self.calls)):
                out.setdefault(
                    i, InvocationTimeoutError("call unfinished at the query deadline; raise the client's timeout")
                )
            return [out[i] for i in range(len(self.calls))]
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _past_deadline(self) -> bool:
        return self.deadline is not None and self.deadline.remaining() <= 0

    def _next_wake(self) -> float | None:
        """Seconds until the deadline or the next hedging check, whichever comes first."""
        waits = []
        if self.deadline is not None:
            waits.append(max(0.0, self.deadline.remaining()))
        if self.hedge_after is not None:
            waits.append(self.hedge_after / 4)
        return min(waits) if waits else None

    def _hedge(self, copies: dict[int, list[Future[T]]], out: dict[int, object], durations: list[float]) -> None:
        """Duplicate calls running longer than both ``hedge_after`` and the p95 of finished siblings."""
        if self.hedge_after is None or not durations:
            return
        threshold = max(self.hedge_after, float(np.quantile(durations, 0.95)))
        now = time.perf_counter()
        with self._lock:
            stragglers = [
                i
                for i, fs in copies.items()
                if i not in out and len(fs) == 1 and fs[0] in self._started and now - self._started[fs[0]] > threshold
            ]
        for i in stragglers:
            copies[i].append(self._submit(i))
            if self.attempts is not None:
                self.attempts.add(hedges=1)
