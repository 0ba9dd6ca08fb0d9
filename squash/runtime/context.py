"""One function container's lasting state (`HandlerContext`) and one invocation's meter, deadline and
retry budget (`Invocation`): what every role's handler runs with."""

from __future__ import annotations

import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.access import check_allowed
from squash.compute.base import Invoker
from squash.compute.retry import Deadline, RetryBudget, RetryPolicy, retrying
from squash.config import RuntimeConfig
from squash.errors import InvalidInputError
from squash.format import StoredIndex, find_manifest, index_changed, open_index
from squash.model import IndexMeta
from squash.runtime.dre import LruCache, MeteredStore
from squash.runtime.protocol import (
    AllocatorRequest,
    CoordinatorRequest,
    IndexRef,
    Metrics,
    ProcessorRequest,
    own_metrics,
)
from squash.search.prepared import PreparedPartition
from squash.storage import ObjectStore, open_store

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
COMPUTE = threading.BoundedSemaphore(os.cpu_count() or 1)
# When the event being handled on this thread arrived (perf_counter, thread CPU, monotonic) and the time
# Lambda had left for it (ms, None off Lambda): each invocation runs on one thread.
ARRIVED = threading.local()
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


class Invocation:
    """One invocation's meter (timings, cache outcomes and the storage requests it made itself), its
    deadline and its retry budget."""

    def __init__(self, ctx: HandlerContext, request: CoordinatorRequest | AllocatorRequest | ProcessorRequest) -> None:
        # Timed from the event's arrival in `handle`, so decoding the request counts as on Lambda.
        arrived = getattr(ARRIVED, "clocks", None)
        ARRIVED.clocks = None
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
        return own_metrics(self.ctx.function_name, self.ctx.role, own)


def _deadline(budget_ms: int | None, remaining_ms: int | None, arrival: float) -> Deadline | None:
    """This node's deadline: ``budget_ms`` after its ``arrival`` (`time.monotonic`), and never past the
    ``remaining_ms`` Lambda gave the invocation (None for either: no such bound)."""
    bounds = [ms for ms in (budget_ms, remaining_ms) if ms is not None]
    return Deadline.after(min(bounds) / 1000, start=arrival) if bounds else None


def check_dim(queries: NDArray[np.float32], meta: IndexMeta) -> None:
    if queries.shape[1] != meta.dim:
        raise InvalidInputError(f"queries have {queries.shape[1]} dimensions but the index has {meta.dim}")
