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


def _within(scores: NDArray[np.float64], anchor: float, factor: float) -> NDArray[np.bool_]:
    """Partitions whose routing distance is within ``factor`` of the anchor partition's."""
    if (scores >= 0).all():
        # Squared distances: the factor applies to the distances themselves.
        return np.sqrt(scores) <= factor * np.sqrt(anchor) + 1e-12
    return scores - anchor <= (factor - 1.0) * abs(anchor) + 1e-12


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
    """Partitions each query visits, nearest first.

    The threshold is anchored at the nearest partition that alone certainly holds k matches, not
    at the nearest partition: when a filter is anti-correlated with the query, the near partitions
    hold few matches and the true filtered neighbours sit around the anchor. When the filter's
    possible matches over the whole index fit ``exact_budget``, every partition holding one is
    visited (each then scans its few matches exactly), so very selective queries are exact.
    """
    scores = centroid_scores(meta, queries)
    order = np.argsort(scores, axis=1, kind="stable")
    counts: dict[int, _FilterCounts] = {}
    plans: list[NDArray[np.int64]] = []
    cap = params.max_partitions or meta.n_partitions
    for i, compiled in enumerate(filters):
        fc = counts.get(id(compiled))
        if fc is None:
            fc = counts[id(compiled)] = _FilterCounts(meta, compiled)
        candidates = [int(p) for p in order[i] if fc.possible[p] > 0]
        if params.exact or int(fc.possible.sum()) <= params.exact_budget:
            plans.append(np.asarray(candidates, dtype=np.int64))
            continue
        visit: list[int] = []
        certain = 0
        anchor = None
        for partition in candidates:
            if anchor is None:
                visit.append(partition)
                if fc.certain_count(partition) >= k:
                    anchor = scores[i, partition]
                    inside = _within(scores[i], anchor, params.centroid_factor)
                certain += fc.certain_count(partition) if certain < k else 0
                continue
            if certain >= k and (not inside[partition] or len(visit) >= cap):
                break
            visit.append(partition)
            if certain < k:
                certain += fc.certain_count(partition)
        plans.append(np.asarray(visit, dtype=np.int64))
    return plans
