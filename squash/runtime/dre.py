"""Data retention in warm containers (DRE, design/algorithm.md 5.5): caches and per-invocation storage meters.

A container keeps what it loaded in module-level state between invocations; a warm invocation that finds
its key reuses it with no storage request. Keys carry the index URI and manifest version, so a rebuilt
index is never served from a stale entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from squash.storage import ObjectInfo, ObjectStore, StoreStats
from squash.storage.base import S3_COALESCE_GAP, get_coalesced

V = TypeVar("V")


class LruCache(Generic[V]):
    """Least-recently-used entries under a budget of ``size(value)`` units (bytes, or 1 per entry).

    Concurrent misses on one key load it once: later callers wait for the first and count as hits. A value
    larger than the whole budget is returned but not kept, so one oversized partition cannot flush the rest.
    """

    def __init__(self, budget: int, size: Callable[[V], int]) -> None:
        self.budget = budget
        self._size = size
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    @property
    def used(self) -> int:
        return self._used

    def lru_keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _lookup(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def get(self, key: Hashable, load: Callable[[], V]) -> tuple[V, bool, int]:
        """(value, whether it was cached, entries evicted to make room)."""
        with self._lock:
            found = self._lookup(key)
            if found is not None:
                return found, True, 0
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._lookup(key)
                if found is not None:
                    return found, True, 0
            try:
                value = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                return value, False, self._insert(key, value)

    def _insert(self, key: Hashable, value: V) -> int:
        size = self._size(value)
        if size > self.budget:
            return 0
        evicted = 0
        while self._entries and self._used + size > self.budget:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._used -= dropped
            evicted += 1
        self._entries[key] = (value, size)
        self._used += size
        return evicted


class MeteredStore:
    """A view of an `ObjectStore` with its own counters, so one invocation's reads are measured apart from
    those of invocations running concurrently on the same store (in-process mode).

    ``retry(read, key)`` runs each read (get, head, list), so an invocation retries a throttled read
    itself rather than failing and leaving the retry to its caller; by default reads run once.
    """

    def __init__(self, inner: ObjectStore, retry: Callable[[Callable[[], Any], str], Any] | None = None) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.stats = StoreStats()
        self.lists = 0
        self._retry = retry or (lambda read, _key: read())

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        data = self._retry(lambda: self.inner.get(key, byte_range), key)
        self.stats.record_get(len(data))
        return data

    def get_many(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        # Coalesce as the S3 store does, through our own get, so the count is what S3 would bill.
        return get_coalesced(self.get, key, ranges, S3_COALESCE_GAP)

    def head(self, key: str) -> ObjectInfo:
        info = self._retry(lambda: self.inner.head(key), key)
        self.stats.record_get(0)
        return info

    def put(self, key: str, data: bytes) -> ObjectInfo:
        return self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        return self.inner.put_if_absent(key, data)

    def list(self, prefix: str = "") -> list[str]:
        self.lists += 1
        return self._retry(lambda: self.inner.list(prefix), prefix)

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        self.lists += 1
        return self._retry(lambda: self.inner.list_info(prefix), prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
