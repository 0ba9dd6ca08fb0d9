"""An invoker wrapper that injects failures and delays, for reliability tests. Production code never uses it.

It mirrors `squash.storage.faults.FaultInjectingStore`: faults match calls by function name and count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from squash.compute.base import Invoker
from squash.compute.inprocess import InProcessInvoker
from squash.errors import SquashError


@dataclass(frozen=True)
class InvokeFault:
    """One injected invocation fault.

    A call matches when ``functions`` (if given) accepts the function name. With ``nth`` the fault fires
    only on the nth matching call (1-based), otherwise on every one. Firing sleeps ``delay`` seconds, then
    raises ``error`` if set (as the invoker would for a remote failure) or lets the call through.
    """

    functions: Callable[[str], bool] | None = None
    nth: int | None = None
    error: type[SquashError] | None = None
    delay: float = 0.0


class FaultInjectingInvoker:
    """Wraps any `Invoker`, passing every call through unless one of its faults fires.

    Wrapping an `InProcessInvoker` also routes the invocations its functions make (allocators, processors)
    through this wrapper, so faults reach every level of the tree. ``injected`` counts the faults fired.
    """

    def __init__(self, inner: Invoker, faults: Sequence[InvokeFault]) -> None:
        self.inner = inner
        self.faults = tuple(faults)
        self.injected = 0
        self._counts = [0] * len(self.faults)
        self._lock = threading.Lock()
        if isinstance(inner, InProcessInvoker):
            inner.children = self

    @property
    def config(self) -> Any:
        """The wrapped invoker's runtime configuration, if it has one (the Client reads it)."""
        return getattr(self.inner, "config", None)

    def invoke(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        fired = []
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.functions is None or fault.functions(function):
                    self._counts[i] += 1
                    if fault.nth is None or fault.nth == self._counts[i]:
                        fired.append(fault)
            self.injected += len(fired)
        for fault in fired:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.error is not None:
                raise fault.error(f"{function}: injected {fault.error.__name__}")
        return self.inner.invoke(function, event)
