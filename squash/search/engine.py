"""One search over an index: validate, plan, scan partitions, merge. Shared by every mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.model import IndexMeta
from squash.search.effort import effort_groups, estimates_of
from squash.search.merge import merge_partials
from squash.search.params import check_k
from squash.search.plan import Plans, plan_queries
from squash.search.prepared import PreparedPartition
from squash.search.queries import compile_filters, prepare_queries
from squash.search.result import LEVEL_TIMES, SearchResult, calibrated_estimates, empty_stats
from squash.search.scan import search_partition


def group_by_partition(plans: Plans) -> dict[int, tuple[NDArray[np.int64], NDArray[np.int32]]]:
    """Per partition: the queries visiting it (ascending) and how many fine lists each scans there."""
    order = np.argsort(plans.partition, kind="stable")
    parts, queries, probes = plans.partition[order], plans.query[order], plans.probe[order]
    cuts = np.flatnonzero(np.diff(parts)) + 1
    return {
        int(p[0]): (q, c)
        for p, q, c in zip(np.split(parts, cuts), np.split(queries, cuts), np.split(probes, cuts), strict=True)
        if len(p)
    }


def search(
    meta: IndexMeta,
    partition: Callable[[int], PreparedPartition],
    queries: Any,
    *,
    k: int,
    filter: Any,
    knobs: dict[str, Any],
) -> SearchResult:
    """Search ``queries`` over the partitions ``partition(pid)`` returns, each with the effort its kind needs."""
    k = check_k(k)
    start = time.perf_counter()
    q = prepare_queries(queries, meta)
    filters = compile_filters(filter, q.shape[0], meta)
    groups = effort_groups(meta, filters, knobs)
    nq = q.shape[0]
    stats = empty_stats(nq)
    ids = np.full((nq, k), -1, dtype=np.int64)
    dists = np.full((nq, k), np.inf, dtype=np.float32)
    levels = dict.fromkeys(LEVEL_TIMES, 0.0)
    planning = 0.0
    for group in groups:
        planned = time.perf_counter()
        plans = plan_queries(meta, q[group.rows], [filters[i] for i in group.rows], k, group.params)
        stats["unvisited"][group.rows] = plans.unvisited
        planning += time.perf_counter() - planned
        for pid, (qs, probes) in group_by_partition(plans).items():
            rows = group.rows[qs]
            part = search_partition(
                partition(pid), q[rows], [filters[i] for i in rows], k, group.params, meta.metric, probes
            )
            ids[rows], dists[rows] = merge_partials([(ids[rows], dists[rows]), (part.ids, part.distances)], k)
            for name, values in part.stats.items():
                stats[name][rows] += values
            for name, seconds in part.seconds.items():
                levels[name] += seconds
    done = time.perf_counter()
    info = {"plan_s": planning, "scan_s": done - start - planning} | {f"{name}_s": s for name, s in levels.items()}
    estimates = calibrated_estimates(estimates_of(nq, groups), stats)
    return SearchResult(ids, dists, stats, info, recall_estimate=estimates)
