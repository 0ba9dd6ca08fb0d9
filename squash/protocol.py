"""The wire format between client, coordinator, allocators and processors.

Every message is a JSON object, the Lambda event or response::

    {"squash": 1, "kind": "processor_request", "index": {"uri": ..., "version": 3, "build": ...}, "k": 10, ...,
     "arrays": "<base64 of msgpack>"}

Bulk numbers never travel as JSON lists: ``arrays`` is the base64 text of one msgpack map from name to
``{"dtype": "<f4", "shape": [n, d], "data": <raw little-endian bytes>}``, which holds the query vectors, the
per-query filter index, and result ids, distances and per-query stats. That is 4/3 of the raw size, exact
for float32, and decodes with one ``numpy.frombuffer``.

Filters travel as their JSON, deduplicated: ``filters`` lists the distinct expressions and the int32 array
``filter_of`` says which one each query uses. Receivers compile them against the index schema, so a filter
is validated again where it is used; no bitmap ever crosses the wire. Every request names the index by URI,
manifest version and build id, so a rebuilt index is never served from a stale cache.

Requests may carry ``budget_ms`` (null or absent: no limit), the whole milliseconds the receiver has to
answer, counted from the moment the request reaches it: each node sets its own deadline from its arrival,
so no node depends on another machine's clock. The sender measures it when it sends
(`squash.compute.base.call`). Responses carry a per-query ``complete`` flag (bool array) and ``missing``,
the partitions that could not be searched, each ``{partition, error, message}``.

``from_event`` checks everything (known keys, JSON types, dtypes, shapes, sizes, ranges) and raises
`InvalidInputError` naming the message kind and field. `split_request` keeps each request and its expected
response under the synchronous payload limit by splitting the query batch.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError, LimitExceededError
from squash.filter import CompiledFilter
from squash.format.keys import MAX_VERSION, is_build_id
from squash.model import IndexMeta
from squash.search.params import SearchParams, check_k
from squash.search.queries import MAX_BATCH, canonical_filter, compile_filters
from squash.search.result import STAT_FIELDS
from squash.tree import TreeShape

PROTOCOL_VERSION = 1
MAX_DIM = 65_536
# Longest time budget a request may carry: one hour, far above any function's timeout (Lambda's is 15 min).
MAX_BUDGET_MS = 3_600_000
# Longest ``timeout`` a caller may give, in seconds: the longest budget a request may carry.
MAX_TIMEOUT = MAX_BUDGET_MS // 1000
ROLES = ("coordinator", "allocator", "processor")
# Per-function counters that travel up the tree; every one is summed except those in MAX_COUNTERS.
COUNTERS = (
    "invocations",  # handler runs
    "cold",  # ... that were a container's first
    "warm",
    "queries",  # queries in the function's own share (a processor: its batch); 0 for a pure coordinator
    "seconds",  # handler time, summed: billed duration
    "max_seconds",  # slowest single invocation
    "billed_ms",  # handler time rounded up to whole milliseconds per invocation, as Lambda bills it
    "cpu_seconds",  # CPU time of the handler's own thread (excludes waiting for a core, children, I/O)
    "critical_ms",  # modelled duration with a core of its own: own CPU + slowest child + one invoke hop
    "model_ms",  # critical_ms rounded up per invocation: the billed time on Lambda without local contention
    "memory_mb",  # the function's memory setting, which prices its billed time
    "partitions",  # partitions the function's own processor calls searched (a processor: 0)
    "plan_seconds",  # partition selection
    "load_seconds",  # reading and decoding index objects
    "scan_seconds",  # search_partition, of which:
    "filter_seconds",  # ... filter evaluation and list choice
    "bound_seconds",  # ... pruning levels (prefix, Hamming, OSQ bounds)
    "rerank_seconds",  # ... exact distances and top-k
    "wait_seconds",  # waiting for children and processors after the node's own work
    "gets",  # storage read requests made by the function
    "bytes_read",  # bytes those requests returned
    "lists",  # storage list requests (resolving the latest index version)
    "cache_hits",  # processors: partitions found warm; other roles: index metadata found warm
    "cache_misses",
    "evictions",  # partitions dropped to stay under the memory budget
    "retries",  # invocations and storage reads this function retried after a transient error
    "hedges",  # duplicate invocations it started for stragglers
    "retries_denied",  # retries and hedges its retry budget refused (squash.compute.retry.RetryBudget)
)
# Counters merged by maximum: a peak, or a setting that is the same for every invocation of a function.
MAX_COUNTERS = frozenset({"max_seconds", "memory_mb", "critical_ms"})
# Bounds on what a response holds beyond its arrays: metrics have one entry per function *name* (coordinator,
# allocator, processor slots), never one per invocation, so they stay small however large the tree.
_ENVELOPE_BYTES = 4096
_BYTES_PER_FUNCTION = 1024

Metrics = dict[str, dict[str, Any]]
Request = TypeVar("Request", "CoordinatorRequest", "AllocatorRequest", "ProcessorRequest")


def _fail(kind: str, field: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"{kind}: field {field!r} {problem}")


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The payload of an event: strict JSON in UTF-8, as AWS Lambda's Invoke requires (no NaN or infinity).

    Requests are validated when built, so a failure here is a value that slipped past those checks; it is
    reported before sending rather than as Lambda's opaque ``InvalidRequestContentException``.
    """
    try:
        return json.dumps(event, allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise InvalidInputError(
            f"{event.get('kind', 'event')}: not strict JSON ({exc}); every number must be finite and every "
            "string valid Unicode"
        ) from None


# --- arrays -----------------------------------------------------------------------------------------------


def pack_arrays(arrays: Mapping[str, NDArray[Any]]) -> str:
    """Base64 text of a msgpack map name -> {dtype, shape, data}, little-endian."""
    packed = {}
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        packed[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
    return base64.b64encode(msgpack.packb(packed, use_bin_type=True)).decode("ascii")


def unpack_arrays(
    text: object, kind: str, expected: Mapping[str, tuple[np.dtype[Any], int]]
) -> dict[str, NDArray[Any]]:
    """Decode `pack_arrays` output, requiring exactly the names, dtypes and ranks in ``expected``."""
    if not isinstance(text, str):
        raise _fail(kind, "arrays", f"must be base64 text, got {type(text).__name__}")
    try:
        packed = msgpack.unpackb(base64.b64decode(text, validate=True), raw=False)
    except (binascii.Error, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _fail(kind, "arrays", f"is not base64 msgpack ({exc})") from None
    if not isinstance(packed, dict) or set(packed) != set(expected):
        names = sorted(packed) if isinstance(packed, dict) else type(packed).__name__
        raise _fail(kind, "arrays", f"must hold exactly {sorted(expected)}, got {names}")
    out = {}
    for name, (dtype, ndim) in expected.items():
        item = packed[name]
        field = f"arrays.{name}"
        if not isinstance(item, dict) or set(item) != {"dtype", "shape", "data"}:
            raise _fail(kind, field, "must be a map with keys dtype, shape and data")
        if item["dtype"] != dtype.str:
            raise _fail(kind, field, f"must have dtype {dtype.str}, got {item['dtype']!r}")
        shape = item["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) != ndim
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise _fail(kind, field, f"must have a shape of {ndim} non-negative integers, got {shape!r}")
        data = item["data"]
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            raise _fail(kind, field, f"must hold {math.prod(shape) * dtype.itemsize} bytes of data for {shape}")
        out[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return out


_F32 = np.dtype("<f4")
_I32 = np.dtype("<i4")
_I64 = np.dtype("<i8")


# --- envelope fields --------------------------------------------------------------------------------------


# Fields an event may leave out (older senders, hand-written events): absent means null.
_OPTIONAL_FIELDS = frozenset({"budget_ms"})


class _Event:
    """One incoming event: checks the envelope, then hands out fields, naming the message in every error."""

    def __init__(self, event: object, kind: str, fields: Iterable[str]) -> None:
        self.kind = kind
        if not isinstance(event, dict):
            raise InvalidInputError(f"{kind}: the event must be a JSON object, got {type(event).__name__}")
        allowed = {"squash", "kind", *fields}
        unknown, missing = sorted(set(event) - allowed), sorted(allowed - set(event) - _OPTIONAL_FIELDS)
        if unknown:
            raise InvalidInputError(f"{kind}: unknown field(s) {unknown}; expected {sorted(allowed)}")
        if missing:
            raise InvalidInputError(f"{kind}: missing field(s) {missing}")
        if event["squash"] != PROTOCOL_VERSION or isinstance(event["squash"], bool):
            raise _fail(kind, "squash", f"must be protocol version {PROTOCOL_VERSION}, got {event['squash']!r}")
        if event["kind"] != kind:
            raise _fail(kind, "kind", f"must be {kind!r}, got {event['kind']!r}")
        self.event = event

    def __getitem__(self, name: str) -> Any:
        return self.event[name]

    def int(self, name: str, low: int, high: int | None = None, *, optional: bool = False) -> Any:
        value = self.event.get(name) if optional else self.event[name]
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise _fail(self.kind, name, f"must be an integer {bounds}, got {value!r}")
        return value


# --- shared request parts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexRef:
    """Where the index lives and which published manifest every node must search.

    ``version`` None means the latest. ``build`` is the build id of that manifest: versions restart at 1 when
    an index is deleted and built again at the same address, so caches are keyed by the build, which never
    repeats. The coordinator pins both before it invokes anything; allocators and processors require both.
    """

    uri: str
    version: int | None = None
    build: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"uri": self.uri, "version": self.version, "build": self.build}

    @classmethod
    def from_json(cls, value: object, kind: str, *, pinned: bool) -> IndexRef:
        if not isinstance(value, dict) or set(value) != {"uri", "version", "build"}:
            raise _fail(kind, "index", "must be an object with exactly the keys uri, version and build")
        uri, version, build = value["uri"], value["version"], value["build"]
        if not isinstance(uri, str) or not uri:
            raise _fail(kind, "index.uri", f"must be a non-empty string, got {uri!r}")
        if not pinned and version is None and build is None:
            return cls(uri)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
            need = f"an integer in 1..{MAX_VERSION}" if pinned or build is not None else "null or a positive integer"
            raise _fail(kind, "index.version", f"must be {need}, got {version!r}")
        if build is None and not pinned:
            return cls(uri, version)
        if not is_build_id(build):
            raise _fail(kind, "index.build", f"must be a build id such as 20250101T120000Z-0123456789ab, got {build!r}")
        return cls(uri, version, build)

    @property
    def pinned(self) -> bool:
        return self.version is not None and self.build is not None


@dataclass(frozen=True, eq=False)
class FilterSet:
    """One filter per query, deduplicated: distinct JSON expressions and the index of each query's one."""

    exprs: tuple[Any, ...]
    of: NDArray[np.int32]

    @classmethod
    def from_user(cls, filter: Any, n_queries: int) -> FilterSet:
        """None, one filter for every query, or a sequence of one filter per query (as `Index.search`)."""
        if isinstance(filter, Sequence) and not isinstance(filter, str | bytes):
            if len(filter) != n_queries:
                raise InvalidInputError(
                    f"got {len(filter)} filters for {n_queries} queries; pass one filter for all queries or "
                    "one per query"
                )
            exprs: list[Any] = []
            seen: dict[str, int] = {}
            of = np.empty(n_queries, dtype=np.int32)
            for i, expr in enumerate(filter):
                # Round-trip through JSON so the sender holds exactly what receivers will see.
                key = canonical_filter(expr)
                if key not in seen:
                    seen[key] = len(exprs)
                    exprs.append(json.loads(key))
                of[i] = seen[key]
            return cls(tuple(exprs), of)
        return cls((json.loads(canonical_filter(filter)),), np.zeros(n_queries, dtype=np.int32))

    def per_query(self) -> list[Any]:
        return [self.exprs[i] for i in self.of]

    def compile(self, meta: IndexMeta) -> list[CompiledFilter | None]:
        """One compiled filter per query, against ``meta``'s schema; equal filters share one object."""
        # Each distinct expression once: compiling per query would re-serialise it for every query.
        distinct = compile_filters(list(self.exprs), len(self.exprs), meta)
        return [distinct[i] for i in self.of]

    def take(self, rows: slice | NDArray[np.int64]) -> FilterSet:
        """The filters of some queries, keeping only the expressions they use."""
        used, of = np.unique(self.of[rows], return_inverse=True)
        return FilterSet(tuple(self.exprs[i] for i in used), of.astype(np.int32).reshape(-1))

    @classmethod
    def decode(cls, exprs: object, of: NDArray[Any], kind: str) -> FilterSet:
        if not isinstance(exprs, list) or not exprs:
            raise _fail(kind, "filters", "must be a non-empty list of filter expressions")
        if len(of) and (of.min() < 0 or of.max() >= len(exprs)):
            raise _fail(kind, "arrays.filter_of", f"must index into the {len(exprs)} filters")
        return cls(tuple(exprs), of)


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
            "filters": FilterSet.decode(e["filters"], arrays["filter_of"], cls.KIND),
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


# --- metrics ----------------------------------------------------------------------------------------------


def check_metrics(metrics: object, kind: str) -> None:
    """Metrics map function name -> {"role": one of ROLES, counter: non-negative number, ...}."""
    if not isinstance(metrics, dict):
        raise _fail(kind, "metrics", "must be an object keyed by function name")
    for function, counters in metrics.items():
        field = f"metrics.{function}"
        if not isinstance(counters, dict) or counters.get("role") not in ROLES:
            raise _fail(kind, field, f"must be an object with a role in {ROLES}")
        unknown = sorted(set(counters) - {"role", *COUNTERS})
        if unknown:
            raise _fail(kind, field, f"has unknown counter(s) {unknown}")
        for name, value in counters.items():
            if name != "role" and (isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0):
                raise _fail(kind, f"{field}.{name}", f"must be a non-negative number, got {value!r}")


def merge_metrics(parts: Iterable[Metrics]) -> Metrics:
    """Sum per-function counters (max for `MAX_COUNTERS`)."""
    out: Metrics = {}
    for metrics in parts:
        for function, counters in metrics.items():
            into = out.setdefault(function, {"role": counters["role"]})
            for name, value in counters.items():
                if name in MAX_COUNTERS:
                    into[name] = max(into.get(name, 0), value)
                elif name != "role":
                    into[name] = into.get(name, 0) + value
    return out


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
