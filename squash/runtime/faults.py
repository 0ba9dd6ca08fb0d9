"""An invoker wrapper that injects failures and delays, for reliability tests. Production code never uses it.

It mirrors `squash.storage.faults.FaultInjectingStore`: faults match calls by function name and count.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from squash.compute.base import Invoker
from squash.errors import SquashError
from squash.runtime.inprocess import InProcessInvoker


@dataclass(frozen=True)
class InvokeFault:
    """One injected invocation fault.

    A call matches when ``functions`` (if given) accepts the function name. With ``nth`` the fault fires
    only on the nth matching call (1-based), otherwise on every one, or on each with probability ``rate``.
    Firing sleeps ``delay`` seconds, then raises ``error`` if set (as the invoker would for a failed
    invocation) or lets the call through. With ``after`` the call runs first and its answer is lost, as
    when a worker is killed before it answers (``error`` is then typically `WorkerCrashedError`).
    """

    functions: Callable[[str], bool] | None = None
    nth: int | None = None
    error: type[SquashError] | None = None
    delay: float = 0.0
    rate: float = 1.0
    after: bool = False


class FaultInjectingInvoker:
    """Wraps any `Invoker`, passing every call through unless one of its faults fires.

    Wrapping an `InProcessInvoker` also routes the invocations its functions make (allocators, processors)
    through this wrapper, so faults reach every level of the tree. ``injected`` counts the faults fired,
    ``calls`` the calls per function name; ``seed`` fixes the draws of faults with a ``rate``.
    """

    def __init__(self, inner: Invoker, faults: Sequence[InvokeFault], *, seed: int = 0) -> None:
        self.inner = inner
        self.faults = tuple(faults)
        self.injected = 0
        self.calls: Counter[str] = Counter()
        self._counts = [0] * len(self.faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        if isinstance(inner, InProcessInvoker):
            inner.children = self

    @property
    def config(self) -> Any:
        """The wrapped invoker's runtime configuration, if it has one (the Client reads it)."""
        return getattr(self.inner, "config", None)

    def invoke(self, function: str, payload: bytes) -> dict[str, Any]:
        fired = []
        with self._lock:
            self.calls[function] += 1
            for i, fault in enumerate(self.faults):
                if fault.functions is None or fault.functions(function):
                    self._counts[i] += 1
                    if (fault.nth is None or fault.nth == self._counts[i]) and self._rng.random() < fault.rate:
                        fired.append(fault)
            self.injected += len(fired)
        if any(fault.after for fault in fired):
            self.inner.invoke(function, payload)
        for fault in fired:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.error is not None:
                raise fault.error(f"{function}: injected {fault.error.__name__}")
        return self.inner.invoke(function, payload)
