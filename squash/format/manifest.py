"""Manifests: one msgpack document per published index version, the commit point of a build.

Object layout: ``b"SQSHMANI"``, u32 manifest format version, u32 crc32 of every other byte, then the msgpack
body. The body holds everything the planner needs except the per-row attribute codes (in the routing object
it references) and the table of partition objects; no pickle, no eval: only maps, lists, numbers, strings
and bytes, each checked on the way in.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from squash.attributes import AttributeQuantizer, AttributeSchema
from squash.errors import CorruptObjectError, InvalidInputError
from squash.format.keys import build_id_of, is_build_id
from squash.format.sections import ContainerHeader
from squash.model import IndexMeta, Metric

MAGIC = b"SQSHMANI"
MANIFEST_FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")


@dataclass(frozen=True)
class ObjectEntry:
    """A stored object a manifest refers to, pinned by its size and header checksum."""

    key: str
    size: int
    header_size: int
    header_crc32: int
    rows: int

    @classmethod
    def of(cls, key: str, header: ContainerHeader, rows: int) -> ObjectEntry:
        return cls(key, header.total_size, header.data_offset, header.crc32, rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "header_size": self.header_size,
            "header_crc32": self.header_crc32,
            "rows": self.rows,
        }


@dataclass(frozen=True)
class Manifest:
    """One published version: index metadata (all of `IndexMeta` but ``attr_codes``) and its objects."""

    version: int
    build_id: str
    created: str
    dim: int
    metric: Metric
    n_vectors: int
    vector_dtype: str
    centroids: NDArray[np.float32]
    sizes: NDArray[np.int64]
    schema: AttributeSchema
    attr_quantizer: AttributeQuantizer
    attr_histograms: NDArray[np.int64]
    params: Mapping[str, Any]
    partitions: tuple[ObjectEntry, ...]
    routing: ObjectEntry
    build: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_partitions(self) -> int:
        return len(self.partitions)

    @property
    def stored_bytes(self) -> int:
        """Bytes of the partition and routing objects (the manifest itself excluded)."""
        return sum(e.size for e in self.partitions) + self.routing.size

    def to_meta(
        self, attr_codes: tuple[NDArray[np.uint8], ...], list_centroids: tuple[NDArray[np.float32], ...]
    ) -> IndexMeta:
        return IndexMeta(
            dim=self.dim,
            metric=self.metric,
            n_vectors=self.n_vectors,
            centroids=self.centroids,
            sizes=self.sizes,
            schema=self.schema,
            attr_quantizer=self.attr_quantizer,
            attr_histograms=self.attr_histograms,
            attr_codes=attr_codes,
            list_centroids=list_centroids,
            params=self.params,
        )


def encode_manifest(m: Manifest) -> bytes:
    """Serialise a manifest with its checksum."""
    body = {
        "version": m.version,
        "build_id": m.build_id,
        "created": m.created,
        "dim": m.dim,
        "metric": m.metric.value,
        "n_vectors": m.n_vectors,
        "vector_dtype": m.vector_dtype,
        "centroids": _encode_array(m.centroids, "<f4"),
        "sizes": _encode_array(m.sizes, "<i8"),
        "schema": m.schema.to_dict(),
        "attr_quantizer": m.attr_quantizer.to_dict(),
        "attr_histograms": _encode_array(m.attr_histograms, "<i8"),
        "params": dict(m.params),
        "build": dict(m.build),
        "partitions": [e.to_dict() for e in m.partitions],
        "routing": m.routing.to_dict(),
    }
    try:
        data = msgpack.packb(body, use_bin_type=True)
    except TypeError as e:
        raise InvalidInputError(f"index parameters must be plain numbers, strings, lists or maps: {e}") from None
    head = MAGIC + struct.pack("<I", MANIFEST_FORMAT_VERSION)
    return head + struct.pack("<I", zlib.crc32(data, zlib.crc32(head))) + data


def decode_manifest(data: bytes, key: str, version: int) -> Manifest:
    """Verify and decode the manifest stored at ``key`` for ``version``."""
    if len(data) < _PREFIX.size:
        raise CorruptObjectError(f"manifest {key!r} is truncated ({len(data)} bytes)", key=key)
    magic, fmt, crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CorruptObjectError(f"manifest {key!r} has magic {magic!r}, expected {MAGIC!r}", key=key)
    if zlib.crc32(data[_PREFIX.size :], zlib.crc32(data[:12])) != crc:
        raise CorruptObjectError(f"manifest {key!r}: checksum mismatch (corrupt or truncated)", key=key)
    if fmt != MANIFEST_FORMAT_VERSION:
        raise CorruptObjectError(
            f"manifest {key!r} has format version {fmt}; this squash reads version "
            f"{MANIFEST_FORMAT_VERSION}: upgrade squash",
            key=key,
        )
    try:
        body = msgpack.unpackb(data[_PREFIX.size :], raw=False)
        manifest = _from_body(body)
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as e:
        raise CorruptObjectError(f"manifest {key!r} is malformed: {e}", key=key) from None
    if manifest.version != version:
        raise CorruptObjectError(f"manifest {key!r} says it is version {manifest.version}, not {version}", key=key)
    return manifest


def _from_body(body: Any) -> Manifest:
    if not isinstance(body, dict):
        raise TypeError("body is not a map")
    build_id = body["build_id"]
    if not is_build_id(build_id):
        raise ValueError(f"invalid build id {build_id!r}")
    partitions = tuple(_entry(e, build_id) for e in _typed(body, "partitions", list))
    routing = _entry(body["routing"], build_id)
    centroids = _decode_array(body["centroids"], "<f4")
    sizes = _decode_array(body["sizes"], "<i8")
    histograms = _decode_array(body["attr_histograms"], "<i8")
    dim, n_vectors = _typed(body, "dim", int), _typed(body, "n_vectors", int)
    p = len(partitions)
    schema = AttributeSchema.from_dict(body["schema"])
    if centroids.shape != (p, dim) or sizes.shape != (p,) or histograms.shape[:2] != (p, len(schema)):
        raise ValueError("centroids, sizes or histograms do not match the partition table")
    if [e.rows for e in partitions] != sizes.tolist() or int(sizes.sum()) != n_vectors or routing.rows != n_vectors:
        raise ValueError("partition row counts do not add up")
    if body["vector_dtype"] not in ("|u1", "<f4"):
        raise ValueError(f"unsupported vector dtype {body['vector_dtype']!r}")
    return Manifest(
        version=_typed(body, "version", int),
        build_id=build_id,
        created=_typed(body, "created", str),
        dim=dim,
        metric=Metric(body["metric"]),
        n_vectors=n_vectors,
        vector_dtype=body["vector_dtype"],
        centroids=centroids,
        sizes=sizes,
        schema=schema,
        attr_quantizer=AttributeQuantizer.from_dict(body["attr_quantizer"]),
        attr_histograms=histograms,
        params=_typed(body, "params", dict),
        partitions=partitions,
        routing=routing,
        build=_typed(body, "build", dict),
    )


def _typed(d: Mapping[str, Any], name: str, kind: type) -> Any:
    value = d[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _entry(d: Any, build_id: str) -> ObjectEntry:
    if not isinstance(d, dict) or set(d) != {"key", "size", "header_size", "header_crc32", "rows"}:
        raise ValueError(f"object entry {d!r} has the wrong fields")
    entry = ObjectEntry(**{k: _typed(d, k, str if k == "key" else int) for k in d})
    if build_id_of(entry.key) != build_id:
        raise ValueError(f"object {entry.key!r} is not part of build {build_id}")
    return entry


def _encode_array(a: NDArray[Any], dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(a.shape), "data": np.ascontiguousarray(a, dtype=dtype).tobytes()}


def _decode_array(d: Any, dtype: str) -> NDArray[Any]:
    if not isinstance(d, dict) or d.get("dtype") != dtype or not isinstance(d.get("data"), bytes):
        raise ValueError(f"expected an array of dtype {dtype}")
    shape = tuple(d["shape"])
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"invalid array shape {shape!r}")
    return np.frombuffer(d["data"], dtype=dtype).reshape(shape)
