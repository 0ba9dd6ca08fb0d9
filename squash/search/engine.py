"""One search over an index: validate, plan, scan partitions, merge. Shared by every mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.model import IndexMeta
from squash.search.merge import merge_partials
from squash.search.params import SearchParams, check_k
from squash.search.plan import plan_queries
from squash.search.prepared import PreparedPartition
from squash.search.queries import compile_filters, prepare_queries
from squash.search.result import SearchResult, empty_stats
from squash.search.scan import search_partition


def group_by_partition(plans: list[NDArray[np.int64]]) -> dict[int, NDArray[np.int64]]:
    """Queries per partition, from per-query partition lists."""
    if not plans:
        return {}
    lengths = np.array([len(p) for p in plans])
    queries = np.repeat(np.arange(len(plans)), lengths)
    parts = np.concatenate(plans) if lengths.sum() else np.empty(0, dtype=np.int64)
    order = np.argsort(parts, kind="stable")
    parts, queries = parts[order], queries[order]
    cuts = np.flatnonzero(np.diff(parts)) + 1
    return {int(p[0]): q for p, q in zip(np.split(parts, cuts), np.split(queries, cuts), strict=True) if len(p)}


def search(
    meta: IndexMeta,
    partition: Callable[[int], PreparedPartition],
    queries: Any,
    *,
    k: int,
    filter: Any,
    knobs: dict[str, Any],
) -> SearchResult:
    """Search ``queries`` over the partitions ``partition(pid)`` returns."""
    params = SearchParams.from_knobs(knobs)
    k = check_k(k)
    start = time.perf_counter()
    q = prepare_queries(queries, meta)
    filters = compile_filters(filter, q.shape[0], meta)
    plans = plan_queries(meta, q, filters, k, params)
    planned = time.perf_counter()
    nq = q.shape[0]
    stats = empty_stats(nq)
    ids = np.full((nq, k), -1, dtype=np.int64)
    dists = np.full((nq, k), np.inf, dtype=np.float32)
    for pid, qs in group_by_partition(plans).items():
        part = search_partition(partition(pid), q[qs], [filters[i] for i in qs], k, params, meta.metric)
        ids[qs], dists[qs] = merge_partials([(ids[qs], dists[qs]), (part.ids, part.distances)], k)
        for name, values in part.stats.items():
            stats[name][qs] += values
    done = time.perf_counter()
    return SearchResult(ids, dists, stats, {"plan_s": planned - start, "scan_s": done - planned})
