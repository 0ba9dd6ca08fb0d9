"""Per-partition search: the processor's pure function over one partition and a batch of queries.

1. filter: three-valued states from attribute codes (posting lists for selective filters), and the exact
   check of PARTIAL rows on raw values, so the candidates are exactly the matching rows; pruning never
   spends its budget on rows that would fail, and a partition with m matches returns min(k, m) of them;
2. estimate: every candidate's score from its scalar codes over every dimension (`squash.osq.scalar`),
   one float32 product for the queries sharing it, keeping ``rerank_depth`` rows per query
   (`squash.search.codescan`);
3. re-rank: exact distances on the original vectors, and the best k are returned.

A partition with few candidates, or any partition in ``exact`` mode, skips the estimate and ranks every
candidate exactly (after a safe pruning by the codes' distance bound that cannot drop a top-k row).
Queries without a filter, or whose filter is expected to match more than ``exact_threshold`` rows here,
scan fine lists instead (:mod:`squash.search.lists`): the lists replace level 1's candidate sets.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from squash.filter import CompiledFilter, group_of
from squash.filter.batch import estimates_many
from squash.model import Metric
from squash.search.codescan import gathered_estimates, pair_estimates, rounding_margin, select_depth, shared_estimates
from squash.search.levels import QueryCodes, select_smallest
from squash.search.lists import choose_lists, scan_lists
from squash.search.merge import merge_partials, top_k
from squash.search.params import SearchParams
from squash.search.postings import concat_ranges
from squash.search.prepared import PreparedPartition
from squash.search.result import LEVEL_TIMES, empty_stats

_EXACT_BLOCK = 8192
# Pairs times dimensions per chunk of direct distance computation: 1 MB of float64, so a chunk's gathered
# rows stay in cache between the passes over them (2-3x faster than 16 MB chunks, measured at D=128 and 784).
_PAIR_CHUNK = 1 << 17
# Per-query candidate sets wider than this many times k are screened in float32 before the exact pass.
_SCREEN_FACTOR = 4
# Queries per group when candidate sets of different widths are ranked together.
_WIDTH_GROUP = 32
# Exact scans prune by the codes' distance bound only when a query's widest set times the dimension exceeds this:
# below it, ranking every candidate costs less than the pruning's extra passes (1M x 128, 100 rows).
_PRUNE_WORK = 1 << 16
# Up to this many (query, row) pairs, distances are computed directly rather than screened by a product.
_DIRECT_PAIRS = 1 << 16


@dataclass(frozen=True)
class PartialResult:
    """Top-k of one partition for each query of a batch (global ids, exact distances), counters and
    seconds spent per activity of :data:`LEVEL_TIMES`."""

    ids: NDArray[np.int64]
    distances: NDArray[np.float32]
    stats: dict[str, NDArray[np.int64]]
    seconds: dict[str, float]


class _Clock:
    """Splits elapsed time among activities: each ``lap`` charges the time since the last one."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(LEVEL_TIMES, 0.0)
        self._last = time.perf_counter()

    def lap(self, activity: str) -> None:
        now = time.perf_counter()
        self.seconds[activity] += now - self._last
        self._last = now


def exact_distances(
    vectors: NDArray[np.generic], rows: NDArray[np.int64], queries: NDArray[np.float32], metric: Metric
) -> NDArray[np.float64]:
    """Exact distances (nq, m) of ``queries[i]`` to ``vectors[rows[i]]``, computed directly in float64.

    Every reported distance comes from here, so a vector's distance never depends on which path, batch
    or partition found it. Queries go in chunks so memory stays bounded.
    """
    nq, m = rows.shape
    out = np.empty((nq, m), dtype=np.float64)
    step = max(1, _PAIR_CHUNK // max(m * vectors.shape[1], 1))
    for start in range(0, nq, step):
        x = vectors[rows[start : start + step]].astype(np.float64)
        q = queries[start : start + step, None, :].astype(np.float64)
        if metric is Metric.L2:
            np.subtract(x, q, out=x)
            out[start : start + step] = np.einsum("qmd,qmd->qm", x, x)
            continue
        dots = np.einsum("qmd,qmd->qm", x, q)
        out[start : start + step] = -dots if metric is Metric.IP else 1.0 - dots
    return out


def _screen(
    vectors: NDArray[np.generic], rows: NDArray[np.int64], queries: NDArray[np.float32], metric: Metric
) -> NDArray[np.float32]:
    """Distances (nq, m) of ``queries`` to shared ``rows`` by one matrix product: a screen, not for reporting."""
    q = queries.astype(np.float64)
    x = vectors[rows].astype(np.float64)
    dots = q @ x.T
    if metric is Metric.L2:
        sq = (x * x).sum(axis=1)[None, :] - 2.0 * dots + (q * q).sum(axis=1)[:, None]
        return np.maximum(sq, 0.0).astype(np.float32)
    return (-dots if metric is Metric.IP else 1.0 - dots).astype(np.float32)


def _global_ids(part: PreparedPartition, rows: NDArray[np.int64]) -> NDArray[np.int64]:
    return np.where(rows >= 0, part.data.ids[np.maximum(rows, 0)], -1)


def _screen_rows(
    part: PreparedPartition, rows: NDArray[np.int64], queries: NDArray[np.float32], metric: Metric, k: int
) -> NDArray[np.int64]:
    """The rows (nq, w <= m) of ``rows`` (nq, m) that can hold each query's exact top-k, found in float32.

    A float32 distance is within ``margin`` of the exact one (the dot product's rounding bound,
    D * 2^-24 * |q| * |x|, doubled for safety), so every row whose screened distance is within twice
    the margin of the k-th smallest is kept: the exact pass that follows returns the same top-k as
    without the screen, at a quarter of the memory traffic.
    """
    nq, m = rows.shape
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    screen = np.empty((nq, m), dtype=np.float32)
    q32 = queries.astype(np.float32)
    step = max(1, 2 * _PAIR_CHUNK // max(m * queries.shape[1], 1))  # float32: twice the pairs per MB
    for start in range(0, nq, step):
        x = part.data.vectors[safe[start : start + step]].astype(np.float32, copy=False)
        screen[start : start + step] = np.matmul(x, q32[start : start + step, :, None])[..., 0]
    qnorm = np.sqrt((q32.astype(np.float64) ** 2).sum(axis=1))
    margin = 4.0 * queries.shape[1] * 2.0**-24 * qnorm * part.max_norm
    if metric is Metric.IP:
        screen = -screen
    else:
        margin = 2.0 * margin + 4.0 * queries.shape[1] * 2.0**-24 * (qnorm**2 + part.max_norm**2)
        screen = part.data.vector_norms[safe] - 2.0 * screen
    screen[~valid] = np.inf
    kth = np.partition(screen, k - 1, axis=1)[:, k - 1]
    inside = screen <= (kth + 2.0 * margin)[:, None]
    width = int(inside.sum(axis=1).max())
    chosen = select_smallest(np.where(inside, screen, np.inf), width)
    return np.where(np.take_along_axis(inside & valid, chosen, 1), np.take_along_axis(rows, chosen, 1), -1)


def _finish(
    part: PreparedPartition, rows: NDArray[np.int64], queries: NDArray[np.float32], metric: Metric, k: int
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Top-k of candidate ``rows`` ((nq, m) per query, or (m,) shared) by exact distance; -1 rows are padding.

    Many shared rows are first screened with one matrix product, wide per-query sets with a float32
    screen; the survivors' distances are then computed directly, as everywhere else.
    """
    if rows.ndim == 1 and rows.shape[0] * len(queries) <= _DIRECT_PAIRS:
        rows = np.broadcast_to(rows, (len(queries), rows.shape[0]))
    if rows.ndim == 1:
        screen = _screen(part.data.vectors, rows, queries, metric)
        rows, _ = top_k(np.broadcast_to(rows, screen.shape), screen, k)
    if rows.shape[1] > _SCREEN_FACTOR * k:
        rows = _screen_rows(part, rows, queries, metric, k)
    valid = rows >= 0
    final = exact_distances(part.data.vectors, np.where(valid, rows, 0), queries, metric).astype(np.float32)
    final[~valid] = np.inf
    ids, dists = top_k(rows, final, k)
    return _global_ids(part, ids), dists


def _exact_ragged(
    part: PreparedPartition,
    qs: NDArray[np.int64],
    rows: NDArray[np.int64],
    sizes: NDArray[np.int64],
    queries: NDArray[np.float32],
    metric: Metric,
    k: int,
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """Exact top-k for many small candidate sets at once: query ``qs[i]`` ranks the next ``sizes[i]`` of ``rows``.

    The sets are padded side by side into one (queries, widest set) table, pruned safely by the codes'
    bound, and ranked in groups of similar width instead of a round of numpy calls per query. Returns
    (ids, distances, rows each query ranked exactly), in the order of ``qs``.
    """
    slot = np.repeat(np.arange(len(qs)), sizes)
    column = np.arange(rows.shape[0]) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    table = np.full((len(qs), int(sizes.max())), -1, dtype=np.int64)
    table[slot, column] = rows
    work = table.shape[1] * part.data.vectors.shape[1]
    if metric is Metric.IP or table.shape[1] <= _SCREEN_FACTOR * k or work < _PRUNE_WORK:
        ids, dists = _finish(part, table, queries[qs], metric, k)
        return ids, dists, sizes
    table = _bound_pruned(part, table, queries[qs], metric, k)
    # Survivors left-aligned, queries ordered by how many survive: groups of similar width pad little.
    table = np.take_along_axis(table, np.argsort(table < 0, axis=1, kind="stable"), 1)
    widths = (table >= 0).sum(axis=1)
    order = np.argsort(widths, kind="stable")
    ids = np.empty((len(qs), k), dtype=np.int64)
    dists = np.empty((len(qs), k), dtype=np.float32)
    for group in np.array_split(order, max(1, len(order) // _WIDTH_GROUP)):
        width = max(int(widths[group].max()), 1)
        ids[group], dists[group] = _finish(part, table[group, :width], queries[qs[group]], metric, k)
    return ids, dists, widths


def _bound_pruned(
    part: PreparedPartition, rows: NDArray[np.int64], queries: NDArray[np.float32], metric: Metric, k: int
) -> NDArray[np.int64]:
    """The rows (nq, w <= m) of ``rows`` (nq, m) that can still be in each query's exact top-k (L2, cosine).

    A row's scalar codes bound its distance: ``|q - x| >= sqrt(estimate) - error`` (`squash.osq.scalar`),
    the estimate lowered by its float32 rounding margin first. The exact distances of the 2k rows with the
    smallest bounds give each query a k-th distance tau; a row whose bound exceeds tau cannot enter the
    top-k, so only the others are ranked exactly: safe pruning, no recall lost. The slack covers the float32
    rounding of the rotated coordinates and of the rotation matrix (relative 1e-4 of tau, absolute 1e-5 r^2,
    where r = |x| + |q| + 2 |mean| bounds |x - mean| + |q - mean|: the rotation centres vectors).
    """
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    codes = QueryCodes(part, queries, metric)
    everyone = np.arange(len(queries))
    estimate = gathered_estimates(part, codes, safe) - rounding_margin(part, codes, everyone)[:, None]
    reach = np.maximum(np.sqrt(np.maximum(estimate, 0.0)) - part.data.scalar.error[safe], 0.0)
    bound = reach**2
    if metric is Metric.COSINE:
        bound *= 0.5  # unit vectors: |x - q|^2 = 2 (1 - cos)
    bound[~valid] = np.inf
    first = select_smallest(bound, min(rows.shape[1], 2 * k))
    probe = np.take_along_axis(rows, first, 1)
    exact = exact_distances(part.data.vectors, np.where(probe >= 0, probe, 0), queries, metric)
    exact[probe < 0] = np.inf
    tau = np.partition(exact, k - 1, axis=1)[:, k - 1]
    qnorm = np.sqrt((queries.astype(np.float64) ** 2).sum(axis=1))
    mean = float(np.linalg.norm(part.data.rotation.mean.astype(np.float64)))
    slack = 1e-4 * tau + 1e-5 * (part.max_norm + qnorm + 2.0 * mean) ** 2
    keep = bound <= (tau + slack)[:, None]
    width = max(int(keep.sum(axis=1).max()), 1)
    chosen = select_smallest(np.where(keep, bound, np.inf), width)
    return np.where(np.take_along_axis(keep, chosen, 1), np.take_along_axis(rows, chosen, 1), -1)


def _shortlisted(
    part: PreparedPartition,
    cand: NDArray[np.int64],
    codes: QueryCodes,
    k: int,
    params: SearchParams,
    qs: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Rows (len(qs), depth) of candidates ``cand`` shared by queries ``qs``, ranked by scalar-code estimate."""
    table = shared_estimates(part, codes, qs, cand)
    depth = np.full(len(qs), max(params.rerank_depth, k), dtype=np.int64)
    margin = rounding_margin(part, codes, qs)
    chosen = select_depth(table, depth, margin, lambda q, col: pair_estimates(part, codes, qs[q], cand[col]))
    return np.where(chosen >= 0, cand[np.maximum(chosen, 0)], -1)


def _exact_scan(
    part: PreparedPartition, cand: NDArray[np.int64], queries: NDArray[np.float32], metric: Metric, k: int
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Exact top-k over every candidate, in blocks so memory stays bounded."""
    ids, dists = _finish(part, cand[:_EXACT_BLOCK], queries, metric, k)
    for start in range(_EXACT_BLOCK, cand.shape[0], _EXACT_BLOCK):
        block = _finish(part, cand[start : start + _EXACT_BLOCK], queries, metric, k)
        ids, dists = merge_partials([(ids, dists), block], k)
    return ids, dists


def _scans_lists(part: PreparedPartition, estimate: float | None, params: SearchParams) -> bool:
    """Whether a query scans fine lists, rather than ranking its filter's candidate set.

    ``estimate`` is its filter's expected matching rows here (None: no filter).
    """
    if params.exact or part.size <= params.exact_threshold or part.data.n_lists <= 1:
        return False
    return estimate is None or estimate > params.exact_threshold


def search_partition(
    part: PreparedPartition,
    queries: NDArray[np.float32],
    filters: Sequence[CompiledFilter | None],
    k: int,
    params: SearchParams,
    metric: Metric,
    probes: NDArray[np.int32] | None = None,
) -> PartialResult:
    """Search one partition for every query of a batch; ``filters[i]`` applies to ``queries[i]``.

    ``probes[i]`` is how many fine lists query i scans here (None: ``params.probe`` each).
    Queries that share a filter object share one candidate computation. Returns, per query, the
    partition's best min(k, matches) rows by exact distance, every one satisfying its filter.
    """
    nq = len(queries)
    clock = _Clock()
    stats = empty_stats(nq)
    stats["partitions"] += 1
    ids = np.full((nq, k), -1, dtype=np.int64)
    dists = np.full((nq, k), np.inf, dtype=np.float32)
    # Built on first need: groups answered by an exact scan (selective filters) never rotate queries.
    codes: QueryCodes | None = None
    groups: dict[Hashable, list[int]] = {}
    scanning: list[int] = []
    distinct = list({f.group: f for f in filters if f is not None}.values())
    matching = estimates_many(distinct, part.histograms).tolist()
    estimate = {f.group: m for f, m in zip(distinct, matching, strict=True)}
    expected = {key: _scans_lists(part, value, params) for key, value in estimate.items()}
    expected[None] = _scans_lists(part, None, params)
    for i, compiled in enumerate(filters):
        key = group_of(compiled)
        if expected[key]:
            scanning.append(i)
        else:
            groups.setdefault(key, []).append(i)
    if scanning:
        qs = np.asarray(scanning, dtype=np.int64)
        probe = np.full(len(qs), params.probe, dtype=np.int32) if probes is None else probes[qs]
        choice = choose_lists(part, queries[qs], [filters[i] for i in scanning], estimate, probe, k, params, metric)
        clock.lap("filter")
        codes = QueryCodes(part, queries, metric)
        rows = scan_lists(part, codes, choice, qs, k, params, stats)
        stats["reranked"][qs] += (rows >= 0).sum(axis=1)
        clock.lap("estimate")
        ids[qs], dists[qs] = _finish(part, rows, queries[qs], metric, k)
        clock.lap("rerank")
    # Every filtered group's candidates in one batch.
    filtered = [members for members in groups.values() if filters[members[0]] is not None]
    owner, matched = part.candidates_many([filters[members[0]] for members in filtered])
    bounds = np.searchsorted(owner, np.arange(len(filtered) + 1))
    clock.lap("filter")
    # Groups with few matches are ranked exactly, all together; per-query filters make many such groups.
    found = np.diff(bounds)
    member = np.asarray([i for members in filtered for i in members], dtype=np.int64)
    group = np.repeat(np.arange(len(filtered)), [len(members) for members in filtered])
    stats["filtered"][member] += found[group]
    exact = (found > 0) & (params.exact | (found <= params.exact_threshold))
    small = exact & (found * np.bincount(group, minlength=len(filtered)) <= _DIRECT_PAIRS)
    stats["exact_scans"][member[(exact | (found == 0))[group]]] += 1
    if small.any():
        qs, g = member[small[group]], group[small[group]]
        rows = matched[concat_ranges(bounds[g], bounds[g + 1])]
        ids[qs], dists[qs], ranked = _exact_ragged(part, qs, rows, found[g], queries, metric, k)
        stats["reranked"][qs] += ranked
        clock.lap("rerank")
    # The rest group by group: wide exact scans, pruned candidate sets, and the unfiltered group (exact mode,
    # or a partition too small for list scans), which takes every row.
    wide = np.flatnonzero((found > 0) & ~small).tolist()
    rest = [(filtered[g], matched[bounds[g] : bounds[g + 1]]) for g in wide]
    unfiltered = groups.get(None)
    if unfiltered is not None:
        rest.append((unfiltered, np.arange(part.size, dtype=np.int64)))
        stats["filtered"][unfiltered] += part.size
        stats["exact_scans"][unfiltered] += params.exact or part.size <= params.exact_threshold
    for members, cand in rest:
        qs = np.asarray(members, dtype=np.int64)
        m = cand.shape[0]
        if params.exact or m <= params.exact_threshold:
            stats["reranked"][qs] += m
            ids[qs], dists[qs] = _exact_scan(part, cand, queries[qs], metric, k)
            clock.lap("rerank")
            continue
        if codes is None:
            codes = QueryCodes(part, queries, metric)
        rows = _shortlisted(part, cand, codes, k, params, qs)
        stats["estimated"][qs] += (rows >= 0).sum(axis=1)
        stats["reranked"][qs] += rows.shape[-1]
        clock.lap("estimate")
        ids[qs], dists[qs] = _finish(part, rows, queries[qs], metric, k)
        clock.lap("rerank")
    return PartialResult(ids, dists, stats, clock.seconds)
