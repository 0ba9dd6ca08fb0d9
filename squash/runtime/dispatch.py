"""One dispatch for every mode: validate an event for its role, run the role's handler, encode the answer.

The Lambda apps (`squash.runtime.lambda_app`) and the in-process invoker both call `handle`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from squash.runtime.allocator import allocate
from squash.runtime.context import ARRIVED, HandlerContext
from squash.runtime.coordinator import coordinate
from squash.runtime.processor import process
from squash.runtime.protocol import (
    AllocatorRequest,
    CoordinatorRequest,
    ProcessorRequest,
)

_ROUTES: dict[str, tuple[Any, Callable[[Any, HandlerContext], Any]]] = {
    "coordinator": (CoordinatorRequest, coordinate),
    "allocator": (AllocatorRequest, allocate),
    "processor": (ProcessorRequest, process),
}


def handle(role: str, event: dict[str, Any], ctx: HandlerContext, *, remaining_ms: int | None = None) -> dict[str, Any]:
    """Validate ``event`` for ``role``, run its handler and encode the response.

    ``remaining_ms`` is the time the platform gives the invocation (Lambda's
    ``context.get_remaining_time_in_millis()``); the handler stops by then even if its budget is longer.
    """
    request_type, body = _ROUTES[role]
    ARRIVED.clocks = (time.perf_counter(), time.thread_time(), time.monotonic(), remaining_ms)
    return body(request_type.from_event(event), ctx).to_event()
