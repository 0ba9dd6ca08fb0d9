"""Functions run as threads of this process: the embedded mode, and the reference for every other invoker.

Each invocation goes through exactly what runs on Lambda: the request payload is parsed as strict JSON
(Lambda's Invoke refuses anything else), dispatched to the same `squash.runtime` body, and its response
serialised back; failures come back through the same `remote_error` mapping, and payloads over the
configured limit fail as on Lambda.

Every function name has its own `HandlerContext`, the equivalent of one warm container's module state, so
processor slots keep their own DRE caches as they would on Lambda. Unlike Lambda, concurrent invocations
of one function share that one container (Lambda would start more), so "cold" counts each function's
first invocation only, and concurrent misses on one partition load it once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from squash.compute.base import Invoker, remote_error
from squash.config import RuntimeConfig
from squash.errors import InvalidInputError, InvocationError, LimitExceededError
from squash.runtime.context import HandlerContext
from squash.runtime.dispatch import handle
from squash.storage import ObjectStore, open_store


class InProcessInvoker:
    """Runs the coordinator, allocator and processor functions named in ``config`` in this process.

    Args:
        config: function names, memory (hence cache budget) and payload limit; defaults to `RuntimeConfig()`.
        open_store: how functions open the index's store from its URI (tests inject faulty stores here).
    """

    def __init__(
        self, config: RuntimeConfig | None = None, *, open_store: Callable[[str], ObjectStore] = open_store
    ) -> None:
        self.config = config or RuntimeConfig()
        self.open_store = open_store
        self._roles = {
            self.config.coordinator_function: "coordinator",
            self.config.allocator_function: "allocator",
        }
        self._roles.update({name: "processor" for name in self.config.processor_functions})
        self._contexts: dict[str, HandlerContext] = {}
        # The invoker the functions call their children through (a fault-injecting wrapper can take over).
        self.children: Invoker = self
        self._lock = threading.Lock()

    def context(self, function: str) -> HandlerContext:
        """The warm state of ``function``, created on its first invocation."""
        with self._lock:
            if function not in self._contexts:
                role = self._roles.get(function)
                if role is None:
                    raise InvocationError(f"function {function!r} does not exist; configured: {sorted(self._roles)}")
                self._contexts[function] = HandlerContext(
                    role, function, self.config, self.children, open_store=self.open_store
                )
            return self._contexts[function]

    def invoke(self, function: str, payload: bytes) -> dict[str, Any]:
        ctx = self.context(function)
        # Requests must be strict JSON, as Lambda's Invoke requires; responses are serialised as its runtime does.
        request = self._checked(function, "request", payload)
        try:
            event = json.loads(request, parse_constant=_not_strict)
        except ValueError as exc:
            raise InvalidInputError(f"the request to {function} is not strict JSON ({exc})") from None
        try:
            response = handle(ctx.role, event, ctx)
        except Exception as exc:
            raise remote_error(function, type(exc).__name__, str(exc)) from exc
        return json.loads(self._checked(function, "response", json.dumps(response).encode()))

    def _checked(self, function: str, what: str, payload: bytes) -> bytes:
        if len(payload) > self.config.payload_limit:
            raise LimitExceededError(
                f"the {what} of {function} is {len(payload):,} bytes, over the synchronous invocation payload "
                f"limit of {self.config.payload_limit:,} bytes"
            )
        return payload


def _not_strict(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")
