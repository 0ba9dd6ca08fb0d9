"""Squared L2 distances from rows to centroids in float32 row blocks, and nearest centroids: memory stays
bounded by a block of rows or of distances, whatever N and P."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError

BLOCK_ROWS = 65_536
# Most elements in one block of rows or of distances (64 MB of float32): wide data or large P shrink it.
_DIST_BUDGET = 1 << 24


def assign_to_centroids(
    vectors: NDArray[np.generic], centroids: NDArray[np.generic], block_rows: int = BLOCK_ROWS
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Nearest centroid of every row by squared L2: ids (N,) int32 and squared distances (N,) float32.

    Rows are processed in blocks so memory is O(block_rows x P); ties go to the lower centroid id.
    """
    x = check_vectors(vectors, "vectors")
    c = check_vectors(centroids, "centroids")
    if c.shape[1] != x.shape[1]:
        raise InvalidInputError(
            f"vectors have {x.shape[1]} dimensions but centroids have {c.shape[1]}; they must match"
        )
    return nearest(x, np.asarray(c, dtype=np.float32), check_int(block_rows, "block_rows", 1))


def check_vectors(vectors: NDArray[np.generic], name: str) -> NDArray[np.generic]:
    x = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidInputError(
            f"{name} must be a non-empty 2-D array (n, d); got shape {x.shape}. "
            "Reshape a single vector with v.reshape(1, -1)."
        )
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InvalidInputError(f"{name} must hold real numbers (float32, float64, uint8, ...); got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        for sl in row_blocks(x.shape[0], BLOCK_ROWS, x.shape[1]):
            # Check after the float32 cast: float64 values beyond float32's range become inf there.
            with np.errstate(over="ignore"):
                bad = ~np.isfinite(np.asarray(x[sl], dtype=np.float32)).all(axis=1)
            if bad.any():
                row = sl.start + int(np.argmax(bad))
                raise InvalidInputError(
                    f"{name} row {row} is not finite in float32 (NaN, inf or beyond ±3.4e38); "
                    "drop or fix such rows before partitioning"
                )
    return x


def check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def row_blocks(n: int, block_rows: int, width: int) -> Iterator[slice]:
    step = max(1, min(block_rows, _DIST_BUDGET // max(width, 1)))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def sq_dists(
    x: NDArray[np.generic],
    centroids: NDArray[np.float32],
    block_rows: int,
    rows: NDArray[np.intp] | None = None,
) -> Iterator[tuple[slice, NDArray[np.float32]]]:
    """Squared distances from ``x`` (or its ``rows``) to ``centroids``, one row block at a time."""
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    n = x.shape[0] if rows is None else len(rows)
    for sl in row_blocks(n, block_rows, max(len(centroids), x.shape[1])):
        xb = np.asarray(x[sl] if rows is None else x[rows[sl]], dtype=np.float32)
        d = xb @ centroids.T
        d *= -2.0
        d += np.einsum("ij,ij->i", xb, xb)[:, None]
        d += c_sq
        # |x|² - 2x·c + |c|² can dip below zero by rounding.
        np.maximum(d, 0.0, out=d)
        yield sl, d


def nearest(
    x: NDArray[np.generic],
    centroids: NDArray[np.float32],
    block_rows: int,
    rows: NDArray[np.intp] | None = None,
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    n = x.shape[0] if rows is None else len(rows)
    ids = np.empty(n, dtype=np.int32)
    d2 = np.empty(n, dtype=np.float32)
    for sl, d in sq_dists(x, centroids, block_rows, rows):
        best = d.argmin(axis=1)
        ids[sl] = best
        d2[sl] = d[np.arange(len(best)), best]
    return ids, d2


def nearest_k(
    x: NDArray[np.generic], centroids: NDArray[np.float32], k: int, block_rows: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """The ``k`` nearest centroids of every row, nearest first: ids (N, k) int32, squared distances."""
    n, p = x.shape[0], len(centroids)
    ids = np.empty((n, k), dtype=np.int32)
    dists = np.empty((n, k), dtype=np.float32)
    for sl, d in sq_dists(x, centroids, block_rows):
        if k < p:
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
            dk = np.take_along_axis(d, part, axis=1)
        else:
            part = np.broadcast_to(np.arange(p), d.shape)
            dk = d
        order = np.argsort(dk, axis=1, kind="stable")
        ids[sl] = np.take_along_axis(part, order, axis=1)
        dists[sl] = np.take_along_axis(dk, order, axis=1)
    return ids, dists
