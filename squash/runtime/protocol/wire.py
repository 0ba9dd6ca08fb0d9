"""The envelope of every message: constants, strict JSON, packed arrays, index references, metrics."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError
from squash.format.keys import MAX_VERSION, is_build_id

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


def _fail(kind: str, field: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"{kind}: field {field!r} {problem}")


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
