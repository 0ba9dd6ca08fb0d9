"""A store wrapper that injects failures, for reliability tests. Production code never uses it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from squash.errors import StorageError
from squash.storage.base import ObjectInfo, ObjectStore

OPERATIONS = frozenset({"get", "get_many", "head", "put", "put_if_absent", "list", "delete"})


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    A call matches when its operation is in ``ops`` and ``keys`` (if given) accepts its key (the prefix, for
    `list`). With ``nth`` the fault fires only on the nth matching call (1-based), otherwise on every one.
    Firing raises ``error`` if set; otherwise, for reads, it flips the lowest bit of the byte at offset
    ``flip_byte`` (modulo the length) of each non-empty result.
    """

    ops: frozenset[str] = OPERATIONS
    keys: Callable[[str], bool] | None = None
    nth: int | None = None
    error: type[StorageError] | None = None
    flip_byte: int | None = None


class FaultInjectingStore:
    """Wraps any `ObjectStore`, passing every call through unless one of its faults fires.

    It shares the wrapped store's `uri` and `stats`; ``injected`` counts the faults fired.
    """

    def __init__(self, inner: ObjectStore, faults: Sequence[Fault]) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.stats = inner.stats
        self.faults = tuple(faults)
        self._counts = [0] * len(self.faults)
        self.injected = 0
        self._lock = threading.Lock()

    def _fire(self, op: str, key: str) -> list[Fault]:
        """Count this call against each matching fault; raise or return the faults that fire."""
        fired = []
        with self._lock:
            for i, fault in enumerate(self.faults):
                if op in fault.ops and (fault.keys is None or fault.keys(key)):
                    self._counts[i] += 1
                    if fault.nth is None or fault.nth == self._counts[i]:
                        fired.append(fault)
            self.injected += len(fired)
        for fault in fired:
            if fault.error is not None:
                raise fault.error(f"injected fault in {op} of {key!r} on {self.uri}", key=key)
        return fired

    @staticmethod
    def _corrupt(data: bytes, fired: list[Fault]) -> bytes:
        for fault in fired:
            if fault.flip_byte is not None and data:
                buf = bytearray(data)
                buf[fault.flip_byte % len(buf)] ^= 1
                data = bytes(buf)
        return data

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        fired = self._fire("get", key)
        return self._corrupt(self.inner.get(key, byte_range), fired)

    def get_many(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        fired = self._fire("get_many", key)
        return [self._corrupt(part, fired) for part in self.inner.get_many(key, ranges)]

    def head(self, key: str) -> ObjectInfo:
        self._fire("head", key)
        return self.inner.head(key)

    def put(self, key: str, data: bytes) -> ObjectInfo:
        self._fire("put", key)
        return self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        self._fire("put_if_absent", key)
        return self.inner.put_if_absent(key, data)

    def list(self, prefix: str = "") -> list[str]:
        self._fire("list", prefix)
        return self.inner.list(prefix)

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        # The same listing request as `list`, so the same faults fire.
        self._fire("list", prefix)
        return self.inner.list_info(prefix)

    def delete(self, key: str) -> None:
        self._fire("delete", key)
        self.inner.delete(key)
