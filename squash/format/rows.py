"""Raw vectors read on demand: the rows a re-rank needs, by ranged reads of the partition object.

A processor that does not hold a partition's raw vectors (`squash.config.RuntimeConfig.rerank_vectors`)
keeps only its codes, ids and attributes warm, and reads the rows it re-ranks from the object's ``vectors``
section: sorted, so rows close together in the object (a fine list is one run of rows) share one request,
each verified against its own checksum (``vectors.crc``) since a ranged read cannot check the section's.
Rows read stay in a small bounded cache, so a batch that screens then ranks the same rows reads them once.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError
from squash.storage import ObjectStore

# Rows kept after a read, at most this many bytes (what one batch's re-rank reads: 200 queries re-ranking 40
# rows each at 128 float32 dimensions is 4 MB) and at most this share of the partition's rows.
CACHE_BYTES = 4 << 20
CACHE_SHARE = 16


def row_checksums(vectors: NDArray[Any]) -> NDArray[np.uint32]:
    """crc32 of each row's bytes (little-endian, as stored)."""
    rows = np.ascontiguousarray(vectors).view(np.uint8).reshape(len(vectors), -1)
    return np.fromiter((zlib.crc32(row) for row in rows), dtype=np.uint32, count=len(rows))


class RangedRows:
    """An (n, D) array of raw vectors in ``store`` at ``key``, from byte ``offset``, read as rows are indexed.

    Indexing takes an integer array of any shape (the only indexing the re-rank does) and returns the rows
    with that shape plus (D,); ``nbytes`` is what this object may hold. Rows read go into a ring of slots,
    the oldest overwritten first, found through a per-row slot table: every lookup is one vectorised gather.
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        offset: int,
        shape: tuple[int, int],
        dtype: np.dtype[Any],
        checksums: NDArray[np.uint32],
    ) -> None:
        self.store, self.key, self.offset = store, key, offset
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.checksums = checksums
        self._row_bytes = shape[1] * self.dtype.itemsize
        capacity = max(1, min(shape[0] // CACHE_SHARE, CACHE_BYTES // max(self._row_bytes, 1)))
        self._held = np.empty((capacity, shape[1]), dtype=self.dtype)
        self._row_of = np.full(capacity, -1, dtype=np.int64)  # which row each slot holds
        self._slot_of = np.full(shape[0], -1, dtype=np.int32)  # which slot holds each row
        self._next = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return int(self._held.nbytes + self._row_of.nbytes + self._slot_of.nbytes)

    def __getitem__(self, rows: Any) -> NDArray[Any]:
        index = np.asarray(rows, dtype=np.int64)
        wanted, inverse = np.unique(index.ravel(), return_inverse=True)
        if len(wanted) and (wanted[0] < 0 or wanted[-1] >= self.shape[0]):
            raise IndexError(f"rows out of range 0..{self.shape[0] - 1}")
        with self._lock:
            slots = self._slot_of[wanted]
            out = self._held[np.maximum(slots, 0)]
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            read = self._read(wanted[missing])
            out[missing] = read
            with self._lock:
                self._keep(wanted[missing][-len(self._held) :], read[-len(self._held) :])
        return out[inverse].reshape(*index.shape, self.shape[1])

    def _keep(self, rows: NDArray[np.int64], values: NDArray[Any]) -> None:
        """Put rows into the next slots of the ring, forgetting the rows those slots held."""
        slots = (self._next + np.arange(len(rows))) % len(self._held)
        self._next = int(slots[-1] + 1) % len(self._held)
        evicted = self._row_of[slots]
        self._slot_of[evicted[evicted >= 0]] = -1
        self._slot_of[rows] = slots
        self._row_of[slots] = rows
        self._held[slots] = values

    def _read(self, rows: NDArray[np.int64]) -> NDArray[Any]:
        """Rows (sorted, distinct) by ranged reads, each checked against its checksum."""
        starts = self.offset + rows * self._row_bytes
        blobs = self.store.get_many(self.key, [(int(s), int(s) + self._row_bytes) for s in starts])
        data = np.frombuffer(b"".join(blobs), dtype=self.dtype).reshape(len(rows), self.shape[1])
        bad = row_checksums(data) != self.checksums[rows]
        if bad.any():
            raise CorruptObjectError(
                f"object {self.key!r}: vectors row {int(rows[bad][0])} does not match its checksum", key=self.key
            )
        return data
