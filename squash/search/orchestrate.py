"""The one search loop of every mode: plan each effort group, visit each partition, merge in one order.

`Index.search` visits partitions by calling `search_partition` in process; an allocator visits them by
invoking processors concurrently. Both run `orchestrate`, so the embedded and deployed paths cannot drift:
the same visits, merged visit by visit in the same order (effort group, then ascending partition), give
bit-identical results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from squash.errors import SquashError
from squash.filter import CompiledFilter
from squash.model import IndexMeta
from squash.search.effort import EffortGroup
from squash.search.merge import merge_partials
from squash.search.plan import Plans, plan_queries
from squash.search.result import empty_stats


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


@dataclass(frozen=True)
class Visit:
    """One partition's part of a batch: the batch rows searched there, with their group's effort and the
    fine lists each of them scans."""

    partition: int
    rows: NDArray[np.int64]
    probes: NDArray[np.int32]
    group: EffortGroup


class Partial(Protocol):
    """What a visit returns: one partition's top-k of its rows, and their per-query counters."""

    ids: NDArray[np.int64]
    distances: NDArray[np.float32]
    stats: dict[str, NDArray[np.int64]]


@dataclass
class Merged:
    """The merged top-k of a batch; ``failed`` holds the visits that returned an error (their rows are
    marked incomplete, every other visit is merged)."""

    ids: NDArray[np.int64]
    distances: NDArray[np.float32]
    stats: dict[str, NDArray[np.int64]]
    complete: NDArray[np.bool_]
    failed: list[tuple[Visit, SquashError]] = field(default_factory=list)
    plan_seconds: float = 0.0
    visits: int = 0


Visitor = Callable[[Sequence[Visit]], Iterable[Partial | SquashError]]


def plan_visits(
    meta: IndexMeta,
    queries: NDArray[np.float32],
    filters: Sequence[CompiledFilter | None],
    k: int,
    groups: Sequence[EffortGroup],
    unvisited: NDArray[np.int64],
) -> list[Visit]:
    """Every partition visit of the batch, group by group, partitions ascending within a group; records
    in ``unvisited`` the partitions each query may match but will not visit."""
    visits = []
    for group in groups:
        plans = plan_queries(meta, queries[group.rows], [filters[i] for i in group.rows], k, group.params)
        unvisited[group.rows] = plans.unvisited
        for pid, (qs, probes) in group_by_partition(plans).items():
            visits.append(Visit(pid, group.rows[qs], probes, group))
    return visits


def orchestrate(
    meta: IndexMeta,
    queries: NDArray[np.float32],
    filters: Sequence[CompiledFilter | None],
    k: int,
    groups: Sequence[EffortGroup],
    visit: Visitor,
    *,
    planning: AbstractContextManager[object] | None = None,
) -> Merged:
    """Plan (under ``planning``, if given), hand every visit to ``visit`` and merge what it returns in order.

    ``visit`` returns one result per visit, in order: a `Partial`, or the `SquashError` that kept that
    partition from being searched. An exception it raises propagates.
    """
    nq = queries.shape[0]
    out = Merged(
        np.full((nq, k), -1, dtype=np.int64),
        np.full((nq, k), np.inf, dtype=np.float32),
        empty_stats(nq),
        np.ones(nq, dtype=bool),
    )
    if nq == 0:
        return out
    with planning or nullcontext():
        started = time.perf_counter()
        visits = plan_visits(meta, queries, filters, k, groups, out.stats["unvisited"])
        out.plan_seconds, out.visits = time.perf_counter() - started, len(visits)
    for v, part in zip(visits, visit(visits), strict=True):
        rows = v.rows
        if isinstance(part, SquashError):
            out.complete[rows] = False
            out.failed.append((v, part))
            continue
        out.ids[rows], out.distances[rows] = merge_partials(
            [(out.ids[rows], out.distances[rows]), (part.ids, part.distances)], k
        )
        for name, values in part.stats.items():
            out.stats[name][rows] += values
    return out
