"""An in-process object store, shared by name across the process (``memory://name``)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

from squash.errors import InvalidInputError, ObjectNotFoundError, PreconditionFailedError
from squash.storage.base import (
    S3_COALESCE_GAP,
    ObjectInfo,
    StoreStats,
    check_key,
    check_prefix,
    check_range,
    get_coalesced,
)


class _Namespace:
    """The objects behind one ``memory://`` name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, tuple[bytes, str]] = {}


_NAMESPACES: dict[str, _Namespace] = {}
_NAMESPACES_LOCK = threading.Lock()


def _namespace(name: str, *, create: bool) -> _Namespace:
    """The objects of ``name``; only a write creates them, so reading unknown names holds no memory."""
    with _NAMESPACES_LOCK:
        if create:
            return _NAMESPACES.setdefault(name, _Namespace())
        return _NAMESPACES.get(name) or _Namespace()


class MemoryStore:
    """Objects held in process memory; every store opened with the same name sees the same objects.

    It coalesces `get_many` like the S3 store by default, so request counts in tests predict those on S3.
    """

    def __init__(self, name: str, *, coalesce_gap: int = S3_COALESCE_GAP) -> None:
        if not name:
            raise InvalidInputError("a memory store needs a name, as in 'memory://demo'")
        self.uri = f"memory://{name}"
        self.coalesce_gap = coalesce_gap
        self.stats = StoreStats()
        self._name = name

    def __repr__(self) -> str:
        return f"MemoryStore({self.uri!r})"

    @property
    def _ns(self) -> _Namespace:
        """The objects of this name to read: empty, and not kept, until something is written."""
        return _namespace(self._name, create=False)

    def _lookup(self, key: str) -> tuple[bytes, str]:
        ns = self._ns
        with ns.lock:
            found = ns.objects.get(check_key(key))
        if found is None:
            raise ObjectNotFoundError(f"no object {key!r} in {self.uri}", key=key)
        return found

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Return the object's bytes, or only those in ``byte_range``."""
        check_key(key)
        window = None if byte_range is None else check_range(byte_range)
        if window is not None and window[0] == window[1]:
            return b""
        data, _ = self._lookup(key)
        if window is not None:
            data = data[window[0] : window[1]]
        self.stats.record_get(len(data))
        return data

    def get_many(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Return the bytes of each range, merging ranges at most ``coalesce_gap`` bytes apart."""
        return get_coalesced(self.get, check_key(key), ranges, self.coalesce_gap)

    def head(self, key: str) -> ObjectInfo:
        """Return the object's metadata."""
        data, etag = self._lookup(key)
        return ObjectInfo(key, len(data), etag)

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Store the object, replacing any previous version."""
        return self._put(key, data, overwrite=True)

    def put_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        """Store the object unless the key exists; raise `PreconditionFailedError` if it does."""
        return self._put(key, data, overwrite=False)

    def _put(self, key: str, data: bytes, *, overwrite: bool) -> ObjectInfo:
        check_key(key)
        # Copy so later changes to a caller's bytearray or memoryview cannot alter the stored object.
        blob = bytes(data)
        etag = hashlib.md5(blob, usedforsecurity=False).hexdigest()
        ns = _namespace(self._name, create=True)
        with ns.lock:
            if not overwrite and key in ns.objects:
                raise PreconditionFailedError(f"object {key!r} already exists in {self.uri}", key=key)
            ns.objects[key] = (blob, etag)
        self.stats.record_put(len(blob))
        return ObjectInfo(key, len(blob), etag)

    def list(self, prefix: str = "") -> list[str]:
        """Return the keys that start with ``prefix``, sorted."""
        check_prefix(prefix)
        ns = self._ns
        with ns.lock:
            return sorted(k for k in ns.objects if k.startswith(prefix))

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Return the metadata of the objects whose keys start with ``prefix``, sorted by key."""
        check_prefix(prefix)
        ns = self._ns
        with ns.lock:
            found = [(k, v) for k, v in ns.objects.items() if k.startswith(prefix)]
        return [ObjectInfo(k, len(data), etag) for k, (data, etag) in sorted(found)]

    def delete(self, key: str) -> None:
        """Remove the object if it exists."""
        check_key(key)
        ns = self._ns
        with ns.lock:
            ns.objects.pop(key, None)
