"""Responses: merged top-k, per-query stats and completeness, metrics; sizes and splitting to fit."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from squash.compute.base import encode_event
from squash.errors import InvalidInputError, LimitExceededError
from squash.format.keys import MAX_VERSION, is_build_id
from squash.runtime.protocol.requests import AllocatorRequest, CoordinatorRequest, ProcessorRequest, Request
from squash.runtime.protocol.wire import (
    _BYTES_PER_FUNCTION,
    _ENVELOPE_BYTES,
    _F32,
    _I64,
    PROTOCOL_VERSION,
    Metrics,
    _Event,
    _fail,
    check_metrics,
    merge_metrics,
    pack_arrays,
    unpack_arrays,
)
from squash.runtime.tree import TreeShape
from squash.search.result import STAT_FIELDS

# --- responses --------------------------------------------------------------------------------------------

_BOOL = np.dtype("|b1")
_RESULT_ARRAYS = {
    "ids": (_I64, 2),
    "distances": (_F32, 2),
    "complete": (_BOOL, 1),
    **{f"stats.{name}": (_I64, 1) for name in STAT_FIELDS},
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
            raise _fail(
                kind, "missing", f"entries must be {{partition: int >= 0, error: str, message: str}}, got {value!r}"
            )
        return cls(value["partition"], value["error"], value["message"])


@dataclass(frozen=True, eq=False)
class _Results:
    """Top-k per query (ids int64 (nq, k) padded with -1, distances float32 (nq, k)), per-query stats and
    the metrics of every function that took part, keyed by function name."""

    KIND: ClassVar[str]
    ids: NDArray[np.int64]
    distances: NDArray[np.float32]
    stats: Mapping[str, NDArray[np.int64]]
    metrics: Metrics
    # Which queries saw every partition they were routed to, and the partitions that failed (none: all).
    complete: NDArray[np.bool_] | None = field(default=None, kw_only=True)
    missing: tuple[Missing, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        kind = self.KIND
        if self.complete is None:
            object.__setattr__(self, "complete", np.ones(self.ids.shape[:1], dtype=bool))
        elif self.complete.dtype != np.bool_ or self.complete.shape != self.ids.shape[:1]:
            raise _fail(kind, "complete", f"must be bool ({self.ids.shape[0]},), got {self.complete.dtype}")
        if self.ids.dtype != np.int64 or self.ids.ndim != 2:
            raise _fail(kind, "ids", f"must be int64 (nq, k), got {self.ids.dtype} {self.ids.shape}")
        if self.distances.dtype != np.float32 or self.distances.shape != self.ids.shape:
            raise _fail(
                kind,
                "distances",
                f"must be float32 {self.ids.shape}, got {self.distances.dtype} {self.distances.shape}",
            )
        if (self.ids < -1).any() or np.isnan(self.distances).any():
            raise _fail(kind, "ids", "must be >= -1 with distances that are not NaN")
        if set(self.stats) != set(STAT_FIELDS):
            raise _fail(kind, "stats", f"must hold exactly {list(STAT_FIELDS)}, got {sorted(self.stats)}")
        for name, values in self.stats.items():
            if values.dtype != np.int64 or values.shape != self.ids.shape[:1]:
                raise _fail(kind, f"stats.{name}", f"must be int64 ({self.ids.shape[0]},)")
        check_metrics(self.metrics, kind)

    def _results_event(self) -> dict[str, Any]:
        arrays = {"ids": self.ids, "distances": self.distances, "complete": self.complete}
        arrays.update({f"stats.{name}": values for name, values in self.stats.items()})
        return {
            "squash": PROTOCOL_VERSION,
            "kind": self.KIND,
            "metrics": self.metrics,
            "missing": [m.to_json() for m in self.missing],
            "arrays": pack_arrays(arrays),
        }

    @classmethod
    def _results_fields(cls, e: _Event) -> dict[str, Any]:
        arrays = unpack_arrays(e["arrays"], cls.KIND, _RESULT_ARRAYS)
        stats = {name: arrays[f"stats.{name}"] for name in STAT_FIELDS}
        missing = e["missing"]
        if not isinstance(missing, list):
            raise _fail(cls.KIND, "missing", f"must be a list, got {type(missing).__name__}")
        return {
            "ids": arrays["ids"],
            "distances": arrays["distances"],
            "stats": stats,
            "metrics": e["metrics"],
            "complete": arrays["complete"],
            "missing": tuple(Missing.from_json(m, cls.KIND) for m in missing),
        }

    @staticmethod
    def _joined(parts: Sequence[_Results]) -> dict[str, Any]:
        """Fields of the row-wise concatenation of responses to consecutive slices of one request."""
        return {
            "ids": np.concatenate([p.ids for p in parts]),
            "distances": np.concatenate([p.distances for p in parts]),
            "stats": {name: np.concatenate([p.stats[name] for p in parts]) for name in STAT_FIELDS},
            "metrics": merge_metrics(p.metrics for p in parts),
            "complete": np.concatenate([p.complete for p in parts]),
            "missing": tuple(m for p in parts for m in p.missing),
        }


@dataclass(frozen=True, eq=False)
class ProcessorResponse(_Results):
    KIND: ClassVar[str] = "processor_response"

    def to_event(self) -> dict[str, Any]:
        return self._results_event()

    @classmethod
    def from_event(cls, event: object) -> ProcessorResponse:
        return cls(**cls._results_fields(_Event(event, cls.KIND, ("metrics", "missing", "arrays"))))

    @classmethod
    def concat(cls, parts: Sequence[ProcessorResponse]) -> ProcessorResponse:
        return cls(**cls._joined(parts))


@dataclass(frozen=True, eq=False)
class AllocatorResponse(_Results):
    KIND: ClassVar[str] = "allocator_response"

    def to_event(self) -> dict[str, Any]:
        return self._results_event()

    @classmethod
    def from_event(cls, event: object) -> AllocatorResponse:
        return cls(**cls._results_fields(_Event(event, cls.KIND, ("metrics", "missing", "arrays"))))

    @classmethod
    def concat(cls, parts: Sequence[AllocatorResponse]) -> AllocatorResponse:
        return cls(**cls._joined(parts))


@dataclass(frozen=True, eq=False)
class CoordinatorResponse(_Results):
    """Also says which index version (and build) answered and the tree that did (depth 0: no allocators)."""

    KIND: ClassVar[str] = "coordinator_response"
    version: int
    build: str
    shape: TreeShape
    recall_estimate: NDArray[np.float32]  # per query: the calibrated recall of its effort (1.0: exact)

    def __post_init__(self) -> None:
        super().__post_init__()
        estimate = self.recall_estimate
        if estimate.dtype != _F32 or estimate.shape != self.ids.shape[:1]:
            raise _fail(self.KIND, "recall_estimate", f"must be float32 ({self.ids.shape[0]},)")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or not 1 <= self.version <= MAX_VERSION:
            raise _fail(self.KIND, "version", f"must be an integer in 1..{MAX_VERSION}, got {self.version!r}")
        if not is_build_id(self.build):
            raise _fail(self.KIND, "build", f"must be a build id, got {self.build!r}")

    def to_event(self) -> dict[str, Any]:
        return {
            **self._results_event(),
            "version": self.version,
            "build": self.build,
            "branching": self.shape.branching,
            "depth": self.shape.depth,
            "estimates": pack_arrays({"recall_estimate": self.recall_estimate}),
        }

    @classmethod
    def from_event(cls, event: object) -> CoordinatorResponse:
        e = _Event(
            event, cls.KIND, ("metrics", "missing", "arrays", "version", "build", "branching", "depth", "estimates")
        )
        shape = TreeShape(e.int("branching", 1), e.int("depth", 0))
        estimate = unpack_arrays(e["estimates"], cls.KIND, {"recall_estimate": (_F32, 1)})["recall_estimate"]
        return cls(
            **cls._results_fields(e),
            version=e.int("version", 1, MAX_VERSION),
            build=e["build"],
            shape=shape,
            recall_estimate=estimate,
        )

    @classmethod
    def concat(cls, parts: Sequence[CoordinatorResponse]) -> CoordinatorResponse:
        answered = {(p.version, p.build) for p in parts}
        if len(answered) != 1:
            raise InvalidInputError(f"parts of one batch were answered by different index builds {sorted(answered)}")
        return cls(
            **cls._joined(parts),
            version=parts[0].version,
            build=parts[0].build,
            shape=parts[0].shape,
            recall_estimate=np.concatenate([p.recall_estimate for p in parts]),
        )


RESPONSES: dict[type, type[_Results]] = {
    CoordinatorRequest: CoordinatorResponse,
    AllocatorRequest: AllocatorResponse,
    ProcessorRequest: ProcessorResponse,
}


# --- sizes ------------------------------------------------------------------------------------------------


def response_bytes(n_queries: int, k: int, functions: int) -> int:
    """Upper bound on the response to ``n_queries`` queries at ``k``, with metrics of ``functions``."""
    raw = n_queries * (k * (_I64.itemsize + _F32.itemsize) + len(STAT_FIELDS) * _I64.itemsize + _BOOL.itemsize)
    return 4 * (raw + 2) // 3 + _ENVELOPE_BYTES + functions * _BYTES_PER_FUNCTION


def split_request(request: Request, limit: int, functions: int) -> list[tuple[Request, dict[str, Any]]]:
    """(part, event) pairs whose events and expected responses each fit in ``limit`` bytes of JSON.

    Splits the query batch into consecutive slices; the responses, concatenated in order, answer the
    whole request. ``functions`` bounds the function names whose metrics the response may carry.

    Raises:
        LimitExceededError: a single query's request or response alone is over the limit.
    """
    event = request.to_event()
    size = max(len(encode_event(event)), response_bytes(request.n_queries, request.k, functions))
    if size <= limit:
        return [(request, event)]
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
