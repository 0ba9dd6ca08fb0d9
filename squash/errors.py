"""Squash's error hierarchy. Catch at whatever level suits you::

    SquashError
    ├── InvalidInputError          bad vectors, shapes, dtypes, parameters (also a ValueError)
    │   ├── FilterError            malformed filter or one that does not fit the schema
    │   └── LimitExceededError     k, batch size, dimensions or payload over a documented limit
    ├── IndexNotFoundError         no index (manifest) at the given URI
    ├── IndexChangedError          the index was deleted and built again while a query used it
    ├── IndexExistsError           an index already exists where a build would write
    ├── AccessDeniedError          an index location outside the roots this function may open
    ├── StorageError               object-store failures
    │   ├── ObjectNotFoundError    a key that does not exist
    │   ├── PreconditionFailedError a conditional put lost the race
    │   ├── ThrottledError         the store asked us to slow down (retryable)
    │   └── CorruptObjectError     checksum, magic or layout mismatch in a stored object
    ├── InvocationError            a function invocation failed
    │   ├── ThrottledInvocationError  the function service refused for concurrency (retryable)
    │   ├── WorkerCrashedError        the function's worker died mid-invocation (retryable: calls are reads)
    │   └── InvocationTimeoutError    a deadline passed
    └── IncompleteResultError      some partitions could not be searched

Messages name the problem and, where there is one, the fix. An error that crossed the wire from a remote
function's handler keeps its class and names that function in ``raised_by``.
"""

from __future__ import annotations


class SquashError(Exception):
    """Base class of every error Squash raises on purpose.

    ``raised_by`` is the function whose handler raised the error (None: raised in this process); that
    function has already retried what it could, so its caller does not retry it again.
    """

    raised_by: str | None = None


class InvalidInputError(SquashError, ValueError):
    """Input that Squash cannot accept: wrong shape, dtype, NaN, out-of-range parameter."""


class FilterError(InvalidInputError):
    """A filter that is malformed or does not match the index's attribute schema."""


class LimitExceededError(InvalidInputError):
    """A request over one of Squash's documented limits."""


class IndexNotFoundError(SquashError):
    """No index manifest exists at the given location."""


class IndexChangedError(SquashError):
    """The index version a query pinned now belongs to another build (deleted and built again meanwhile)."""


class IndexExistsError(SquashError):
    """An index already exists at the destination and overwrite was not requested."""


class AccessDeniedError(SquashError):
    """An index location this function is not configured to open (``RuntimeConfig.index_roots``)."""


class StorageError(SquashError):
    """An object-store operation failed."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ObjectNotFoundError(StorageError):
    """The object does not exist."""


class PreconditionFailedError(StorageError):
    """A conditional write found the object in an unexpected state."""


class ThrottledError(StorageError):
    """The store throttled the request; retrying later may succeed."""


class CorruptObjectError(StorageError):
    """A stored object failed a checksum or layout check."""


class InvocationError(SquashError):
    """A function invocation failed; ``retryable`` marks a transient service fault (a 5xx) worth retrying."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ThrottledInvocationError(InvocationError):
    """The function service refused the invocation for lack of concurrency."""


class WorkerCrashedError(InvocationError):
    """The function's worker died before answering (killed, exited, ``Runtime.ExitError`` on Lambda).

    Retryable: every Squash invocation is a read, so running it again is safe.
    """


class InvocationTimeoutError(InvocationError):
    """An invocation or a query ran past its deadline."""


class IncompleteResultError(SquashError):
    """Some partitions of a query could not be searched, so its result would be incomplete.

    ``partitions`` lists them when known (sorted).
    """

    def __init__(self, message: str, *, partitions: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.partitions = partitions
