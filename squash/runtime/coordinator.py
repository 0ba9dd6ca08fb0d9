"""The coordinator: pin the index version, validate the batch once, choose the tree and run it."""

from __future__ import annotations

from squash.runtime.allocator import Work, run_node
from squash.runtime.concurrency import check_plan, fit_shape
from squash.runtime.context import HandlerContext, Invocation
from squash.runtime.protocol import (
    CoordinatorRequest,
    CoordinatorResponse,
    merge_metrics,
)
from squash.search.effort import effort_groups, estimates_of
from squash.search.queries import prepare_queries
from squash.search.result import calibrated_estimates


def coordinate(request: CoordinatorRequest, ctx: HandlerContext) -> CoordinatorResponse:
    """Answer a client's batch: pin the version, validate, run the tree, gather results and metrics."""
    inv = Invocation(ctx, request)
    ref = inv.resolve(request.index)
    meta = inv.index(ref).meta
    # Normalise (cosine) once here; allocators and processors search exactly these vectors.
    queries = prepare_queries(request.queries, meta)
    compiled = request.filters.compile(meta)  # reject a bad filter before anything is invoked
    efforts = effort_groups(meta, compiled, request.knobs)  # and bad knobs; allocators choose the same
    # Within the functions' reserved concurrency, checked before anything is invoked.
    shape = request.shape or fit_shape(len(queries), meta.n_partitions, ctx.config)
    check_plan(shape, len(queries), meta.n_partitions, ctx.config)
    work = Work(ref, queries, request.filters, request.k, request.knobs, inv.deadline)
    share, own = run_node(inv, work, shape, None, 0)
    metrics = merge_metrics([*share.metrics, inv.finish(own)])
    return CoordinatorResponse(
        share.ids,
        share.distances,
        share.stats,
        metrics,
        version=ref.version,
        build=ref.build,
        shape=shape,
        recall_estimate=calibrated_estimates(estimates_of(len(queries), efforts), share.stats),
        complete=share.complete,
        missing=tuple(share.missing),
    )
