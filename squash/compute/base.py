"""The `Invoker` interface: call a function by name with a JSON event and wait, or fail with a typed error.

Implementations: `squash.compute.inprocess.InProcessInvoker` (threads in this process) and
`squash.compute.aws_lambda.LambdaInvoker` (AWS Lambda, or anything speaking its Invoke API). Both report
a remote failure the same way, through `remote_error`, so callers handle one set of errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol, TypeVar

from squash import errors
from squash.compute.retry import Deadline
from squash.errors import InvocationError, SquashError
from squash.protocol import RESPONSES, Request

T = TypeVar("T")


class Invoker(Protocol):
    """Runs one function invocation (Lambda's RequestResponse) and returns its JSON response."""

    def invoke(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        """Invoke ``function`` with ``event`` and wait for its response.

        Raises:
            InvocationError: the call failed, or the function raised an error that is not a `SquashError`
                (`ThrottledInvocationError` and `InvocationTimeoutError` for throttles and deadlines).
            SquashError: the function raised this Squash error (same class; message prefixed with the name).
            LimitExceededError: the event or response exceeds the synchronous payload limit.
        """
        ...


def remote_error(function: str, error_type: str, message: str) -> SquashError:
    """The error to raise for a function that failed with ``error_type`` and ``message``.

    Squash's own errors keep their class across the wire, so an invalid filter found by a remote
    function is still an `InvalidInputError` at the client; anything else becomes an `InvocationError`.
    Either way ``raised_by`` names ``function``: its handler failed after its own retries.
    """
    cls = getattr(errors, error_type, None)
    if isinstance(cls, type) and issubclass(cls, SquashError):
        error = cls(f"{function}: {message}")
    else:
        error = InvocationError(f"{function} failed with {error_type}: {message}")
    error.raised_by = function
    return error


def fan_out(calls: int, limit: int) -> ThreadPoolExecutor:
    """A thread pool for one node's concurrent invocations, one thread per call up to ``limit``.

    Each invocation gets its own pool rather than sharing one: a node blocks on its children, so in
    process a shared bounded pool could fill with waiting parents and deadlock.
    """
    return ThreadPoolExecutor(max_workers=max(1, min(calls, limit)), thread_name_prefix="squash-fan-out")


def join(futures: Sequence[Future[T]]) -> list[T]:
    """Results in order once every call has finished; the first failure in order is raised.

    Waiting for all before raising means no call outlives the node that made it.
    """
    wait(futures)
    return [f.result() for f in futures]


def call(invoker: Invoker, function: str, request: Request, event: dict[str, Any], deadline: Deadline | None) -> Any:
    """Invoke ``function`` with ``request`` (encoded as ``event``); decode and check the response.

    The callee gets what is left until ``deadline`` as its ``budget_ms``, measured now, at each attempt: a
    remaining time means the same on every machine, whatever its clock says.
    """
    if deadline is not None:
        event = {**event, "budget_ms": deadline.budget_ms(function)}
    response = RESPONSES[type(request)].from_event(invoker.invoke(function, event))
    if response.ids.shape[0] != request.n_queries or response.ids.shape[1] != request.k:
        raise InvocationError(
            f"{function} answered {response.ids.shape} results for {request.n_queries} queries, k={request.k}"
        )
    return response
