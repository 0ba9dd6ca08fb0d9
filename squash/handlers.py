"""Cloud-agnostic bodies of the coordinator, allocator and processor functions (design/algorithm.md 5.1-5.5).

- The coordinator pins the index version, validates the batch once (dimensions, filters, knobs), chooses
  the allocator tree within the functions' reserved concurrency (`squash.concurrency`) and starts it; at
  depth 0 it does an allocator's work itself.
- An allocator first starts its children (each gets its subtree's slice of the batch), then plans its own
  share with `plan_queries` (single-pass rule), calls one processor per partition concurrently, merges the
  partial top-k, and finally joins its children.
- A processor searches one partition, kept warm in its container's `HandlerContext` (DRE). Partition p
  always goes to processor slot p % S (`RuntimeConfig.processor_for`), so a warm slot holds its partitions.

Results come back up in the responses with per-function metrics (timings, invocations, cold/warm, cache
hits, storage requests and bytes).

Fault handling (`squash.compute.retry`): every node retries its own failed invocations and storage reads
on transient errors with jittered backoff, within its retry budget, and never an error its callee raised
after its own retries; processor stragglers are hedged. Every level stops at its own deadline: its
request's ``budget_ms`` from its arrival, and on Lambda no later than the end of its time limit. A partition
that still cannot be searched marks its queries incomplete and is named in the response's ``missing``;
the client raises `IncompleteResultError` unless asked for partial results, so results are never silently
partial.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.access import check_allowed
from squash.compute.base import Invoker, call
from squash.compute.retry import Deadline, FanOut, RetryBudget, RetryPolicy, retrying
from squash.concurrency import check_plan, fit_shape
from squash.config import RuntimeConfig
from squash.dre import LruCache, MeteredStore
from squash.errors import InvalidInputError, SquashError
from squash.format import StoredIndex, find_manifest, index_changed, open_index
from squash.model import IndexMeta
from squash.protocol import (
    RESPONSES,
    AllocatorRequest,
    AllocatorResponse,
    CoordinatorRequest,
    CoordinatorResponse,
    FilterSet,
    IndexRef,
    Metrics,
    Missing,
    ProcessorRequest,
    ProcessorResponse,
    merge_metrics,
    split_request,
)
from squash.search.effort import effort_groups, estimates_of
from squash.search.orchestrate import Visit, orchestrate
from squash.search.params import SearchParams
from squash.search.prepared import PreparedPartition
from squash.search.queries import prepare_queries
from squash.search.result import STAT_FIELDS, calibrated_estimates, empty_stats
from squash.search.scan import search_partition
from squash.storage import ObjectStore, open_store
from squash.tree import TreeShape

# Index metadata versions a container keeps (a rebuild adds one; old ones age out).
_INDEXES_KEPT = 4
# Published manifests (uri, version, etag) whose build id a coordinator remembers: a few strings each.
_MANIFESTS_KEPT = 64
# Store handles a container keeps, by index URI: cheap views over one shared client, bounded all the same
# because callers choose the URIs.
_STORES_KEPT = 64
# Threads of this process allowed in numpy-heavy sections at once (never across a wait for an invocation).
# On Lambda a container runs one invocation, so this never binds. In process, hundreds of node threads would
# otherwise call BLAS together: OpenBLAS caps concurrent callers (numpy's wheels at 64, past which it warns
# "precompiled NUM_THREADS exceeded"; a run with 200 concurrent processors died of heap corruption), and more
# callers than cores only adds contention.
_COMPUTE = threading.BoundedSemaphore(os.cpu_count() or 1)
# When the event being handled on this thread arrived (perf_counter, thread CPU, monotonic) and the time
# Lambda had left for it (ms, None off Lambda): each invocation runs on one thread.
_ARRIVED = threading.local()
# Modelled latency of one warm synchronous invoke hop on Lambda (design/anchors.md: "tens of ms warm"), added
# to a parent's modelled duration for its slowest child.
MODEL_HOP_MS = 20.0


@dataclass(eq=False)
class HandlerContext:
    """One function container's lasting state (its module-level state on Lambda) and what it calls.

    Caches are keyed by what they hold, the build id, never by the version alone: versions restart at 1
    when an index is deleted and built again at the same address. ``indexes`` caches opened index metadata
    by (uri, version, build); ``partitions`` caches prepared partitions by (uri, build, partition) under
    ``config.cache_budget`` bytes, evicting the least recently used; ``builds`` remembers the build of each
    published manifest (uri, version, etag) a coordinator has seen, so a warm request checks its index with
    one listing (or HEAD) and no read; ``stores`` keeps the last `_STORES_KEPT` store handles by URI.
    ``emit`` receives each invocation's own counters (the Lambda apps publish them as metrics).
    """

    role: str
    function_name: str
    config: RuntimeConfig
    invoker: Invoker
    open_store: Callable[[str], ObjectStore] = open_store
    emit: Callable[[Mapping[str, float]], None] | None = None
    indexes: LruCache[StoredIndex] = field(init=False)
    builds: LruCache[str] = field(init=False)
    partitions: LruCache[PreparedPartition] = field(init=False)
    stores: LruCache[ObjectStore] = field(init=False)

    def __post_init__(self) -> None:
        self.indexes = LruCache(_INDEXES_KEPT, lambda _: 1)
        self.builds = LruCache(_MANIFESTS_KEPT, lambda _: 1)
        self.partitions = LruCache(self.config.cache_budget, lambda p: p.nbytes)
        self.stores = LruCache(_STORES_KEPT, lambda _: 1)
        self._invocations = 0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, role: str, *, emit: Callable[[Mapping[str, float]], None] | None = None) -> HandlerContext:
        """The context of a Lambda function: configuration from the environment, a Lambda invoker."""
        from squash.compute.aws_lambda import LambdaInvoker

        config = RuntimeConfig.from_env()
        invoker = LambdaInvoker(max_connections=config.max_fan_out, read_timeout=config.invoke_timeout)
        return cls(role, os.environ.get("AWS_LAMBDA_FUNCTION_NAME", role), config, invoker, emit=emit)

    def begin(self) -> bool:
        """Count an invocation; True if it is this container's first (a cold start)."""
        with self._lock:
            self._invocations += 1
            return self._invocations == 1

    def store(self, uri: str) -> ObjectStore:
        """The store handle of ``uri``, reused while recently used.

        Every role opens its index here before any storage request, so this is where a URI outside
        ``config.index_roots`` is refused (`AccessDeniedError`).
        """
        check_allowed(uri, self.config.index_roots)
        return self.stores.get(uri, lambda: self.open_store(uri))[0]


class _Invocation:
    """One invocation's meter (timings, cache outcomes and the storage requests it made itself), its
    deadline and its retry budget."""

    def __init__(self, ctx: HandlerContext, request: CoordinatorRequest | AllocatorRequest | ProcessorRequest) -> None:
        # Timed from the event's arrival in `handle`, so decoding the request counts as on Lambda.
        arrived = getattr(_ARRIVED, "clocks", None)
        _ARRIVED.clocks = None
        self.started, self.cpu_started, arrival, remaining_ms = arrived or (
            time.perf_counter(),
            time.thread_time(),
            time.monotonic(),
            None,
        )
        self.deadline = _deadline(request.budget_ms, remaining_ms, arrival)
        self.slowest_child_ms: float | None = None
        self.ctx = ctx
        self.cold = ctx.begin()
        self.policy = RetryPolicy.of(ctx.config)
        self.budget = RetryBudget.of(ctx.config)
        self.meter = MeteredStore(ctx.store(request.index.uri), retry=self.retrying)
        self.counters: defaultdict[str, float] = defaultdict(int)
        self._indexes: dict[tuple[str, int | None, str | None], StoredIndex] = {}
        if self.deadline is not None:
            self.deadline.check(f"the {request.KIND} started")  # a late request does no work at all

    def retrying(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()`` retried on transient errors within this invocation's deadline and budget."""
        return retrying(fn, self.policy, self.deadline, what, self.budget)

    def add(self, **values: float) -> None:
        for name, value in values.items():
            self.counters[name] += value

    def resolve(self, ref: IndexRef) -> IndexRef:
        """Pin the latest (or the caller's) version and its build: one listing, or one HEAD if pinned.

        The manifest is read only when this container has not seen that (version, etag) before, so an
        index deleted and rebuilt at the same address is found at once and never served from the old cache.
        """
        published = find_manifest(self.meter, ref.version)
        build, _, _ = self.ctx.builds.get(
            (ref.uri, published.version, published.etag), lambda: self._open(ref.uri, published.version)
        )
        if ref.build is not None and ref.build != build:
            # A later slice of a split batch: the index was rebuilt after the first slice was answered.
            raise index_changed(ref.uri, published.version, build, ref.build)
        return IndexRef(ref.uri, published.version, build)

    def index(self, ref: IndexRef, *, count_hits: bool = True) -> StoredIndex:
        """The index at ``ref`` (version and build pinned), from the container's cache when warm."""
        key = (ref.uri, ref.version, ref.build)
        if key not in self._indexes:
            started = time.perf_counter()
            stored, hit, _ = self.ctx.indexes.get(key, lambda: self._load(ref.version, ref.build))
            self.add(load_seconds=time.perf_counter() - started)
            if count_hits:
                self.add(cache_hits=int(hit), cache_misses=int(not hit))
            self._indexes[key] = replace(stored, store=self.meter)
        return self._indexes[key]

    def _open(self, uri: str, version: int) -> str:
        """Read a manifest this container has not seen, cache the index under its build; return the build."""
        started = time.perf_counter()
        stored = self._load(version, None)
        key = (uri, version, stored.build_id)
        cached, _, _ = self.ctx.indexes.get(key, lambda: stored)
        self.add(load_seconds=time.perf_counter() - started, cache_misses=1)
        self._indexes[key] = replace(cached, store=self.meter)
        return stored.build_id

    def _load(self, version: int | None, build: str | None) -> StoredIndex:
        return replace(open_index(self.meter, version, build=build), store=self.meter.inner)

    def note_child(self, metrics: Metrics) -> None:
        """Remember a child's modelled duration (the largest ``critical_ms`` in its subtree is its own)."""
        ms = max((float(c.get("critical_ms", 0.0)) for c in metrics.values()), default=0.0)
        self.slowest_child_ms = max(self.slowest_child_ms or 0.0, ms)

    def finish(self, queries: int) -> Metrics:
        seconds = time.perf_counter() - self.started
        cpu = time.thread_time() - self.cpu_started
        # Children run in parallel on their own cores on Lambda: a node waits for its slowest one.
        critical = cpu * 1000 + (0.0 if self.slowest_child_ms is None else self.slowest_child_ms + MODEL_HOP_MS)
        own = {
            "invocations": 1,
            "cold": int(self.cold),
            "warm": int(not self.cold),
            "queries": queries,
            "seconds": seconds,
            "max_seconds": seconds,
            "billed_ms": math.ceil(seconds * 1000),
            "cpu_seconds": cpu,
            "critical_ms": critical,
            "model_ms": math.ceil(critical),
            "memory_mb": self.ctx.config.memory_mb,
            "gets": self.meter.stats.gets,
            "bytes_read": self.meter.stats.bytes_read,
            "lists": self.meter.lists,
            "retries": self.budget.retries,
            "hedges": self.budget.hedges,
            "retries_denied": self.budget.denied,
            **self.counters,
        }
        if self.ctx.emit is not None:
            self.ctx.emit(own)
        return {self.ctx.function_name: {"role": self.ctx.role, **own}}


@dataclass(frozen=True)
class _Work:
    """Queries to search, with what every request carries alongside them."""

    ref: IndexRef
    queries: NDArray[np.float32]
    filters: FilterSet
    k: int
    knobs: Mapping[str, Any]
    deadline: Deadline | None

    def take(self, rows: slice | NDArray[np.int64]) -> _Work:
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


def _check_dim(queries: NDArray[np.float32], meta: IndexMeta) -> None:
    if queries.shape[1] != meta.dim:
        raise InvalidInputError(f"queries have {queries.shape[1]} dimensions but the index has {meta.dim}")


def _functions(config: RuntimeConfig) -> int:
    """Function names whose metrics one response may carry."""
    return 2 + len(config.processor_functions)


def _invoke(inv: _Invocation, function: str, request: Any, deadline: Deadline | None) -> Any:
    """One child request (split to fit the payload limit) with time until ``deadline``, each part retried
    on transient errors."""
    config = inv.ctx.config
    parts = [
        inv.retrying(partial(call, inv.ctx.invoker, function, part, event, deadline), function)
        for part, event in split_request(request, config.payload_limit, _functions(config))
    ]
    return RESPONSES[type(request)].concat(parts)


def _child_deadline(work: _Work, margin: float) -> tuple[Deadline | None, Deadline | None]:
    """When this node stops waiting for its children, and the deadline whose remaining time they get."""
    if work.deadline is None:
        return None, None
    mine = work.deadline.earlier(margin)
    return mine, mine.earlier(margin)


def _search_share(inv: _Invocation, work: _Work) -> _Share:
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
    _check_dim(work.queries, meta)
    compiled = work.filters.compile(meta)
    config = inv.ctx.config
    wait_until, child = _child_deadline(work, config.deadline_margin)
    responses: list[ProcessorResponse | SquashError] = []

    def visit(visits: Sequence[Visit]) -> list[ProcessorResponse | SquashError]:
        requests = []
        for v in visits:
            part = replace(work.take(v.rows), knobs=v.group.knobs)
            requests.append(
                ProcessorRequest(part.ref, part.queries, part.filters, work.k, part.knobs, v.partition, v.probes)
            )
        responses.extend(
            FanOut(
                [partial(_invoke, inv, config.processor_for(r.partition), r, child) for r in requests],
                limit=config.max_fan_out,
                deadline=wait_until,
                hedge_after=config.hedge_min_seconds,
                budget=inv.budget,
            ).results()
        )
        return responses

    groups = effort_groups(meta, compiled, work.knobs)
    merged = orchestrate(meta, work.queries, compiled, work.k, groups, visit, planning=_COMPUTE)
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


def _run_node(inv: _Invocation, work: _Work, shape: TreeShape, node: int | None, level: int) -> tuple[_Share, int]:
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
        [partial(_invoke, inv, config.allocator_function, r, child_deadline) for r in children],
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


def _deadline(budget_ms: int | None, remaining_ms: int | None, arrival: float) -> Deadline | None:
    """This node's deadline: ``budget_ms`` after its ``arrival`` (`time.monotonic`), and never past the
    ``remaining_ms`` Lambda gave the invocation (None for either: no such bound)."""
    bounds = [ms for ms in (budget_ms, remaining_ms) if ms is not None]
    return Deadline.after(min(bounds) / 1000, start=arrival) if bounds else None


def coordinate(request: CoordinatorRequest, ctx: HandlerContext) -> CoordinatorResponse:
    """Answer a client's batch: pin the version, validate, run the tree, gather results and metrics."""
    inv = _Invocation(ctx, request)
    ref = inv.resolve(request.index)
    meta = inv.index(ref).meta
    # Normalise (cosine) once here; allocators and processors search exactly these vectors.
    queries = prepare_queries(request.queries, meta)
    compiled = request.filters.compile(meta)  # reject a bad filter before anything is invoked
    efforts = effort_groups(meta, compiled, request.knobs)  # and bad knobs; allocators choose the same
    # Within the functions' reserved concurrency, checked before anything is invoked.
    shape = request.shape or fit_shape(len(queries), meta.n_partitions, ctx.config)
    check_plan(shape, len(queries), meta.n_partitions, ctx.config)
    work = _Work(ref, queries, request.filters, request.k, request.knobs, inv.deadline)
    share, own = _run_node(inv, work, shape, None, 0)
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


def allocate(request: AllocatorRequest, ctx: HandlerContext) -> AllocatorResponse:
    """Search the queries of the subtree rooted at ``request.node``; children start before anything else."""
    inv = _Invocation(ctx, request)
    work = _Work(request.index, request.queries, request.filters, request.k, request.knobs, inv.deadline)
    share, own = _run_node(inv, work, request.shape, request.node, request.level)
    metrics = merge_metrics([*share.metrics, inv.finish(own)])
    return AllocatorResponse(
        share.ids, share.distances, share.stats, metrics, complete=share.complete, missing=tuple(share.missing)
    )


def process(request: ProcessorRequest, ctx: HandlerContext) -> ProcessorResponse:
    """Search one partition, loaded once per container and build and kept warm (DRE)."""
    inv = _Invocation(ctx, request)
    stored = inv.index(request.index, count_hits=False)
    meta, pid = stored.meta, request.partition
    if pid >= meta.n_partitions:
        raise InvalidInputError(f"partition {pid} does not exist; the index has {meta.n_partitions}")
    _check_dim(request.queries, meta)
    params = SearchParams.from_knobs(dict(request.knobs))
    filters = request.filters.compile(meta)
    deadline = inv.deadline
    with _COMPUTE:
        if deadline is not None:
            deadline.check(f"searching partition {pid}")
        started = time.perf_counter()
        part, hit, evicted = ctx.partitions.get(
            (request.index.uri, request.index.build, pid), lambda: PreparedPartition(stored.load_partition(pid))
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


_ROUTES: dict[str, tuple[Any, Callable[[Any, HandlerContext], Any]]] = {
    "coordinator": (CoordinatorRequest, coordinate),
    "allocator": (AllocatorRequest, allocate),
    "processor": (ProcessorRequest, process),
}


def handle(role: str, event: dict[str, Any], ctx: HandlerContext, *, remaining_ms: int | None = None) -> dict[str, Any]:
    """Validate ``event`` for ``role``, run its handler and encode the response.

    ``remaining_ms`` is the time the platform gives the invocation (Lambda's
    ``context.get_remaining_time_in_millis()``); the handler stops by then even if its budget is longer.
    """
    request_type, body = _ROUTES[role]
    _ARRIVED.clocks = (time.perf_counter(), time.thread_time(), time.monotonic(), remaining_ms)
    return body(request_type.from_event(event), ctx).to_event()
