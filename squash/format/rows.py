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
from collections import OrderedDict
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
    with that shape plus (D,); ``nbytes`` is the cache's bound, what this object may hold.
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
        self._cache: OrderedDict[int, NDArray[Any]] = OrderedDict()
        self._capacity = max(1, min(shape[0] // CACHE_SHARE, CACHE_BYTES // max(self._row_bytes, 1)))
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._capacity * self._row_bytes

    def __getitem__(self, rows: Any) -> NDArray[Any]:
        index = np.asarray(rows, dtype=np.int64)
        wanted, inverse = np.unique(index.ravel(), return_inverse=True)
        if len(wanted) and (wanted[0] < 0 or wanted[-1] >= self.shape[0]):
            raise IndexError(f"rows out of range 0..{self.shape[0] - 1}")
        out = np.empty((len(wanted), self.shape[1]), dtype=self.dtype)
        with self._lock:
            missing = []
            for j, row in enumerate(wanted.tolist()):
                held = self._cache.get(row)
                if held is None:
                    missing.append(j)
                else:
                    self._cache.move_to_end(row)
                    out[j] = held
        if missing:
            read = self._read(wanted[missing])
            out[missing] = read
            with self._lock:
                for row, values in zip(wanted[missing].tolist(), read, strict=True):
                    self._cache[row] = values
                while len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
        return out[inverse].reshape(*index.shape, self.shape[1])

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
