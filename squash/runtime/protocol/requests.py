"""Requests: a batch of queries with its filters, k, search parameters and budget, for each role.

One definition per role: the batch fields every request shares live in `_Batch`, each role adds its own.
A request is validated where it enters a process (`from_event`, and `validate` for a client's batch);
one that this process built from validated parts is trusted, so it is never checked twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError, LimitExceededError
from squash.runtime.protocol.wire import (
    F32,
    I32,
    MAX_BUDGET_MS,
    MAX_DIM,
    PROTOCOL_VERSION,
    Event,
    IndexRef,
    fail,
    pack_arrays,
    unpack_arrays,
)
from squash.runtime.tree import TreeShape
from squash.search.params import SearchParams, check_k
from squash.search.queries import MAX_BATCH, FilterSet

Request = TypeVar("Request", "CoordinatorRequest", "AllocatorRequest", "ProcessorRequest")

_BATCH_FIELDS = ("budget_ms", "index", "k", "knobs", "filters", "arrays")
_QUERY_ARRAYS = {"queries": (F32, 2), "filter_of": (I32, 1)}


def _named(kind: str, field: str, check: Any, *args: Any) -> Any:
    """``check(*args)``, its error prefixed with the message kind and field."""
    try:
        return check(*args)
    except InvalidInputError as exc:
        raise type(exc)(f"{kind}: field {field!r}: {exc}") from None


def _params(knobs: object, kind: str) -> SearchParams:
    """The search parameters of a request's ``knobs``, or an error naming the field."""
    if not isinstance(knobs, Mapping) or not all(isinstance(name, str) for name in knobs):
        raise fail(kind, "knobs", "must be an object of search parameters")
    params: SearchParams = _named(kind, "knobs", SearchParams.from_knobs, dict(knobs))
    return params


@dataclass(frozen=True, eq=False)
class _Batch(ABC):
    """What every request shares: a query batch with its filters and k, sliceable by rows, and the
    milliseconds the receiver has to answer from its arrival (None: no limit)."""

    KIND: ClassVar[str]
    # Event fields of the role beyond `_BATCH_FIELDS`.
    FIELDS: ClassVar[tuple[str, ...]]
    # Whether the index version and build must be pinned (all but a client's request).
    PINNED: ClassVar[bool] = True
    index: IndexRef
    queries: NDArray[np.float32]
    filters: FilterSet
    k: int
    budget_ms: int | None = field(default=None, kw_only=True)

    @property
    def n_queries(self) -> int:
        return int(self.queries.shape[0])

    def take(self: Request, rows: slice) -> Request:
        """The same request for a contiguous range of its queries."""
        return replace(self, queries=self.queries[rows], filters=self.filters.take(rows))

    def validate(self) -> None:
        """Check the batch; raise `InvalidInputError` (`LimitExceededError` for sizes) naming the field."""
        kind, queries = self.KIND, self.queries
        if queries.dtype != np.float32 or queries.ndim != 2:
            raise fail(kind, "queries", f"must be float32 (nq, d), got {queries.dtype} {queries.shape}")
        nq, dim = queries.shape
        if not 1 <= nq <= MAX_BATCH:
            raise LimitExceededError(f"{kind}: field 'queries' must hold 1..{MAX_BATCH} queries, got {nq}")
        if not 1 <= dim <= MAX_DIM:
            raise LimitExceededError(f"{kind}: field 'queries' must have 1..{MAX_DIM} dimensions, got {dim}")
        if not np.isfinite(queries).all():
            raise fail(kind, "queries", "must be finite (no NaN or infinity)")
        if self.filters.of.shape != (nq,):
            raise fail(kind, "filter_of", f"must have one entry per query ({nq}), got {self.filters.of.shape}")
        _named(kind, "k", check_k, self.k)
        self._validate_role()

    @abstractmethod
    def _validate_role(self) -> None:
        """The checks of the role's own fields."""

    def to_event(self) -> dict[str, Any]:
        """The JSON event; ``budget_ms`` comes first, so a sender can set it in the encoded payload
        (`squash.runtime.protocol.wire.with_budget`)."""
        return {
            "budget_ms": self.budget_ms,
            "squash": PROTOCOL_VERSION,
            "kind": self.KIND,
            "index": self.index.to_json(),
            "k": self.k,
            "knobs": self._knobs_json(),
            "filters": list(self.filters.exprs),
            "arrays": pack_arrays({"queries": self.queries, "filter_of": self.filters.of}),
            **self._role_event(),
        }

    @classmethod
    def from_event(cls: type[Request], event: object) -> Request:
        """The request an event holds, fully validated."""
        e = Event(event, cls.KIND, (*_BATCH_FIELDS, *cls.FIELDS))
        arrays = unpack_arrays(e["arrays"], cls.KIND, _QUERY_ARRAYS)
        exprs, of = e["filters"], arrays["filter_of"]
        if not isinstance(exprs, list) or not exprs:
            raise fail(cls.KIND, "filters", "must be a non-empty list of filter expressions")
        if len(of) and (of.min() < 0 or of.max() >= len(exprs)):
            raise fail(cls.KIND, "arrays.filter_of", f"must index into the {len(exprs)} filters")
        request = cls(
            IndexRef.from_json(e["index"], cls.KIND, pinned=cls.PINNED),
            arrays["queries"],
            FilterSet(tuple(exprs), of),
            e.int("k", 1),
            **cls._role_fields(e),
            budget_ms=e.int("budget_ms", 1, MAX_BUDGET_MS, optional=True),
        )
        request.validate()
        return request

    @abstractmethod
    def _knobs_json(self) -> dict[str, Any]:
        """The ``knobs`` field."""

    @abstractmethod
    def _role_event(self) -> dict[str, Any]:
        """The event fields of the role (`FIELDS`)."""

    @classmethod
    @abstractmethod
    def _role_fields(cls, e: Event) -> dict[str, Any]:
        """Constructor arguments of the role's own fields, from its event."""


@dataclass(frozen=True, eq=False)
class CoordinatorRequest(_Batch):
    """A client's batch with the search knobs it passed. ``version`` None means the latest, resolved once
    and pinned for the whole tree; ``shape`` None lets the coordinator choose the tree from the batch size."""

    KIND: ClassVar[str] = "coordinator_request"
    FIELDS: ClassVar[tuple[str, ...]] = ("branching", "depth")
    PINNED: ClassVar[bool] = False
    knobs: Mapping[str, Any]
    shape: TreeShape | None = None

    def _validate_role(self) -> None:
        _params(self.knobs, self.KIND)

    def _knobs_json(self) -> dict[str, Any]:
        return dict(self.knobs)

    def _role_event(self) -> dict[str, Any]:
        shape = self.shape
        return {
            "branching": None if shape is None else shape.branching,
            "depth": None if shape is None else shape.depth,
        }

    @classmethod
    def _role_fields(cls, e: Event) -> dict[str, Any]:
        branching, depth = e.int("branching", 1, optional=True), e.int("depth", 0, optional=True)
        if (branching is None) != (depth is None):
            raise fail(cls.KIND, "branching", "and 'depth' must be given together (or both null)")
        return {"knobs": e["knobs"], "shape": None if depth is None else TreeShape(branching, depth)}


@dataclass(frozen=True, eq=False)
class AllocatorRequest(_Batch):
    """The queries of the subtree rooted at allocator ``node`` (at ``level``, 1-based) of a tree ``shape``,
    with the client's search knobs."""

    KIND: ClassVar[str] = "allocator_request"
    FIELDS: ClassVar[tuple[str, ...]] = ("branching", "depth", "node", "level")
    knobs: Mapping[str, Any]
    shape: TreeShape
    node: int
    level: int

    def _validate_role(self) -> None:
        _params(self.knobs, self.KIND)
        if not 1 <= self.level <= self.shape.depth:
            raise fail(self.KIND, "level", f"must be in 1..{self.shape.depth}, got {self.level}")
        if not 0 <= self.node < self.shape.allocators:
            raise fail(self.KIND, "node", f"must be in 0..{self.shape.allocators - 1}, got {self.node}")

    def _knobs_json(self) -> dict[str, Any]:
        return dict(self.knobs)

    def _role_event(self) -> dict[str, Any]:
        return {"branching": self.shape.branching, "depth": self.shape.depth, "node": self.node, "level": self.level}

    @classmethod
    def _role_fields(cls, e: Event) -> dict[str, Any]:
        return {
            "knobs": e["knobs"],
            "shape": TreeShape(e.int("branching", 1), e.int("depth", 1)),
            "node": e.int("node", 0),
            "level": e.int("level", 1),
        }


@dataclass(frozen=True, eq=False)
class ProcessorRequest(_Batch):
    """Search one partition for every query of the batch with ``params`` (its ``knobs`` on the wire, every
    parameter given); ``probes[i]`` fine lists for query i (>= 1)."""

    KIND: ClassVar[str] = "processor_request"
    FIELDS: ClassVar[tuple[str, ...]] = ("partition", "probes")
    params: SearchParams
    partition: int
    probes: NDArray[np.int32]

    def take(self, rows: slice) -> ProcessorRequest:
        return replace(self, queries=self.queries[rows], filters=self.filters.take(rows), probes=self.probes[rows])

    def _validate_role(self) -> None:
        probes = self.probes
        if probes.dtype != I32 or probes.shape != (self.n_queries,) or (probes < 1).any():
            raise fail(self.KIND, "probes", f"must be {self.n_queries} int32 list counts, each at least 1")

    def _knobs_json(self) -> dict[str, Any]:
        return self.params.to_dict()

    def _role_event(self) -> dict[str, Any]:
        return {"partition": self.partition, "probes": pack_arrays({"probes": self.probes})}

    @classmethod
    def _role_fields(cls, e: Event) -> dict[str, Any]:
        return {
            "params": _params(e["knobs"], cls.KIND),
            "partition": e.int("partition", 0),
            "probes": unpack_arrays(e["probes"], cls.KIND, {"probes": (I32, 1)})["probes"],
        }
