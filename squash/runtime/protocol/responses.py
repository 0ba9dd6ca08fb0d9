"""Responses: merged top-k, per-query stats and completeness, metrics; sizes and splitting to fit."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError, LimitExceededError
from squash.format.keys import MAX_VERSION, is_build_id
from squash.runtime.protocol.metrics import BYTES_PER_FUNCTION, Metrics, check_metrics, merge_metrics
from squash.runtime.protocol.requests import AllocatorRequest, CoordinatorRequest, ProcessorRequest, Request
from squash.runtime.protocol.wire import (
    ENVELOPE_BYTES,
    F32,
    I64,
    PROTOCOL_VERSION,
    Event,
    encode_event,
    fail,
    pack_arrays,
    unpack_arrays,
)
from squash.runtime.tree import TreeShape
from squash.search.result import STAT_FIELDS

# --- responses --------------------------------------------------------------------------------------------

_BOOL = np.dtype("|b1")
_RESULT_ARRAYS = {
    "ids": (I64, 2),
    "distances": (F32, 2),
    "complete": (_BOOL, 1),
    **{f"stats.{name}": (I64, 1) for name in STAT_FIELDS},
}
# Longest error message kept per unsearched partition, so failures cannot blow the payload limit.
_MISSING_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class Missing:
    """A partition that could not be searched: its number, the error's class name and message."""

    partition: int
    error: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "error": self.error, "message": self.message[:_MISSING_MESSAGE_CHARS]}

    @classmethod
    def from_json(cls, value: object, kind: str) -> Missing:
        if (
            not isinstance(value, dict)
            or set(value) != {"partition", "error", "message"}
            or isinstance(value["partition"], bool)
            or not isinstance(value["partition"], int)
            or value["partition"] < 0
            or not isinstance(value["error"], str)
            or not isinstance(value["message"], str)
        ):
            raise fail(
                kind, "missing", f"entries must be {{partition: int >= 0, error: str, message: str}}, got {value!r}"
            )
        return cls(value["partition"], value["error"], value["message"])


@dataclass(frozen=True, eq=False)
class _Results:
    """Top-k per query (ids int64 (nq, k) padded with -1, distances float32 (nq, k)), per-query stats and
    the metrics of every function that took part, keyed by function name.

    Validated where it enters a process (`from_event`); one this process built is trusted."""

    KIND: ClassVar[str]
    # Event fields beyond `_RESULT_FIELDS`.
    FIELDS: ClassVar[tuple[str, ...]] = ()
    ids: NDArray[np.int64]
    distances: NDArray[np.float32]
    stats: Mapping[str, NDArray[np.int64]]
    metrics: Metrics
    # Which queries saw every partition they were routed to, and the partitions that failed (none: all).
    complete: NDArray[np.bool_] | None = field(default=None, kw_only=True)
    missing: tuple[Missing, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        if self.complete is None:
            object.__setattr__(self, "complete", np.ones(self.ids.shape[:1], dtype=bool))

    def validate(self) -> None:
        """Check shapes, dtypes, values and metrics; raise `InvalidInputError` naming the field."""
        kind, ids = self.KIND, self.ids
        if ids.dtype != np.int64 or ids.ndim != 2:
            raise fail(kind, "ids", f"must be int64 (nq, k), got {ids.dtype} {ids.shape}")
        if self.distances.dtype != np.float32 or self.distances.shape != ids.shape:
            got = f"{self.distances.dtype} {self.distances.shape}"
            raise fail(kind, "distances", f"must be float32 {ids.shape}, got {got}")
        if (ids < -1).any() or np.isnan(self.distances).any():
            raise fail(kind, "ids", "must be >= -1 with distances that are not NaN")
        rows: list[tuple[str, NDArray[Any], np.dtype[Any]]] = [("complete", self.complete, _BOOL)]
        rows += [(f"stats.{name}", values, I64) for name, values in self.stats.items()]
        for name, values, dtype in rows:
            if values.dtype != dtype or values.shape != ids.shape[:1]:
                raise fail(kind, name, f"must be {dtype} ({ids.shape[0]},), got {values.dtype} {values.shape}")
        check_metrics(self.metrics, kind)

    def to_event(self) -> dict[str, Any]:
        arrays = {"ids": self.ids, "distances": self.distances, "complete": self.complete}
        arrays.update({f"stats.{name}": values for name, values in self.stats.items()})
        return {
            "squash": PROTOCOL_VERSION,
            "kind": self.KIND,
            "metrics": self.metrics,
            "missing": [m.to_json() for m in self.missing],
            "arrays": pack_arrays(arrays),
            **self._role_event(),
        }

    @classmethod
    def from_event(cls: type[_R], event: object) -> _R:
        """The response an event holds, fully validated."""
        e = Event(event, cls.KIND, (*_RESULT_FIELDS, *cls.FIELDS))
        arrays = unpack_arrays(e["arrays"], cls.KIND, _RESULT_ARRAYS)
        missing = e["missing"]
        if not isinstance(missing, list):
            raise fail(cls.KIND, "missing", f"must be a list, got {type(missing).__name__}")
        response = cls(
            arrays["ids"],
            arrays["distances"],
            {name: arrays[f"stats.{name}"] for name in STAT_FIELDS},
            e["metrics"],
            complete=arrays["complete"],
            missing=tuple(Missing.from_json(m, cls.KIND) for m in missing),
            **cls._role_fields(e),
        )
        response.validate()
        return response

    @classmethod
    def concat(cls: type[_R], parts: Sequence[_R]) -> _R:
        """The row-wise concatenation of responses to consecutive slices of one request."""
        return cls(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.distances for p in parts]),
            {name: np.concatenate([p.stats[name] for p in parts]) for name in STAT_FIELDS},
            merge_metrics(p.metrics for p in parts),
            complete=np.concatenate([p.complete for p in parts]),
            missing=tuple(m for p in parts for m in p.missing),
            **cls._role_joined(parts),
        )

    def _role_event(self) -> dict[str, Any]:
        """The event fields of the role (`FIELDS`); processors and allocators have none."""
        return {}

    @classmethod
    def _role_fields(cls, e: Event) -> dict[str, Any]:
        """Constructor arguments of the role's own fields, from its event."""
        return {}

    @classmethod
    def _role_joined(cls, parts: Sequence[Any]) -> dict[str, Any]:
        """Constructor arguments of the role's own fields for `concat`."""
        return {}


_R = TypeVar("_R", bound=_Results)
_ESTIMATE_ARRAYS = {"recall_estimate": (F32, 1)}
_RESULT_FIELDS = ("metrics", "missing", "arrays")


@dataclass(frozen=True, eq=False)
class ProcessorResponse(_Results):
    KIND: ClassVar[str] = "processor_response"


@dataclass(frozen=True, eq=False)
class AllocatorResponse(_Results):
    KIND: ClassVar[str] = "allocator_response"


@dataclass(frozen=True, eq=False)
class CoordinatorResponse(_Results):
    """Also says which index version (and build) answered and the tree that did (depth 0: no allocators)."""

    KIND: ClassVar[str] = "coordinator_response"
    FIELDS: ClassVar[tuple[str, ...]] = ("version", "build", "branching", "depth", "estimates")
    version: int
    build: str
    shape: TreeShape
    recall_estimate: NDArray[np.float32]  # per query: the calibrated recall of its effort (1.0: exact)

    def validate(self) -> None:
        super().validate()
        estimate = self.recall_estimate
        if estimate.dtype != F32 or estimate.shape != self.ids.shape[:1]:
            raise fail(self.KIND, "recall_estimate", f"must be float32 ({self.ids.shape[0]},)")
        if not is_build_id(self.build):
            raise fail(self.KIND, "build", f"must be a build id, got {self.build!r}")

    def _role_event(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "build": self.build,
            "branching": self.shape.branching,
            "depth": self.shape.depth,
            "estimates": pack_arrays({"recall_estimate": self.recall_estimate}),
        }

    @classmethod
    def _role_fields(cls, e: Event) -> dict[str, Any]:
        return {
            "version": e.int("version", 1, MAX_VERSION),
            "build": e["build"],
            "shape": TreeShape(e.int("branching", 1), e.int("depth", 0)),
            "recall_estimate": unpack_arrays(e["estimates"], cls.KIND, _ESTIMATE_ARRAYS)["recall_estimate"],
        }

    @classmethod
    def _role_joined(cls, parts: Sequence[Any]) -> dict[str, Any]:
        answered = {(p.version, p.build) for p in parts}
        if len(answered) != 1:
            raise InvalidInputError(f"parts of one batch were answered by different index builds {sorted(answered)}")
        return {
            "version": parts[0].version,
            "build": parts[0].build,
            "shape": parts[0].shape,
            "recall_estimate": np.concatenate([p.recall_estimate for p in parts]),
        }


RESPONSES: dict[type, type[_Results]] = {
    CoordinatorRequest: CoordinatorResponse,
    AllocatorRequest: AllocatorResponse,
    ProcessorRequest: ProcessorResponse,
}


# --- sizes ------------------------------------------------------------------------------------------------


def response_bytes(n_queries: int, k: int, functions: int) -> int:
    """Upper bound on the response to ``n_queries`` queries at ``k``, with metrics of ``functions``."""
    raw = n_queries * (k * (I64.itemsize + F32.itemsize) + len(STAT_FIELDS) * I64.itemsize + _BOOL.itemsize)
    return 4 * (raw + 2) // 3 + ENVELOPE_BYTES + functions * BYTES_PER_FUNCTION


def split_request(request: Request, limit: int, functions: int) -> list[tuple[Request, bytes]]:
    """(part, payload) pairs whose encoded events and expected responses each fit in ``limit`` bytes.

    Splits the query batch into consecutive slices; the responses, concatenated in order, answer the
    whole request. ``functions`` bounds the function names whose metrics the response may carry. Each
    part is encoded once, here: its payload is what is sent (`squash.runtime.calls.call`).

    Raises:
        LimitExceededError: a single query's request or response alone is over the limit.
    """
    payload = encode_event(request.to_event())
    size = max(len(payload), response_bytes(request.n_queries, request.k, functions))
    if size <= limit:
        return [(request, payload)]
    n = request.n_queries
    if n == 1:
        raise LimitExceededError(
            f"one query's {request.KIND} needs {size:,} bytes, over the synchronous invocation payload limit "
            f"of {limit:,} bytes (Lambda allows 6,291,456); use a smaller k or fewer filter terms"
        )
    pieces = min(n, max(2, math.ceil(size / limit)))
    bounds = [n * i // pieces for i in range(pieces + 1)]
    return [
        pair
        for lo, hi in itertools.pairwise(bounds)
        for pair in split_request(request.take(slice(lo, hi)), limit, functions)
    ]
