"""The envelope of every message: constants, strict JSON, packed arrays, index references."""

from __future__ import annotations

import base64
import binascii
import json
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
# What a response holds beyond its arrays: envelope keys and ``missing`` (metrics: `metrics.BYTES_PER_FUNCTION`).
ENVELOPE_BYTES = 4096


def fail(kind: str, field: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"{kind}: field {field!r} {problem}")


# --- encoding -------------------------------------------------------------------------------------------

_NO_BUDGET = b'{"budget_ms": null'


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The payload of an event: strict JSON in UTF-8, as AWS Lambda's Invoke requires (no NaN or infinity).

    Requests are validated where they enter a process, so a failure here is a value that slipped past
    those checks; it is reported before sending rather than as Lambda's opaque
    ``InvalidRequestContentException``.
    """
    try:
        return json.dumps(event, allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise InvalidInputError(
            f"{event.get('kind', 'event')}: not strict JSON ({exc}); every number must be finite and every "
            "string valid Unicode"
        ) from None


def with_budget(payload: bytes, budget_ms: int) -> bytes:
    """An encoded request without a budget (``budget_ms`` null, its first key) with ``budget_ms`` set,
    without encoding it again: a sender sets the remaining time at each attempt."""
    if not payload.startswith(_NO_BUDGET):
        raise ValueError("with_budget needs an encoded request whose first key is a null budget_ms")
    return b'{"budget_ms": %d' % budget_ms + payload[len(_NO_BUDGET) :]


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
        raise fail(kind, "arrays", f"must be base64 text, got {type(text).__name__}")
    try:
        packed = msgpack.unpackb(base64.b64decode(text, validate=True), raw=False)
    except (binascii.Error, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise fail(kind, "arrays", f"is not base64 msgpack ({exc})") from None
    if not isinstance(packed, dict) or set(packed) != set(expected):
        names = sorted(packed) if isinstance(packed, dict) else type(packed).__name__
        raise fail(kind, "arrays", f"must hold exactly {sorted(expected)}, got {names}")
    out = {}
    for name, (dtype, ndim) in expected.items():
        item = packed[name]
        field = f"arrays.{name}"
        if not isinstance(item, dict) or set(item) != {"dtype", "shape", "data"}:
            raise fail(kind, field, "must be a map with keys dtype, shape and data")
        if item["dtype"] != dtype.str:
            raise fail(kind, field, f"must have dtype {dtype.str}, got {item['dtype']!r}")
        shape = item["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) != ndim
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise fail(kind, field, f"must have a shape of {ndim} non-negative integers, got {shape!r}")
        data = item["data"]
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            raise fail(kind, field, f"must hold {math.prod(shape) * dtype.itemsize} bytes of data for {shape}")
        out[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return out


F32 = np.dtype("<f4")
I32 = np.dtype("<i4")
I64 = np.dtype("<i8")


# --- envelope fields --------------------------------------------------------------------------------------


# Fields an event may leave out (older senders, hand-written events): absent means null.
_OPTIONAL_FIELDS = frozenset({"budget_ms"})


class Event:
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
            raise fail(kind, "squash", f"must be protocol version {PROTOCOL_VERSION}, got {event['squash']!r}")
        if event["kind"] != kind:
            raise fail(kind, "kind", f"must be {kind!r}, got {event['kind']!r}")
        self.event = event

    def __getitem__(self, name: str) -> Any:
        return self.event[name]

    def int(self, name: str, low: int, high: int | None = None, *, optional: bool = False) -> Any:
        value = self.event.get(name) if optional else self.event[name]
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise fail(self.kind, name, f"must be an integer {bounds}, got {value!r}")
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
            raise fail(kind, "index", "must be an object with exactly the keys uri, version and build")
        uri, version, build = value["uri"], value["version"], value["build"]
        if not isinstance(uri, str) or not uri:
            raise fail(kind, "index.uri", f"must be a non-empty string, got {uri!r}")
        if not pinned and version is None and build is None:
            return cls(uri)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
            need = f"an integer in 1..{MAX_VERSION}" if pinned or build is not None else "null or a positive integer"
            raise fail(kind, "index.version", f"must be {need}, got {version!r}")
        if build is None and not pinned:
            return cls(uri, version)
        if not is_build_id(build):
            raise fail(kind, "index.build", f"must be a build id such as 20250101T120000Z-0123456789ab, got {build!r}")
        return cls(uri, version, build)

    @property
    def pinned(self) -> bool:
        return self.version is not None and self.build is not None
