"""The `Invoker` interface: call a function by name with a JSON payload and wait, or fail with a typed error.

Implementations: `squash.runtime.inprocess.InProcessInvoker` (threads in this process) and
`squash.compute.aws_lambda.LambdaInvoker` (AWS Lambda, or anything speaking its Invoke API). Both report
a remote failure the same way, through `remote_error`, so callers handle one set of errors.
"""

from __future__ import annotations

from typing import Any, Protocol

from squash import errors
from squash.errors import InvocationError, SquashError


class Invoker(Protocol):
    """Runs one function invocation (Lambda's RequestResponse) and returns its JSON response."""

    def invoke(self, function: str, payload: bytes) -> dict[str, Any]:
        """Invoke ``function`` with ``payload`` (an event encoded as strict JSON) and wait for its response.

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
