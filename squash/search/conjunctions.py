"""Exact matches of filters that are conjunctions of intervals, read from sorted posting lists.

Most real filters are ranges and equalities joined by AND (a price band, a date window, a category). Such a
filter's matches are the rows whose every bounded value lies in its interval. Every bounded attribute's
postings (rows sorted by value) hold the rows inside its interval as one contiguous slice, found by two
binary searches; the shortest slice over the filter's attributes drives, and its rows keep those whose other
values lie in their intervals, one attribute at a time (the most selective first, so each comparison reads
fewer rows). The cost is O(shortest slice): no row is read that the driver's own interval excludes. Only
when that slice is so wide that gathering its rows at random costs more than comparing whole columns in
order does the filter take a full pass over the raw columns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.filter import CompiledFilter
from squash.search.postings import Postings, gather_runs, sorted_pairs

# A random gather of one value costs about this many comparisons of a whole column's values in order. It
# depends on how much of the columns the caches hold; measured per filter, slice with its checks against
# a full pass: 1M x 128 (90k-row partitions, float64, 4 attributes) 15-17; Fashion-MNIST (60k rows, int64,
# 2 attributes) 4. Between them, 12 picks the faster side for every filter of the bench's workloads.
GATHER_COST = 12


def conjunction_matches(
    filters: Sequence[CompiledFilter],
    postings: Callable[[int], Postings],
    raw: Mapping[str, NDArray[Any]],
    size: int,
    *,
    batched_lookup: int,
    batch_rows: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(owner, rows): the rows matching each filter, owners and rows ascending. Every filter must be a
    conjunction of intervals (:attr:`~squash.filter.CompiledFilter.is_conjunction`).

    ``postings(a)`` gives attribute a's postings, ``raw`` the raw columns by name; ``size`` is the
    partition's rows. Filters whose driver slice holds at most ``batched_lookup`` rows are read together in
    batches of about ``batch_rows`` rows, so they share numpy calls while a batch's arrays stay in cache;
    larger ones one by one, with scalar bounds, their rows shrinking after every attribute. A slice so wide
    that gathering it costs more than comparing whole columns (:data:`GATHER_COST`) takes a full pass.
    """
    if not filters:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    names = filters[0].quantizer.schema.names
    attributes = sorted({a for compiled in filters for a in compiled.intervals.intervals})
    columns = [np.asarray(raw[names[a]]) for a in attributes]
    slot = {a: j for j, a in enumerate(attributes)}
    shape = (len(attributes), len(filters))
    lo, hi, bounded = np.full(shape, -np.inf), np.full(shape, np.inf), np.zeros(shape, dtype=bool)
    for i, compiled in enumerate(filters):
        for a, interval in compiled.intervals.intervals.items():
            lo[slot[a], i], hi[slot[a], i] = interval.closed()
            bounded[slot[a], i] = True
    lists = [postings(a) for a in attributes]
    first = np.stack([np.searchsorted(p.values, lo[j], side="left") for j, p in enumerate(lists)])
    last = np.stack([np.searchsorted(p.values, hi[j], side="right") for j, p in enumerate(lists)])
    # Rows inside each interval; the attributes a filter leaves unbounded sort last and never drive.
    inside = np.where(bounded, np.maximum(last - first, 0), size + 1)
    checks = np.argsort(inside, axis=0, kind="stable")  # per filter, its attributes by rows kept, fewest first
    driver = checks[0]
    column = np.arange(len(filters))
    count = inside[driver, column]
    width = bounded.sum(axis=0)
    owners, found = [], []
    for i in np.flatnonzero(count > batched_lookup).tolist():
        mine = checks[1 : width[i], i].tolist()
        if _gathers(count[i], inside[mine, i] / size) * GATHER_COST > size * width[i]:
            rows = np.flatnonzero(filters[i].inside(raw))
        else:
            rows = lists[driver[i]].order[first[driver[i], i] : last[driver[i], i]]
            for j in mine:
                values = columns[j][rows]
                rows = rows[(values >= lo[j, i]) & (values <= hi[j, i])]
            rows = np.sort(rows)
        owners.append(np.full(len(rows), i, dtype=np.int64))
        found.append(rows.astype(np.int64))
    small = np.flatnonzero((count > 0) & (count <= batched_lookup))
    batch = np.cumsum(count[small]) // max(batch_rows, 1)
    for members in np.split(small, np.flatnonzero(np.diff(batch)) + 1) if len(small) else ():
        mine = driver[members]
        owner, rows = gather_runs(lambda j: lists[j].order, mine, members, first[mine, members], last[mine, members])
        for j in np.argsort(inside[:, members].sum(axis=1), kind="stable").tolist():
            at = np.flatnonzero(bounded[j, owner] & (driver[owner] != j))
            if not at.size:
                continue
            values, bounding = columns[j][rows[at]], owner[at]
            keep = np.ones(len(rows), dtype=bool)
            keep[at] = (values >= lo[j, bounding]) & (values <= hi[j, bounding])
            owner, rows = owner[keep], rows[keep]
        owner, rows = sorted_pairs(owner, rows, size)
        owners.append(owner)
        found.append(rows)
    if not found:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    owner, rows = np.concatenate(owners), np.concatenate(found)
    order = np.argsort(owner, kind="stable")
    return owner[order], rows[order]


def _gathers(count: int, shares: NDArray[np.float64]) -> float:
    """Values gathered checking ``count`` driver rows attribute by attribute, if the attributes keep
    ``shares`` of the rows independently: every check reads the rows the previous ones kept."""
    return float(count * np.concatenate(([1.0], np.cumprod(shares[:-1]))).sum()) if len(shares) else 0.0
