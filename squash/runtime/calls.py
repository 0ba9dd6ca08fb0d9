"""Calling a function with a request: invoke its payload through an `Invoker`, decode and check the response."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from squash.compute.base import Invoker
from squash.compute.retry import Deadline
from squash.config import RuntimeConfig
from squash.errors import InvocationError
from squash.runtime.protocol import RESPONSES, Request, split_request, with_budget

if TYPE_CHECKING:
    from squash.runtime.context import Invocation


def call(invoker: Invoker, function: str, request: Request, payload: bytes, deadline: Deadline | None) -> Any:
    """Invoke ``function`` with ``request`` (encoded as ``payload``, with no budget); decode and check the
    response.

    The callee gets what is left until ``deadline`` as its ``budget_ms``, measured now, at each attempt: a
    remaining time means the same on every machine, whatever its clock says.
    """
    if deadline is not None:
        payload = with_budget(payload, deadline.budget_ms(function))
    response = RESPONSES[type(request)].from_event(invoker.invoke(function, payload))
    if response.ids.shape[0] != request.n_queries or response.ids.shape[1] != request.k:
        raise InvocationError(
            f"{function} answered {response.ids.shape} results for {request.n_queries} queries, k={request.k}"
        )
    return response


def _functions(config: RuntimeConfig) -> int:
    """Function names whose metrics one response may carry."""
    return 2 + len(config.processor_functions)


def invoke(inv: Invocation, function: str, request: Any, deadline: Deadline | None) -> Any:
    """One child request (split to fit the payload limit) with time until ``deadline``, each part retried
    on transient errors."""
    config = inv.ctx.config
    parts = [
        inv.retrying(partial(call, inv.ctx.invoker, function, part, payload, deadline), function)
        for part, payload in split_request(request, config.payload_limit, _functions(config))
    ]
    return RESPONSES[type(request)].concat(parts)
