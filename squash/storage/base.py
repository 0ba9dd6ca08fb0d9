"""The `ObjectStore` interface shared by every storage backend, and helpers the backends have in common.

Keys are relative to the store root and use ``/`` between segments. A valid key is non-empty, does not
start with ``/``, has no empty, ``.`` or ``..`` segment and contains no backslash or NUL, so every backend
maps it to the same object and none can escape its root.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from squash.errors import InvalidInputError

# S3 answers a GET in roughly 10-30 ms before the first byte and then streams about 100 MB/s per connection,
# so reading up to 1 MiB of unwanted bytes costs about as much as one more request and is worth it.
S3_COALESCE_GAP = 1 << 20

# On local disk an extra open/seek/read costs about as much as copying 64 KiB from the page cache.
LOCAL_COALESCE_GAP = 64 << 10


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object.

    ``etag`` changes whenever the object is rewritten; it is only comparable within one backend.
    """

    key: str
    size: int
    etag: str


@dataclass
class StoreStats:
    """Request and byte counters of one store handle; safe to update from many threads.

    ``gets`` counts read requests that reached the store (a coalesced `get_many` counts one per request) and
    ``puts`` counts successful writes.
    """

    gets: int = 0
    bytes_read: int = 0
    puts: int = 0
    bytes_written: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_get(self, nbytes: int) -> None:
        """Count one read request that returned ``nbytes`` bytes."""
        with self._lock:
            self.gets += 1
            self.bytes_read += nbytes

    def record_put(self, nbytes: int) -> None:
        """Count one write of ``nbytes`` bytes."""
        with self._lock:
            self.puts += 1
            self.bytes_written += nbytes

    def snapshot(self) -> dict[str, int]:
        """Return the counters as a plain dict, read consistently."""
        with self._lock:
            return {
                "gets": self.gets,
                "bytes_read": self.bytes_read,
                "puts": self.puts,
                "bytes_written": self.bytes_written,
            }

    def reset(self) -> None:
        """Set every counter to zero."""
        with self._lock:
            self.gets = self.bytes_read = self.puts = self.bytes_written = 0


@runtime_checkable
class ObjectStore(Protocol):
    """A flat namespace of immutable byte objects under one root (`uri`).

    Byte ranges are half-open ``(start, end)`` pairs with ``0 <= start <= end``. An ``end`` past the object's
    size is clipped and a ``start`` at or past it yields ``b""``. An empty range (``start == end``) yields
    ``b""`` without contacting the store, so it does not check that the key exists. A missing key raises
    `ObjectNotFoundError`; other backend failures raise `StorageError` (`ThrottledError` when the store asks
    the caller to slow down).
    """

    uri: str
    stats: StoreStats

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Return the object's bytes, or only those in ``byte_range``."""
        ...

    def get_many(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Return the bytes of each range of one object, in the order given.

        Ranges at most the store's ``coalesce_gap`` bytes apart are read with one request.
        """
        ...

    def head(self, key: str) -> ObjectInfo:
        """Return the object's metadata without reading it."""
        ...

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Write the object, replacing any previous version atomically."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        """Write the object only if the key does not exist; raise `PreconditionFailedError` otherwise.

        Atomic: of several concurrent writers of one key exactly one succeeds.
        """
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Return the keys that start with ``prefix``, relative to the store root, sorted."""
        ...

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Return the metadata of the objects whose keys start with ``prefix``, sorted by key.

        One listing request, as `list` (S3 lists sizes and ETags with the keys), so a reader can tell that an
        object was rewritten without reading it.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise `InvalidInputError`."""
    if not isinstance(key, str) or not key:
        raise InvalidInputError(f"object key must be a non-empty string, got {key!r}")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidInputError(
            f"invalid object key {key!r}: keys are relative, use '/' between segments and contain no NUL"
        )
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise InvalidInputError(f"invalid object key {key!r}: empty, '.' and '..' segments are not allowed")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid listing prefix, else raise `InvalidInputError`.

    Every segment but the last must be a valid key segment; the last may be partial or empty.
    """
    if not isinstance(prefix, str):
        raise InvalidInputError(f"list prefix must be a string, got {prefix!r}")
    head, _, last = prefix.rpartition("/")
    if head:
        check_key(head)
    elif prefix.startswith("/"):
        raise InvalidInputError(f"invalid list prefix {prefix!r}: prefixes are relative to the store root")
    if "\\" in last or "\x00" in last:
        raise InvalidInputError(f"invalid list prefix {prefix!r}: use '/' between segments and no NUL")
    return prefix


def check_range(byte_range: tuple[int, int]) -> tuple[int, int]:
    """Return ``byte_range`` if it is a valid half-open ``(start, end)``, else raise `InvalidInputError`."""
    try:
        start, end = byte_range
    except (TypeError, ValueError):
        raise InvalidInputError(f"byte range must be a (start, end) pair, got {byte_range!r}") from None
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
        raise InvalidInputError(f"byte range must satisfy 0 <= start <= end, got {byte_range!r}")
    return start, end


def get_coalesced(
    get: Callable[[str, tuple[int, int]], bytes],
    key: str,
    ranges: Sequence[tuple[int, int]],
    max_gap: int,
) -> list[bytes]:
    """Serve `ObjectStore.get_many` with ``get``, merging ranges whose gap is at most ``max_gap`` bytes.

    Overlapping and duplicate ranges are read once; empty ranges are not read at all.
    """
    checked = [check_range(r) for r in ranges]
    spans: list[tuple[int, int, list[int]]] = []
    for i in sorted((i for i, (s, e) in enumerate(checked) if e > s), key=checked.__getitem__):
        start, end = checked[i]
        if spans and start <= spans[-1][1] + max_gap:
            span_start, span_end, members = spans[-1]
            spans[-1] = (span_start, max(span_end, end), members)
            members.append(i)
        else:
            spans.append((start, end, [i]))
    out = [b""] * len(checked)
    for span_start, span_end, members in spans:
        blob = get(key, (span_start, span_end))
        for i in members:
            start, end = checked[i]
            out[i] = blob[start - span_start : end - span_start]
    return out
