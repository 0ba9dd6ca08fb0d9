"""Merging partial top-k lists: by distance, ties by lower id, padding (-1, inf) last."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_FULL_SORT_LIMIT = 4096


def top_k(ids: NDArray[np.int64], dists: NDArray[np.float32], k: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Best ``k`` of each row of (nq, m) candidates, sorted by (distance, id); pads with (-1, inf)."""
    nq, m = ids.shape
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    out_d = np.full((nq, k), np.inf, dtype=np.float32)
    if m == 0:
        return out_ids, out_d
    keyed = np.where(ids >= 0, dists, np.inf).astype(np.float32)
    if m > _FULL_SORT_LIMIT:
        # Beyond this width a full sort costs more than it buys; ties exactly at the k-th distance
        # may then resolve by position instead of id.
        part = np.argpartition(keyed, k - 1, axis=1)[:, :k]
        ids, keyed = np.take_along_axis(ids, part, 1), np.take_along_axis(keyed, part, 1)
    # Stable lexicographic order: id is the minor key, distance the major; -1 padding sorts last via inf.
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), keyed), axis=1)
    take = min(k, ids.shape[1])
    out_ids[:, :take] = np.take_along_axis(ids, order, 1)[:, :take]
    out_d[:, :take] = np.take_along_axis(keyed, order, 1)[:, :take]
    out_ids[~np.isfinite(out_d)] = -1
    return out_ids, out_d


def merge_partials(
    parts: list[tuple[NDArray[np.int64], NDArray[np.float32]]], k: int
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Merge per-partition (ids, distances) blocks of equal row count into one top-k."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    dists = np.concatenate([p[1] for p in parts], axis=1)
    return top_k(ids, dists, k)
