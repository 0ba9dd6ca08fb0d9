"""The allocator: start the children with their subtrees' slices, search its own share through the shared
plan -> visit -> merge loop (`squash.search.orchestrate`), one processor call per partition, then join."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.compute.retry import Deadline, FanOut
from squash.errors import SquashError
from squash.runtime.calls import invoke
from squash.runtime.context import COMPUTE, HandlerContext, Invocation, check_dim
from squash.runtime.protocol import (
    AllocatorRequest,
    AllocatorResponse,
    IndexRef,
    Metrics,
    Missing,
    ProcessorRequest,
    ProcessorResponse,
    merge_metrics,
)
from squash.runtime.tree import TreeShape
from squash.search.effort import effort_groups
from squash.search.orchestrate import Visit, orchestrate
from squash.search.queries import FilterSet
from squash.search.result import STAT_FIELDS, empty_stats


@dataclass(frozen=True)
class Work:
    """Queries to search, with what every request carries alongside them."""

    ref: IndexRef
    queries: NDArray[np.float32]
    filters: FilterSet
    k: int
    knobs: Mapping[str, Any]
    deadline: Deadline | None

    def take(self, rows: slice | NDArray[np.int64]) -> Work:
        return replace(self, queries=self.queries[rows], filters=self.filters.take(rows))


@dataclass(frozen=True)
class _Share:
    """Merged results of some queries and the metrics of the functions that produced them."""

    ids: NDArray[np.int64]
    distances: NDArray[np.float32]
    stats: dict[str, NDArray[np.int64]]
    metrics: list[Metrics]
    complete: NDArray[np.bool_]
    missing: list[Missing]


def _child_deadline(work: Work, margin: float) -> tuple[Deadline | None, Deadline | None]:
    """When this node stops waiting for its children, and the deadline whose remaining time they get."""
    if work.deadline is None:
        return None, None
    mine = work.deadline.earlier(margin)
    return mine, mine.earlier(margin)


def _search_share(inv: Invocation, work: Work) -> _Share:
    """An allocator's own work: the engine's plan -> visit -> merge loop, one processor call per partition.

    A partition that cannot be searched (after retries and hedging) leaves its queries marked incomplete
    and is reported in ``missing``; the other partitions' results are still merged.
    """
    nq = work.queries.shape[0]
    if nq == 0:  # an interior node with no share of its own reads nothing
        ids, dists = np.full((0, work.k), -1, dtype=np.int64), np.full((0, work.k), np.inf, dtype=np.float32)
        return _Share(ids, dists, empty_stats(0), [], np.ones(0, dtype=bool), [])
    if work.deadline is not None:
        work.deadline.check("planning")
    meta = inv.index(work.ref).meta
    check_dim(work.queries, meta)
    compiled = work.filters.compile(meta)
    config = inv.ctx.config
    wait_until, child = _child_deadline(work, config.deadline_margin)
    responses: list[ProcessorResponse | SquashError] = []

    def visit(visits: Sequence[Visit]) -> list[ProcessorResponse | SquashError]:
        requests = []
        for v in visits:
            part = work.take(v.rows)
            requests.append(
                ProcessorRequest(part.ref, part.queries, part.filters, work.k, v.group.params, v.partition, v.probes)
            )
        responses.extend(
            FanOut(
                [partial(invoke, inv, config.processor_for(r.partition), r, child) for r in requests],
                limit=config.max_fan_out,
                deadline=wait_until,
                hedge_after=config.hedge_min_seconds,
                budget=inv.budget,
            ).results()
        )
        return responses

    groups = effort_groups(meta, compiled, work.knobs)
    merged = orchestrate(meta, work.queries, compiled, work.k, groups, visit, planning=COMPUTE)
    inv.add(plan_seconds=merged.plan_seconds, partitions=merged.visits)
    missing = [
        Missing(
            v.partition,
            type(error).__name__,
            f"partition {v.partition} of {work.ref.uri} (version {work.ref.version}) could not be searched: "
            f"{type(error).__name__}: {error}",
        )
        for v, error in merged.failed
    ]
    metrics = [r.metrics for r in responses if not isinstance(r, SquashError)]
    for m in metrics:
        inv.note_child(m)
    return _Share(merged.ids, merged.distances, merged.stats, metrics, merged.complete, missing)


def run_node(inv: Invocation, work: Work, shape: TreeShape, node: int | None, level: int) -> tuple[_Share, int]:
    """Start the children with their subtrees' slices, then do this node's share, then join them.

    Returns the results of every query in order and the size of this node's own share. A failed child
    fails this node (its first error in order is raised).
    """
    config = inv.ctx.config
    wait_until, child_deadline = _child_deadline(work, config.deadline_margin)
    own, counts = shape.shares(work.queries.shape[0], level)
    bounds = np.cumsum([own, *counts]).tolist()
    children = []
    for child, lo, hi in zip(shape.children(node, level), bounds[:-1], bounds[1:], strict=True):
        if hi > lo:
            part = work.take(slice(lo, hi))
            children.append(
                AllocatorRequest(
                    part.ref,
                    part.queries,
                    part.filters,
                    part.k,
                    part.knobs,
                    shape,
                    node=child,
                    level=level + 1,
                )
            )
    pending = FanOut(
        [partial(invoke, inv, config.allocator_function, r, child_deadline) for r in children],
        limit=config.max_fan_out,
        deadline=wait_until,
    )
    mine = _search_share(inv, work.take(slice(0, own)))
    waiting = time.perf_counter()
    done = pending.results()
    inv.add(wait_seconds=time.perf_counter() - waiting)
    for result in done:
        if isinstance(result, SquashError):
            raise result
        inv.note_child(result.metrics)
    share = _Share(
        np.concatenate([mine.ids, *(r.ids for r in done)]),
        np.concatenate([mine.distances, *(r.distances for r in done)]),
        {name: np.concatenate([mine.stats[name], *(r.stats[name] for r in done)]) for name in STAT_FIELDS},
        [*mine.metrics, *(r.metrics for r in done)],
        np.concatenate([mine.complete, *(r.complete for r in done)]),
        [*mine.missing, *(m for r in done for m in r.missing)],
    )
    return share, own


def allocate(request: AllocatorRequest, ctx: HandlerContext) -> AllocatorResponse:
    """Search the queries of the subtree rooted at ``request.node``; children start before anything else."""
    inv = Invocation(ctx, request)
    work = Work(request.index, request.queries, request.filters, request.k, request.knobs, inv.deadline)
    share, own = run_node(inv, work, request.shape, request.node, request.level)
    metrics = merge_metrics([*share.metrics, inv.finish(own)])
    return AllocatorResponse(
        share.ids, share.distances, share.stats, metrics, complete=share.complete, missing=tuple(share.missing)
    )
