"""The processor: search one partition, kept warm in its container (DRE)."""

from __future__ import annotations

import time

from squash.errors import InvalidInputError
from squash.runtime.context import COMPUTE, HandlerContext, Invocation, check_dim
from squash.runtime.protocol import (
    ProcessorRequest,
    ProcessorResponse,
)
from squash.search.prepared import PreparedPartition
from squash.search.scan import search_partition


def process(request: ProcessorRequest, ctx: HandlerContext) -> ProcessorResponse:
    """Search one partition, loaded once per container and build and kept warm (DRE)."""
    inv = Invocation(ctx, request)
    stored = inv.index(request.index, count_hits=False)
    meta, pid = stored.meta, request.partition
    if pid >= meta.n_partitions:
        raise InvalidInputError(f"partition {pid} does not exist; the index has {meta.n_partitions}")
    check_dim(request.queries, meta)
    params = request.params
    filters = request.filters.compile(meta)
    deadline = inv.deadline
    with COMPUTE:
        if deadline is not None:
            deadline.check(f"searching partition {pid}")
        started = time.perf_counter()
        hold = ctx.config.holds_vectors(stored.manifest.partitions[pid].size, meta.n_partitions)
        part, hit, evicted = ctx.partitions.get(
            (request.index.uri, request.index.build, pid),
            lambda: PreparedPartition(stored.load_partition(pid, hold_vectors=hold)),
        )
        loaded = time.perf_counter()
        result = search_partition(part, request.queries, filters, request.k, params, meta.metric, request.probes)
    inv.add(
        cache_hits=int(hit),
        cache_misses=int(not hit),
        evictions=evicted,
        load_seconds=loaded - started,
        scan_seconds=time.perf_counter() - loaded,
        **{f"{activity}_seconds": seconds for activity, seconds in result.seconds.items()},
    )
    return ProcessorResponse(result.ids, result.distances, result.stats, inv.finish(request.n_queries))
