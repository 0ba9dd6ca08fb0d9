"""Partition selection: global fine-list ranking, the centroid-factor threshold, the single-pass rule.

Every query ranks all fine lists of the index by centroid distance and takes the nearest ``probe``;
the partitions owning them are visited, each told how many of its lists to scan. A filtered query
also visits partitions in ascending centroid distance while they lie within ``centroid_factor``
of the nearest, then keeps going until the partitions visited hold at least k vectors that
*certainly* match its filter (or every partition with a possible match has been visited). Each
visited processor returns min(k, its matches), so one pass yields min(k, total matches) results.
Partitions whose code histograms rule out any match are skipped without touching rows; exact
certain counts are computed from attribute codes only for partitions a query may stop at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from squash.filter import FULL, CompiledFilter
from squash.filter.batch import partition_bounds_many
from squash.model import IndexMeta, Metric
from squash.search.lists import list_scores
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


# Certain counts read a partition's attribute codes in blocks of this many rows (doubling), stopping
# once the count reaches k: planning a query costs O(k / selectivity) rows, not O(partition).
_COUNT_BLOCK = 4096


class _FilterCounts:
    """Per-filter bounds on each partition's matching rows; certain counts refined lazily from codes."""

    def __init__(
        self,
        meta: IndexMeta,
        compiled: CompiledFilter,
        bounds: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]],
    ) -> None:
        """``bounds``: the filter's (certain, possible, full ceiling) per partition."""
        self.meta = meta
        self.compiled = compiled
        self.bound, self.possible, ceiling = (b.copy() for b in bounds)
        # Certain matches found in the first ``counted`` rows of each partition; nothing to count where the
        # histograms already pin the number of rows whose codes prove a match.
        self.found = np.zeros_like(self.bound)
        self.counted = np.where(self.bound == ceiling, meta.sizes, 0).astype(np.int64)

    def certain_count(self, partition: int, need: int) -> int:
        """Rows of ``partition`` that certainly match: exact, or a lower bound that is at least ``need``."""
        codes = self.meta.attr_codes[partition]
        p = partition
        while max(self.bound[p], self.found[p]) < need and self.counted[p] < len(codes):
            start = int(self.counted[p])
            stop = min(len(codes), start + max(_COUNT_BLOCK, start))
            self.found[p] += int(np.count_nonzero(self.compiled.cell_states(codes[start:stop]) == FULL))
            self.counted[p] = stop
        return int(max(self.bound[p], self.found[p]))


def list_counts(meta: IndexMeta, queries: NDArray[np.float32], probe: int) -> NDArray[np.int32]:
    """(nq, P) how many of each query's ``probe`` nearest fine lists (over the whole index) each partition owns."""
    centroids, norms, owner = meta.all_lists
    nq, p = queries.shape[0], meta.n_partitions
    if len(owner) == 0 or nq == 0:
        return np.zeros((nq, p), dtype=np.int32)
    if p == 1:  # every list is the one partition's: no need to rank them here
        return np.full((nq, 1), min(probe, len(owner)), dtype=np.int32)
    scores = list_scores(queries, centroids, norms, meta.metric)
    take = min(probe, len(owner))
    top = np.argpartition(scores, take - 1, axis=1)[:, :take] if take < len(owner) else None
    owners = owner[top] if top is not None else np.broadcast_to(owner, (nq, len(owner)))
    flat = (np.arange(nq)[:, None] * p + owners).ravel()
    return np.bincount(flat, minlength=nq * p).reshape(nq, p).astype(np.int32)


@dataclass(frozen=True)
class Plans:
    """Every visit of a batch, flat: query ``query[j]`` visits partition ``partition[j]`` and scans
    ``probe[j]`` fine lists there. A query's visits are side by side, nearest partition first.
    ``unvisited[i]`` counts the partitions that may hold a match of query i but are not visited (0: its
    answer is exact wherever each visited partition ranks its matches exactly)."""

    query: NDArray[np.int64]
    partition: NDArray[np.int64]
    probe: NDArray[np.int32]
    unvisited: NDArray[np.int64]


def plan_queries(
    meta: IndexMeta,
    queries: NDArray[np.float32],
    filters: Sequence[CompiledFilter | None],
    k: int,
    params: SearchParams,
) -> Plans:
    """Per query: the partitions it visits (nearest first) and how many fine lists each scans.

    The threshold is anchored at the nearest partition that alone certainly holds k matches, not
    at the nearest partition: when a filter is anti-correlated with the query, the near partitions
    hold few matches and the true filtered neighbours sit around the anchor. When the filter's
    possible matches over the whole index fit ``exact_budget``, every partition holding one is
    visited (each then scans its few matches exactly), so very selective queries are exact.
    """
    nq = len(queries)
    # One partition: its routing distance orders nothing (and costs a pass over the queries).
    scores = centroid_scores(meta, queries) if meta.n_partitions > 1 else np.zeros((nq, 1))
    order = np.argsort(scores, axis=1, kind="stable")
    probes = list_counts(meta, queries, params.probe)
    ordered = np.take_along_axis(probes, order, axis=1)
    # Histogram bounds of every distinct filter in one batch (same-shaped filters share each numpy call).
    distinct = list({f.group: f for f in filters if f is not None}.values())
    bounds = partition_bounds_many(distinct, meta.attr_histograms)
    slot = {f.group: j for j, f in enumerate(distinct)}
    row = np.array([-1 if f is None else slot[f.group] for f in filters], dtype=np.int64)
    possible = np.repeat(meta.sizes.astype(np.int64)[None, :], nq, axis=0)  # (nq, P); no filter: every row
    possible[row >= 0] = bounds[1][row[row >= 0]]
    may = np.take_along_axis(possible > 0, order, axis=1)
    plain = (row < 0) & (not params.exact)
    # Unfiltered queries visit the partitions owning their nearest lists; queries in exact mode, whose
    # filter's possible matches fit exact_budget, or which may match in one partition only, visit every
    # partition that may match. All of them at once, nearest first.
    every = ~plain & (params.exact | (possible.sum(axis=1) <= params.exact_budget) | (may.sum(axis=1) <= 1))
    query, column = np.nonzero(((ordered > 0) & plain[:, None]) | (may & every[:, None]))
    visits = [(query, order[query, column], np.maximum(ordered[query, column], 1))]
    counts: dict[int, _FilterCounts] = {}  # by slot in distinct, built when a query needs certain counts
    cap = params.max_partitions or meta.n_partitions
    for i in np.flatnonzero(~plain & ~every).tolist():
        slot_i = int(row[i])  # a filtered query: unfiltered ones are plain or visit every partition
        fc = counts.get(slot_i)
        if fc is None:
            bound_i = (bounds[0][slot_i], bounds[1][slot_i], bounds[2][slot_i])
            fc = counts[slot_i] = _FilterCounts(meta, distinct[slot_i], bound_i)
        candidates = order[i][may[i]].tolist()
        visit = _walk(fc, candidates, scores[i], k, params.centroid_factor, cap)
        # Partitions owning one of the query's nearest lists are visited too, when they may match.
        near = set(visit) | {p for p in candidates if probes[i, p] > 0}
        chosen = np.asarray([p for p in candidates if p in near], dtype=np.int64)
        visits.append((np.full(len(chosen), i), chosen, np.maximum(probes[i, chosen], 1)))
    query, partition, probe = (np.concatenate([v[j] for v in visits]) for j in range(3))
    by_query = np.argsort(query, kind="stable")
    unvisited = may.sum(axis=1) - np.bincount(query, minlength=nq)
    return Plans(
        query[by_query].astype(np.int64),
        partition[by_query].astype(np.int64),
        probe[by_query].astype(np.int32),
        unvisited.astype(np.int64),
    )


def _walk(
    fc: _FilterCounts, candidates: list[int], scores: NDArray[np.float64], k: int, factor: float, cap: int
) -> list[int]:
    """The single-pass rule for one query: ``candidates`` (partitions that may match, nearest first) up to
    the nearest that alone certainly holds k matches, then on within ``factor`` of it (at most ``cap``),
    and on until the visited partitions certainly hold k matches."""
    visit: list[int] = []
    certain = 0
    inside: NDArray[np.bool_] | None = None
    for j, partition in enumerate(candidates):
        if j == len(candidates) - 1 and (inside is None or certain < k):
            visit.append(partition)  # the last partition that may match: no count can change the plan
            break
        if inside is None:
            visit.append(partition)
            if fc.certain_count(partition, k) >= k:
                inside = _within(scores, float(scores[partition]), factor)
            certain += fc.certain_count(partition, k - certain) if certain < k else 0
            continue
        if certain >= k and (not inside[partition] or len(visit) >= cap):
            break
        visit.append(partition)
        if certain < k:
            certain += fc.certain_count(partition, k - certain)
    return visit
