"""Object storage behind one small interface: in memory, on local disk, or on S3.

`open_store` picks the backend from a URI; the rest of Squash sees only `ObjectStore`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from squash.errors import InvalidInputError
from squash.storage.base import ObjectInfo, ObjectStore, StoreStats
from squash.storage.local import LocalStore
from squash.storage.memory import MemoryStore
from squash.storage.s3 import S3Store

__all__ = [
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "StoreStats",
    "as_store",
    "file_path",
    "open_store",
]

_SUPPORTED = "memory://name, file:///absolute/path, s3://bucket/prefix or a plain file-system path"


def open_store(uri: str, *, s3_client: Any = None) -> ObjectStore:
    """Open the object store that ``uri`` names.

    Args:
        uri: ``memory://name`` (shared by name within the process), ``file:///abs/path`` or a plain path,
            or ``s3://bucket/prefix``.
        s3_client: a boto3 S3 client to use instead of the default one; only valid for ``s3://`` URIs.

    Raises:
        InvalidInputError: the URI is malformed or its scheme is not supported.
    """
    if not isinstance(uri, str) or not uri:
        raise InvalidInputError(f"store URI must be a non-empty string, got {uri!r}; supported: {_SUPPORTED}")
    _check_printable(uri, uri)
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower() if sep else "file"
    if s3_client is not None and scheme != "s3":
        raise InvalidInputError(f"s3_client was given but {uri!r} is not an s3:// URI")
    if scheme == "memory":
        return MemoryStore(rest)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        return S3Store(bucket, prefix, client=s3_client)
    if scheme == "file":
        return LocalStore(file_path(uri) if sep else uri)
    raise InvalidInputError(f"unsupported store URI scheme {scheme!r} in {uri!r}; supported: {_SUPPORTED}")


def as_store(store_or_uri: ObjectStore | str) -> ObjectStore:
    """``store_or_uri`` itself if it is an open store, else the store its URI names (see `open_store`)."""
    return store_or_uri if isinstance(store_or_uri, ObjectStore) else open_store(store_or_uri)


def file_path(uri: str) -> str:
    """The local path a ``file://`` URI names."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidInputError(f"file URI {uri!r} must name an absolute local path, as in file:///data/index")
    if parts.query or parts.fragment:
        raise InvalidInputError(f"file URI {uri!r} must not have a query or fragment")
    return _check_printable(unquote(parts.path), uri)


def _check_printable(text: str, uri: str) -> str:
    """No control characters (NUL truncates paths in the OS) and no lone surrogates (not encodable)."""
    if not text.isprintable():
        raise InvalidInputError(
            f"store URI {uri!r} holds a control character or invalid Unicode; name the index with printable text"
        )
    return text
