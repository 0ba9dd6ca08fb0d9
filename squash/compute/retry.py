"""Fault handling around invocations: deadlines, retries with backoff under a budget, and hedged fan-outs.

- `Deadline`: an instant on this process's monotonic clock, which every level checks before heavy work and
  never waits past. Deadlines never cross the wire: a request carries a remaining-time budget
  (``budget_ms``), and each node sets its own deadline from the moment the request arrived, so no node
  depends on another machine's clock.
- `retrying`: retries transient errors (throttling, timeouts, 5xx, crashed workers, storage slow-downs)
  with exponential backoff and full jitter, bounded in attempts, by the deadline and by the node's
  `RetryBudget`; other errors are raised at once. An error the callee's own handler raised is never
  retried by its caller: the callee already retried what it could (`retryable`), so a failure is retried
  once, at the node where it happened, and never re-runs a whole subtree.
- `FanOut`: runs a node's invocations concurrently, re-invokes stragglers (hedging, paid from the same
  budget) and stops waiting at the deadline, reporting each call's result or error.
"""

from __future__ import annotations

import math
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
    WorkerCrashedError,
)

T = TypeVar("T")
# Its own generator: jitter must not consume (or depend on) the global `random` state of the application.
_JITTER = random.Random()


@dataclass(frozen=True)
class Deadline:
    """An instant in `time.monotonic` seconds of this process; ``None`` (no deadline) is handled by callers."""

    at: float

    @classmethod
    def after(cls, seconds: float, *, start: float | None = None) -> Deadline:
        """``seconds`` after ``start`` (a `time.monotonic` reading; default now)."""
        return cls((time.monotonic() if start is None else start) + seconds)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    def earlier(self, seconds: float) -> Deadline:
        """The deadline to give a callee, leaving ``seconds`` to send its answer back."""
        return Deadline(self.at - seconds)

    def check(self, what: str) -> None:
        """Raise `InvocationTimeoutError` if the deadline has passed."""
        if self.remaining() <= 0:
            raise InvocationTimeoutError(f"the query deadline passed {-self.remaining():.3f} s ago, before {what}")

    def budget_ms(self, what: str) -> int:
        """Whole milliseconds left, to send as a callee's ``budget_ms``; raises if less than one is left."""
        ms = math.floor(self.remaining() * 1000)
        if ms < 1:
            raise InvocationTimeoutError(
                f"no time left to start {what}: the query's timeout is used up (raise the client's timeout)"
            )
        return ms


def retryable(exc: BaseException) -> bool:
    """Transient faults of this node's own calls: throttling (functions or storage), timeouts, crashed
    workers, and service errors marked retryable.

    An error raised by a callee's handler (``raised_by`` set) is final: that callee has already retried its
    own calls, and retrying it here would re-run its whole subtree.
    """
    if isinstance(exc, SquashError) and exc.raised_by is not None:
        return False
    if isinstance(exc, ThrottledInvocationError | InvocationTimeoutError | ThrottledError | WorkerCrashedError):
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


class RetryBudget:
    """The extra calls (retries and hedges) one node may make while serving one request.

    A token bucket, as Finagle's retry budgets and the AWS SDKs' retry quota: it starts with ``floor``
    tokens, every first attempt of a call (an invocation or a storage read) adds ``ratio`` of one, and every
    retry or hedge takes a whole one.
    So a node making n calls makes at most ``floor + ratio * n`` extra ones however many of them fail: under
    throttling the tree sheds load instead of multiplying it. Thread-safe; the counts are reported in the
    node's metrics (``retries``, ``hedges``, ``retries_denied``).
    """

    def __init__(self, ratio: float, floor: float) -> None:
        self.ratio = ratio
        self.retries = 0
        self.hedges = 0
        self.denied = 0
        self._tokens = floor
        self._lock = threading.Lock()

    @classmethod
    def of(cls, config: RuntimeConfig) -> RetryBudget:
        return cls(config.retry_budget_ratio, config.retry_budget_floor)

    def called(self) -> None:
        """Count a call's first attempt."""
        with self._lock:
            self._tokens += self.ratio

    def spend(self, *, hedge: bool = False) -> bool:
        """Take a token for a retry (or a hedge); False, counted as denied, when none is left."""
        with self._lock:
            if self._tokens < 1:
                self.denied += 1
                return False
            self._tokens -= 1
            if hedge:
                self.hedges += 1
            else:
                self.retries += 1
            return True


def retrying(fn: Callable[[], T], policy: RetryPolicy, deadline: Deadline | None, what: str, budget: RetryBudget) -> T:
    """``fn()``, retried on `retryable` errors while attempts, the deadline and ``budget`` allow.

    Raises:
        InvocationTimeoutError: the deadline left no time for another attempt (chained to the last error).
        SquashError: the last error, if not retryable, out of attempts or out of budget.
    """
    budget.called()
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
            if not budget.spend():
                exc.args = (f"{exc} (not retried: this request's retry budget is spent)",)
                raise
            time.sleep(pause)
    raise AssertionError("unreachable: the last attempt returns or raises")


class FanOut(Generic[T]):
    """Concurrent calls of one node, started at construction; `results` waits for them.

    Args:
        calls: one zero-argument callable per invocation (each does its own retries).
        limit: most calls running at once (hedges may add threads beyond it, they are rare).
        deadline: stop waiting when it is this close (`results` reports unfinished calls as timeouts).
        hedge_after: minimum seconds before a call still running gets a duplicate; None disables hedging.
        budget: what hedges are paid from (a hedge is an extra call, like a retry); None: no hedges.

    Abandoned calls (losing hedges, calls past the deadline) are not waited for: their answers are dropped.
    """

    def __init__(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        limit: int,
        deadline: Deadline | None,
        hedge_after: float | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        self.calls = list(calls)
        self.deadline = deadline
        self.hedge_after = None if budget is None else hedge_after
        self.budget = budget
        workers = max(1, min(len(self.calls), limit))
        # Room for hedges beyond the limit, so a duplicate never queues behind the straggler it replaces.
        extra = len(self.calls) if hedge_after is not None else 0
        self._pool = ThreadPoolExecutor(max_workers=workers + extra, thread_name_prefix="squash-fan-out")
        self._started: dict[Future[T], float] = {}
        self._owner: dict[Future[T], int] = {}
        self._refused: set[int] = set()
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
                if i not in out
                and i not in self._refused
                and len(fs) == 1
                and fs[0] in self._started
                and now - self._started[fs[0]] > threshold
            ]
        for i in stragglers:
            if self.budget is not None and self.budget.spend(hedge=True):
                copies[i].append(self._submit(i))
            else:
                self._refused.add(i)  # asked once: a straggler the budget cannot pay for is not asked again
