"""One search over an index in process: validate, then the shared plan -> visit -> merge loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from squash.model import IndexMeta
from squash.search.effort import effort_groups, estimates_of
from squash.search.orchestrate import Partial, Visit, orchestrate
from squash.search.params import check_k
from squash.search.prepared import PreparedPartition
from squash.search.queries import FilterSet, prepare_queries
from squash.search.result import LEVEL_TIMES, SearchResult, calibrated_estimates
from squash.search.scan import search_partition


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
    filters = FilterSet.from_user(filter, q.shape[0]).compile(meta)
    groups = effort_groups(meta, filters, knobs)
    levels = dict.fromkeys(LEVEL_TIMES, 0.0)

    def visit(visits: Sequence[Visit]) -> Iterator[Partial]:
        for v in visits:  # one at a time, so only one partial result is held
            part = search_partition(
                partition(v.partition),
                q[v.rows],
                [filters[i] for i in v.rows],
                k,
                v.group.params,
                meta.metric,
                v.probes,
            )
            for name, seconds in part.seconds.items():
                levels[name] += seconds
            yield part

    merged = orchestrate(meta, q, filters, k, groups, visit)
    done = time.perf_counter()
    info = {"plan_s": merged.plan_seconds, "scan_s": done - start - merged.plan_seconds}
    info |= {f"{name}_s": s for name, s in levels.items()}
    estimates = calibrated_estimates(estimates_of(q.shape[0], groups), merged.stats)
    return SearchResult(merged.ids, merged.distances, merged.stats, info, recall_estimate=estimates)
