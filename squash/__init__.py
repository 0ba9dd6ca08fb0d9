"""Squash: serverless, distributed, filtered vector search over object storage."""

from squash.errors import (
    CorruptObjectError,
    FilterError,
    IncompleteResultError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidInputError,
    InvocationError,
    LimitExceededError,
    ObjectNotFoundError,
    SquashError,
    StorageError,
)

__version__ = "0.1.0"

__all__ = [
    "CorruptObjectError",
    "FilterError",
    "IncompleteResultError",
    "IndexExistsError",
    "IndexNotFoundError",
    "InvalidInputError",
    "InvocationError",
    "LimitExceededError",
    "ObjectNotFoundError",
    "SquashError",
    "StorageError",
    "__version__",
]
