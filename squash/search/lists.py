"""Scanning a partition's fine lists: the IVF-style level that keeps a query off most rows.

A partition's rows are grouped into k-means lists. A query ranks the partition's lists by centroid
distance and scans as many of the nearest as the planner assigned it (its share of the ``probe``
nearest lists of the whole index); a filtered query keeps adding lists, in the same order, until the
scanned rows hold ``probe_matches`` rows that pass its filter (at least k, or every list), so a
partition with m matches still returns min(k, m) of them. The filter is evaluated on the scanned rows
only, never on the whole partition, unless several queries share it.

Every scanned row gets its estimated distance from its scalar codes (`squash.search.codescan`), one
matrix product per list for all the queries that scan it, written straight into a query-major table
(or, for a filter passing few rows, from the passing rows' codes alone); each query's ``rerank_depth``
rows with the smallest estimates go to the exact re-rank.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from squash.filter import CompiledFilter, group_of
from squash.model import Metric
from squash.search.codescan import estimate_table, gathered_estimates, pair_estimates, rounding_margin, select_depth
from squash.search.levels import QueryCodes
from squash.search.params import SearchParams
from squash.search.postings import concat_ranges
from squash.search.prepared import PreparedPartition

# Evaluate a shared filter over the whole partition once when its queries would scan more rows than this
# fraction of the partition between them.
_SHARED_FILTER_SHARE = 0.5
# A filtered query's first guess at how many rows it needs is padded by this factor, so that one
# evaluation usually suffices.
_MATCH_SLACK = 1.25
# A filtered query gathers the codes of its passing rows, rather than sharing the products over whole lists,
# when fewer than one scanned row in this many passes (`scan_lists`).
_GATHER_SHARE = 16
# Ranked by the leading dimensions alone (`PreparedPartition.lead`), a query re-ranks this many times its depth.
_LEAD_WIDEN = 4


def list_scores(
    queries: NDArray[np.float32], centroids: NDArray[np.float32], norms: NDArray[np.float32], metric: Metric
) -> NDArray[np.float32]:
    """(nq, L) ranking scores of lists, smaller nearer: squared L2 less |q|^2, or negated inner product."""
    dots = queries @ centroids.T
    return -dots if metric is Metric.IP else norms[None, :] - 2.0 * dots


def list_order(part: PreparedPartition, queries: NDArray[np.float32], metric: Metric) -> NDArray[np.int64]:
    """(nq, L) list ids per query, nearest centroid first (largest inner product for ``ip``)."""
    scores = list_scores(queries, part.data.list_centroids, part.list_norms, metric)
    return np.argsort(scores, axis=1, kind="stable")


class _ListChoice:
    """The lists each query scans and, for filtered queries, which scanned rows pass the filter."""

    def __init__(
        self, part: PreparedPartition, order: NDArray[np.int64], probes: NDArray[np.int32], params: SearchParams, k: int
    ) -> None:
        self.part = part
        self.order = order
        self.starts = part.data.list_starts
        self.sizes = np.diff(self.starts)
        self.probes = np.clip(probes, 1, part.data.n_lists)
        self.target = max(k, params.probe_matches)
        self.lists: list[NDArray[np.int64]] = []
        self.masks: list[NDArray[np.bool_] | None] = []

    def unfiltered(self, i: int) -> None:
        self.lists.append(self.order[i, : self.probes[i]])
        self.masks.append(None)

    def shared(self, i: int, full: NDArray[np.bool_], per_list: NDArray[np.int64]) -> None:
        """A query whose filter was evaluated over the whole partition (``full``, counts ``per_list``)."""
        ordered = self.order[i]
        enough = np.searchsorted(np.cumsum(per_list[ordered]), self.target)
        lists = ordered[: max(int(self.probes[i]), int(enough) + 1)]
        self.lists.append(lists)
        self.masks.append(full[concat_ranges(self.starts[lists], self.starts[lists + 1])])

    def filtered(self, i: int, compiled: CompiledFilter, share: float) -> None:
        """A query with its own filter: evaluate it on the nearest lists until they hold enough matches."""
        ordered = self.order[i]
        rows_so_far = np.cumsum(self.sizes[ordered])
        total_lists = len(ordered)
        count = int(self.probes[i])
        need = self.target / max(share, 1e-9) * _MATCH_SLACK
        count = max(count, int(np.searchsorted(rows_so_far, need)) + 1)
        data = self.part.data
        while True:
            count = min(count, total_lists)
            lists = ordered[:count]
            rows = concat_ranges(self.starts[lists], self.starts[lists + 1])
            mask = compiled.matches(data.attr_codes, data.attr_raw, rows=rows)
            found = int(np.count_nonzero(mask))
            if found >= self.target or count == total_lists:
                break
            # Extend by the match rate seen so far (at least doubling; only doubling while none matched,
            # since zero matches say nothing about how far the matches are), then evaluate again.
            count *= 2
            if found:
                rate = found / len(rows)
                count = max(count, int(np.searchsorted(rows_so_far, self.target / rate * _MATCH_SLACK)) + 1)
        self.lists.append(lists)
        self.masks.append(mask)


def choose_lists(
    part: PreparedPartition,
    queries: NDArray[np.float32],
    filters: Sequence[CompiledFilter | None],
    estimates: Mapping[Hashable, float],
    probes: NDArray[np.int32],
    k: int,
    params: SearchParams,
    metric: Metric,
) -> _ListChoice:
    """Lists (and filter masks over their rows) for every query of ``queries``; ``probes`` lists at least.

    ``estimates`` maps each filter's group (`CompiledFilter.group`) to its expected matching rows in the partition.
    """
    choice = _ListChoice(part, list_order(part, queries, metric), probes, params, k)
    users: dict[Hashable, int] = {}
    for compiled in filters:
        users[group_of(compiled)] = users.get(group_of(compiled), 0) + 1
    shares: dict[Hashable, float] = {}
    full: dict[Hashable, tuple[NDArray[np.bool_], NDArray[np.int64]]] = {}
    data = part.data
    scanned = float(choice.probes.mean()) * part.size / max(data.n_lists, 1)
    for i, compiled in enumerate(filters):
        if compiled is None:
            choice.unfiltered(i)
            continue
        key = compiled.group
        if key not in shares:
            shares[key] = estimates[key] / max(part.size, 1)
        per_query = max(scanned, choice.target / max(shares[key], 1e-9))
        if users[key] > 1 and users[key] * per_query >= _SHARED_FILTER_SHARE * part.size:
            if key not in full:
                mask = compiled.matches(data.attr_codes, data.attr_raw)
                full[key] = (mask, np.add.reduceat(mask, data.list_starts[:-1]).astype(np.int64))
            choice.shared(i, *full[key])
        else:
            choice.filtered(i, compiled, shares[key])
    return choice


def scan_lists(
    part: PreparedPartition,
    codes: QueryCodes,
    choice: _ListChoice,
    qs: NDArray[np.int64],
    k: int,
    params: SearchParams,
    stats: dict[str, NDArray[np.int64]],
) -> NDArray[np.int64]:
    """Candidate rows (len(qs), depth) for queries ``qs``, ranked by scalar-code estimate over the lists of
    ``choice`` (from :func:`choose_lists` for the queries ``qs``, in order); -1 where a query has fewer.

    Two strategies, by cost per estimated row: a query estimates every row of its lists, one matrix product
    per list for all the queries scanning it (rows failing its filter are then dropped), unless its filter
    passes fewer than one row in _GATHER_SHARE of them: then it gathers the passing rows' codes and estimates
    only those, one matrix-vector product. Gathering and converting a row's codes costs about as much as
    estimating 16 rows in a shared product (debian-packages-e5small-384, 200 queries with their own 13%
    filters over every list: 709 QPS shared, 372 gathered).
    """
    depth = max(params.rerank_depth, k)
    scanned = np.array([int(choice.sizes[lists].sum()) for lists in choice.lists], dtype=np.int64)
    passing = np.array(
        [n if m is None else int(np.count_nonzero(m)) for m, n in zip(choice.masks, scanned, strict=True)],
        dtype=np.int64,
    )
    gather = passing * _GATHER_SHARE < scanned
    found = [
        (subset, scan(part, codes, choice, subset, qs[subset], depth))
        for subset, scan in ((np.flatnonzero(~gather), _scan_whole_lists), (np.flatnonzero(gather), _scan_matches))
        if len(subset)
    ]
    out = np.full((len(qs), max(rows.shape[1] for _, rows in found)), -1, dtype=np.int64)
    for subset, rows in found:
        out[subset, : rows.shape[1]] = rows
        stats["estimated"][qs[subset]] += (rows >= 0).sum(axis=1)
    stats["filtered"][qs] += passing
    return out


def _scan_whole_lists(
    part: PreparedPartition,
    codes: QueryCodes,
    choice: _ListChoice,
    subset: NDArray[np.int64],
    qs: NDArray[np.int64],
    depth: int,
) -> NDArray[np.int64]:
    """Rows (len(qs), <= depth): every row of each query's lists estimated, one product per list; rows failing
    a query's filter are then dropped."""
    starts = part.data.list_starts
    nq = len(qs)
    lists = [choice.lists[j] for j in subset.tolist()]
    counts = np.array([len(ls) for ls in lists], dtype=np.int64)
    pair_q = np.repeat(np.arange(nq), counts)
    pair_list = np.concatenate(lists)
    pair_len = choice.sizes[pair_list]
    # Query-major table (nq, width): a query's lists side by side from column 0, inf beyond them. Each
    # pair (query, list) starts at a flat position; those positions ascend, so a flat position maps back
    # to its pair by binary search and no per-row index array is ever built.
    per_query = np.bincount(pair_q, weights=pair_len, minlength=nq).astype(np.int64)
    width = int(per_query.max())
    column = np.cumsum(pair_len) - pair_len - np.repeat(np.cumsum(per_query) - per_query, counts)
    pair_at = pair_q * width + column
    # On a spectrum concentrated in a few leading dimensions, rows are ranked over those alone and more of
    # them go to the exact re-rank.
    lead = part.lead > 0 and codes.metric is not Metric.IP
    table = estimate_table(part, codes, qs, pair_q, pair_list, pair_at, width, lead)
    for i, j in enumerate(subset.tolist()):
        mask = choice.masks[j]
        if mask is not None:
            table[i, : len(mask)][~mask] = np.inf

    def rows_at(q: NDArray[np.int64], col: NDArray[np.int64]) -> NDArray[np.int64]:
        at = q * width + col
        pair = np.searchsorted(pair_at, at, side="right") - 1
        return starts[pair_list[pair]] + (at - pair_at[pair])

    # Each query's depth is its own: one set by its batch-mates would change its answer with the batch.
    chosen = select_depth(
        table,
        np.full(nq, _LEAD_WIDEN * depth if lead else depth, dtype=np.int64),
        rounding_margin(part, codes, qs, lead),
        lambda q, col: pair_estimates(part, codes, qs[q], rows_at(q, col), lead),
    )
    return np.where(chosen >= 0, rows_at(np.arange(nq)[:, None], np.maximum(chosen, 0)), -1)


def _scan_matches(
    part: PreparedPartition,
    codes: QueryCodes,
    choice: _ListChoice,
    subset: NDArray[np.int64],
    qs: NDArray[np.int64],
    depth: int,
) -> NDArray[np.int64]:
    """Rows (len(qs), <= depth): only the rows of each query's lists that pass its filter, estimated."""
    starts = part.data.list_starts
    matched = []
    for j in subset.tolist():
        lists = choice.lists[j]
        matched.append(concat_ranges(starts[lists], starts[lists + 1])[choice.masks[j]])
    width = max(1, max(len(rows) for rows in matched))
    table = np.full((len(qs), width), np.inf, dtype=np.float32)
    candidates = np.full((len(qs), width), -1, dtype=np.int64)
    for i, rows in enumerate(matched):
        table[i, : len(rows)] = gathered_estimates(part, codes, rows[None, :], qs[i : i + 1])[0]
        candidates[i, : len(rows)] = rows
    chosen = select_depth(
        table,
        np.full(len(qs), depth, dtype=np.int64),
        rounding_margin(part, codes, qs),
        lambda q, col: pair_estimates(part, codes, qs[q], candidates[q, col]),
    )
    return np.where(chosen >= 0, candidates[np.arange(len(qs))[:, None], np.maximum(chosen, 0)], -1)
