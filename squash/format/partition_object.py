"""Partition objects: one `PartitionData` as a `sections` container with magic ``b"SQSHPART"``.

Sections, in this order so that everything but the raw vectors is one contiguous run (a reader that skips
the vectors issues a single ranged GET)::

    rotation.mean (D,) <f4, rotation.matrix (D, D) <f4, rotation.eigenvalues (D,) <f8,
    ids (n,) <i8, lists.starts (L+1,) <i8, lists.centroids (L, D) <f4,
    attr_codes (n, A) |u1, attr.<name> (n,) per attribute in schema order,
    scalar.lo (D,) <f4, scalar.step (D,) <f4, scalar.codes (n, D) |u1, scalar.norms (n,) <f4,
    scalar.error (n,) <f4, vectors.norms (n,) <f4, vectors.crc (n,) <u4, vectors (n, D) |u1 or <f4

``vectors.crc`` holds each raw vector's crc32, so a row read alone (`squash.format.rows`) is verified too.

The header meta records the partition id, the counts, the attribute names in order and ``lead``, the
leading dimensions list scans rank by (0: every dimension; `squash.osq.lead`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError
from squash.format.rows import row_checksums
from squash.format.sections import ContainerHeader, pack
from squash.model import PartitionData
from squash.osq import Rotation
from squash.osq.scalar import ScalarCodes

MAGIC = b"SQSHPART"

ATTR_PREFIX = "attr."
VECTORS = "vectors"
VECTOR_CHECKSUMS = "vectors.crc"
SCALAR_FIELDS = ("lo", "step", "codes", "norms", "error")


def attr_section(name: str) -> str:
    return ATTR_PREFIX + name


def encode_partition(part: PartitionData, build_id: str) -> tuple[bytes, ContainerHeader]:
    """Serialise one partition; returns the object bytes and its header."""
    arrays: dict[str, NDArray[Any]] = {
        "rotation.mean": part.rotation.mean,
        "rotation.matrix": part.rotation.matrix,
        "rotation.eigenvalues": part.rotation.eigenvalues,
        "ids": part.ids,
        "lists.starts": part.list_starts,
        "lists.centroids": part.list_centroids,
        "attr_codes": part.attr_codes,
    }
    for name, column in part.attr_raw.items():
        arrays[attr_section(name)] = column
    for name in SCALAR_FIELDS:
        arrays[f"scalar.{name}"] = getattr(part.scalar, name)
    arrays["vectors.norms"] = part.vector_norms
    arrays[VECTOR_CHECKSUMS] = row_checksums(np.asarray(part.vectors))
    arrays[VECTORS] = part.vectors
    meta = {
        "kind": "partition",
        "build_id": build_id,
        "partition": part.partition,
        "rows": part.size,
        "dim": part.rotation.dim,
        "attributes": list(part.attr_raw),
        "lead": part.lead,
    }
    return pack(MAGIC, meta, arrays)


def decode_partition(header: ContainerHeader, arrays: Mapping[str, NDArray[Any]], key: str) -> PartitionData:
    """Rebuild a `PartitionData` from a verified header and all its sections."""
    meta = header.meta
    try:
        attributes = meta["attributes"]
        part = PartitionData(
            partition=int(meta["partition"]),
            ids=arrays["ids"],
            rotation=Rotation(arrays["rotation.mean"], arrays["rotation.matrix"], arrays["rotation.eigenvalues"]),
            scalar=ScalarCodes(*(arrays[f"scalar.{name}"] for name in SCALAR_FIELDS)),
            attr_codes=arrays["attr_codes"],
            attr_raw={name: arrays[attr_section(name)] for name in attributes},
            vectors=arrays[VECTORS],
            list_starts=arrays["lists.starts"],
            list_centroids=arrays["lists.centroids"],
            vector_norms=arrays["vectors.norms"],
            lead=int(meta["lead"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptObjectError(f"partition object {key!r} is missing data: {e!r}", key=key) from None
    check_partition_shapes(part, meta, key)
    return part


def check_partition_shapes(part: PartitionData, meta: Mapping[str, Any], key: str) -> None:
    """Raise `CorruptObjectError` unless the arrays agree with each other and with the header meta."""
    n, d = part.size, part.rotation.dim
    expected = {
        "ids": (part.ids.shape, (meta.get("rows"),)),
        "rotation.mean": (part.rotation.mean.shape, (d,)),
        "rotation.matrix": (part.rotation.matrix.shape, (d, d)),
        "rotation.eigenvalues": (part.rotation.eigenvalues.shape, (d,)),
        "scalar.lo": (part.scalar.lo.shape, (d,)),
        "scalar.step": (part.scalar.step.shape, (d,)),
        "scalar.codes": (part.scalar.codes.shape, (n, d)),
        "scalar.norms": (part.scalar.norms.shape, (n,)),
        "scalar.error": (part.scalar.error.shape, (n,)),
        "vectors.norms": (part.vector_norms.shape, (n,)),
        "attr_codes": (part.attr_codes.shape, (n, len(part.attr_raw))),
        "vectors": (part.vectors.shape, (n, meta.get("dim"))),
        "lists.centroids": (part.list_centroids.shape, (part.list_starts.shape[0] - 1, d)),
    }
    expected.update({attr_section(k): (v.shape, (n,)) for k, v in part.attr_raw.items()})
    for name, (found, wanted) in expected.items():
        if found != wanted:
            raise CorruptObjectError(
                f"partition object {key!r}: section {name!r} has shape {found}, expected {wanted}", key=key
            )
    if not 0 <= part.lead <= d:
        raise CorruptObjectError(f"partition object {key!r}: lead {part.lead} is not in 0..{d}", key=key)
    starts = part.list_starts
    if starts.ndim != 1 or starts[0] != 0 or starts[-1] != n or (np.diff(starts) < 0).any():
        raise CorruptObjectError(
            f"partition object {key!r}: section 'lists.starts' is not a non-decreasing 0..{n} sequence", key=key
        )
