"""Partition selection: centroid order, the centroid-factor threshold, and the single-pass rule.

A query visits partitions in ascending centroid distance while they lie within ``centroid_factor``
of the nearest, then keeps going until the partitions visited hold at least k vectors that
*certainly* match its filter (or every partition with a possible match has been visited). Each
visited processor returns min(k, its matches), so one pass yields min(k, total matches) results.
Partitions whose code histograms rule out any match are skipped without touching rows; exact
certain counts are computed from attribute codes only for partitions a query may stop at.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from squash.filter import FULL, CompiledFilter
from squash.model import IndexMeta, Metric
from squash.search.params import SearchParams


def centroid_scores(meta: IndexMeta, queries: NDArray[np.float32]) -> NDArray[np.float64]:
    """(nq, P) routing distances: squared L2 to centroids, or negated inner product for ``ip``."""
    c = meta.centroids.astype(np.float64)
    q = queries.astype(np.float64)
    if meta.metric is Metric.IP:
        return -(q @ c.T)
    return np.maximum((c * c).sum(axis=1)[None, :] - 2.0 * (q @ c.T) + (q * q).sum(axis=1)[:, None], 0.0)


def _within_threshold(scores: NDArray[np.float64], factor: float) -> NDArray[np.bool_]:
    """Partitions within the centroid-factor threshold of the best one, per query."""
    if scores.shape[1] == 0:
        return np.zeros(scores.shape, dtype=bool)
    best = scores.min(axis=1, keepdims=True)
    if (scores >= 0).all():
        # Squared distances: compare the distances themselves with the factor.
        return np.sqrt(scores) <= factor * np.sqrt(best) + 1e-12
    return scores - best <= (factor - 1.0) * np.abs(best) + 1e-12


class _FilterCounts:
    """Per-filter (certain, possible) counts per partition, refined to exact certain counts lazily."""

    def __init__(self, meta: IndexMeta, compiled: CompiledFilter | None) -> None:
        self.meta = meta
        self.compiled = compiled
        p = meta.n_partitions
        if compiled is None:
            self.certain = meta.sizes.astype(np.int64).copy()
            self.possible = self.certain.copy()
            self.exact = np.ones(p, dtype=bool)
        else:
            bounds = [compiled.state_histogram_bounds(meta.attr_histograms[i]) for i in range(p)]
            self.certain = np.array([b[0] for b in bounds], dtype=np.int64)
            self.possible = np.array([b[1] for b in bounds], dtype=np.int64)
            self.exact = self.certain == self.possible

    def certain_count(self, partition: int) -> int:
        if not self.exact[partition] and self.compiled is not None:
            states = self.compiled.cell_states(self.meta.attr_codes[partition])
            self.certain[partition] = int(np.count_nonzero(states == FULL))
            self.exact[partition] = True
        return int(self.certain[partition])


def plan_queries(
    meta: IndexMeta,
    queries: NDArray[np.float32],
    filters: Sequence[CompiledFilter | None],
    k: int,
    params: SearchParams,
) -> list[NDArray[np.int64]]:
    """Partitions each query visits, nearest first."""
    scores = centroid_scores(meta, queries)
    order = np.argsort(scores, axis=1, kind="stable")
    inside = _within_threshold(scores, params.centroid_factor)
    counts: dict[int, _FilterCounts] = {}
    plans: list[NDArray[np.int64]] = []
    cap = params.max_partitions or meta.n_partitions
    for i, compiled in enumerate(filters):
        fc = counts.get(id(compiled))
        if fc is None:
            fc = counts[id(compiled)] = _FilterCounts(meta, compiled)
        visit: list[int] = []
        certain = 0
        for partition in order[i]:
            if fc.possible[partition] == 0:
                continue
            enough = certain >= k
            if not params.exact and enough and (not inside[i, partition] or len(visit) >= cap):
                break
            visit.append(int(partition))
            if certain < k:
                certain += fc.certain_count(int(partition))
        plans.append(np.asarray(visit, dtype=np.int64))
    return plans
