"""Requests: a batch of queries with its filters, k, knobs and budget, for each role."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError, LimitExceededError
from squash.runtime.protocol.wire import (
    _F32,
    _I32,
    MAX_BUDGET_MS,
    MAX_DIM,
    PROTOCOL_VERSION,
    IndexRef,
    _Event,
    _fail,
    pack_arrays,
    unpack_arrays,
)
from squash.runtime.tree import TreeShape
from squash.search.params import SearchParams, check_k
from squash.search.queries import MAX_BATCH, FilterSet

Request = TypeVar("Request", "CoordinatorRequest", "AllocatorRequest", "ProcessorRequest")


def _decode_filters(exprs: object, of: NDArray[Any], kind: str) -> FilterSet:
    if not isinstance(exprs, list) or not exprs:
        raise _fail(kind, "filters", "must be a non-empty list of filter expressions")
    if len(of) and (of.min() < 0 or of.max() >= len(exprs)):
        raise _fail(kind, "arrays.filter_of", f"must index into the {len(exprs)} filters")
    return FilterSet(tuple(exprs), of)


def _check_queries(queries: NDArray[Any], kind: str) -> None:
    if queries.dtype != np.float32 or queries.ndim != 2:
        raise _fail(kind, "queries", f"must be float32 (nq, d), got {queries.dtype} {queries.shape}")
    nq, dim = queries.shape
    if not 1 <= nq <= MAX_BATCH:
        raise LimitExceededError(f"{kind}: field 'queries' must hold 1..{MAX_BATCH} queries, got {nq}")
    if not 1 <= dim <= MAX_DIM:
        raise LimitExceededError(f"{kind}: field 'queries' must have 1..{MAX_DIM} dimensions, got {dim}")
    if not np.isfinite(queries).all():
        raise _fail(kind, "queries", "must be finite (no NaN or infinity)")


def _check_batch(kind: str, queries: NDArray[Any], filters: FilterSet, k: int, knobs: Mapping[str, Any]) -> None:
    _check_queries(queries, kind)
    if filters.of.shape != (queries.shape[0],):
        raise _fail(kind, "filter_of", f"must have one entry per query ({queries.shape[0]}), got {filters.of.shape}")
    try:
        check_k(k)
    except InvalidInputError as exc:
        raise type(exc)(f"{kind}: field 'k': {exc}") from None
    if not isinstance(knobs, Mapping) or not all(isinstance(name, str) for name in knobs):
        raise _fail(kind, "knobs", "must be an object of search parameters")
    try:
        SearchParams.from_knobs(dict(knobs))
    except InvalidInputError as exc:
        raise type(exc)(f"{kind}: field 'knobs': {exc}") from None


_BATCH_FIELDS = ("index", "k", "knobs", "filters", "arrays", "budget_ms")
_QUERY_ARRAYS = {"queries": (_F32, 2), "filter_of": (_I32, 1)}


class _Batch:
    """What every request shares: a query batch with filters, k and search knobs, sliceable by rows."""

    KIND: ClassVar[str]
    index: IndexRef
    queries: NDArray[np.float32]
    filters: FilterSet
    k: int
    knobs: Mapping[str, Any]
    budget_ms: int | None

    @property
    def n_queries(self) -> int:
        return int(self.queries.shape[0])

    def take(self: Request, rows: slice) -> Request:
        """The same request for a contiguous range of its queries."""
        return replace(self, queries=self.queries[rows], filters=self.filters.take(rows))

    def _batch_event(self) -> dict[str, Any]:
        return {
            "squash": PROTOCOL_VERSION,
            "kind": self.KIND,
            "index": self.index.to_json(),
            "k": self.k,
            "knobs": dict(self.knobs),
            "filters": list(self.filters.exprs),
            "arrays": pack_arrays({"queries": self.queries, "filter_of": self.filters.of}),
            "budget_ms": self.budget_ms,
        }

    @classmethod
    def _batch_fields(cls, e: _Event, *, pinned: bool) -> dict[str, Any]:
        arrays = unpack_arrays(e["arrays"], cls.KIND, _QUERY_ARRAYS)
        return {
            "index": IndexRef.from_json(e["index"], cls.KIND, pinned=pinned),
            "queries": arrays["queries"],
            "filters": _decode_filters(e["filters"], arrays["filter_of"], cls.KIND),
            "k": e.int("k", 1),
            "knobs": e["knobs"],
            "budget_ms": e.int("budget_ms", 1, MAX_BUDGET_MS, optional=True),
        }


# --- requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CoordinatorRequest(_Batch):
    """A client's batch. ``version`` None means the latest, resolved once and pinned for the whole tree;
    ``shape`` None lets the coordinator choose the tree from the batch size."""

    KIND: ClassVar[str] = "coordinator_request"
    index: IndexRef
    queries: NDArray[np.float32]
    filters: FilterSet
    k: int
    knobs: Mapping[str, Any]
    shape: TreeShape | None = None
    budget_ms: int | None = field(default=None, kw_only=True)  # ms to answer in from arrival; None: no limit

    def __post_init__(self) -> None:
        _check_batch(self.KIND, self.queries, self.filters, self.k, self.knobs)

    def to_event(self) -> dict[str, Any]:
        shape = self.shape
        return {
            **self._batch_event(),
            "branching": None if shape is None else shape.branching,
            "depth": None if shape is None else shape.depth,
        }

    @classmethod
    def from_event(cls, event: object) -> CoordinatorRequest:
        e = _Event(event, cls.KIND, (*_BATCH_FIELDS, "branching", "depth"))
        branching, depth = e.int("branching", 1, optional=True), e.int("depth", 0, optional=True)
        if (branching is None) != (depth is None):
            raise _fail(cls.KIND, "branching", "and 'depth' must be given together (or both null)")
        shape = None if depth is None else TreeShape(branching, depth)
        return cls(**cls._batch_fields(e, pinned=False), shape=shape)


@dataclass(frozen=True, eq=False)
class AllocatorRequest(_Batch):
    """The queries of the subtree rooted at allocator ``node`` (at ``level``, 1-based) of a tree ``shape``."""

    KIND: ClassVar[str] = "allocator_request"
    index: IndexRef
    queries: NDArray[np.float32]
    filters: FilterSet
    k: int
    knobs: Mapping[str, Any]
    shape: TreeShape
    node: int
    level: int
    budget_ms: int | None = field(default=None, kw_only=True)  # ms to answer in from arrival; None: no limit

    def __post_init__(self) -> None:
        _check_batch(self.KIND, self.queries, self.filters, self.k, self.knobs)
        if not self.index.pinned:
            raise _fail(self.KIND, "index", "must pin the version and build")
        if not 1 <= self.level <= self.shape.depth:
            raise _fail(self.KIND, "level", f"must be in 1..{self.shape.depth}, got {self.level}")
        if not 0 <= self.node < self.shape.allocators:
            raise _fail(self.KIND, "node", f"must be in 0..{self.shape.allocators - 1}, got {self.node}")

    def to_event(self) -> dict[str, Any]:
        return {
            **self._batch_event(),
            "branching": self.shape.branching,
            "depth": self.shape.depth,
            "node": self.node,
            "level": self.level,
        }

    @classmethod
    def from_event(cls, event: object) -> AllocatorRequest:
        e = _Event(event, cls.KIND, (*_BATCH_FIELDS, "branching", "depth", "node", "level"))
        shape = TreeShape(e.int("branching", 1), e.int("depth", 1))
        return cls(**cls._batch_fields(e, pinned=True), shape=shape, node=e.int("node", 0), level=e.int("level", 1))


@dataclass(frozen=True, eq=False)
class ProcessorRequest(_Batch):
    """Search one partition for every query of the batch; ``probes[i]`` fine lists for query i (>= 1)."""

    KIND: ClassVar[str] = "processor_request"
    index: IndexRef
    queries: NDArray[np.float32]
    filters: FilterSet
    k: int
    knobs: Mapping[str, Any]
    partition: int
    probes: NDArray[np.int32]
    budget_ms: int | None = field(default=None, kw_only=True)  # ms to answer in from arrival; None: no limit

    def __post_init__(self) -> None:
        _check_batch(self.KIND, self.queries, self.filters, self.k, self.knobs)
        if not self.index.pinned:
            raise _fail(self.KIND, "index", "must pin the version and build")
        probes = self.probes
        if probes.dtype != _I32 or probes.shape != (self.n_queries,) or (probes < 1).any():
            raise _fail(self.KIND, "probes", f"must be {self.n_queries} int32 list counts, each at least 1")

    def take(self, rows: slice) -> ProcessorRequest:
        return replace(self, queries=self.queries[rows], filters=self.filters.take(rows), probes=self.probes[rows])

    def to_event(self) -> dict[str, Any]:
        return {**self._batch_event(), "partition": self.partition, "probes": pack_arrays({"probes": self.probes})}

    @classmethod
    def from_event(cls, event: object) -> ProcessorRequest:
        e = _Event(event, cls.KIND, (*_BATCH_FIELDS, "partition", "probes"))
        probes = unpack_arrays(e["probes"], cls.KIND, {"probes": (_I32, 1)})["probes"]
        return cls(**cls._batch_fields(e, pinned=True), partition=e.int("partition", 0), probes=probes)
