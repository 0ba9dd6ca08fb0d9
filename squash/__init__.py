"""Squash: serverless, distributed, filtered vector search over object storage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from squash.errors import (
    AccessDeniedError,
    CorruptObjectError,
    FilterError,
    IncompleteResultError,
    IndexChangedError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidInputError,
    InvocationError,
    LimitExceededError,
    ObjectNotFoundError,
    SquashError,
    StorageError,
)

if TYPE_CHECKING:
    from squash.client import Client
    from squash.index import Index
    from squash.pipeline import build_index
    from squash.search.params import SearchParams
    from squash.search.result import Hits, SearchResult

__version__ = "0.1.0"

# Loaded on first use: `import squash` stays cheap (it is part of every cold start).
_LAZY = {
    "Client": "squash.client",
    "Index": "squash.index",
    "SearchParams": "squash.search.params",
    "SearchResult": "squash.search.result",
    "Hits": "squash.search.result",
    "build_index": "squash.pipeline",
}

__all__ = [
    "AccessDeniedError",
    "Client",
    "CorruptObjectError",
    "FilterError",
    "Hits",
    "IncompleteResultError",
    "Index",
    "IndexChangedError",
    "IndexExistsError",
    "IndexNotFoundError",
    "InvalidInputError",
    "InvocationError",
    "LimitExceededError",
    "ObjectNotFoundError",
    "SearchParams",
    "SearchResult",
    "SquashError",
    "StorageError",
    "__version__",
    "build_index",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'squash' has no attribute {name!r}")
