"""Partition objects: one `PartitionData` as a `sections` container with magic ``b"SQSHPART"``.

Sections, in this order so that everything but the raw vectors is one contiguous run (a reader that skips
the vectors issues a single ranged GET)::

    osq.mean (D,) <f4, osq.matrix (D, D) <f4, osq.eigenvalues (D,) <f8, osq.bits (D,) |u1,
    osq.edges (D, C-1) <f4, osq.lo / osq.hi / osq.rep (D, C) <f4, [osq.lloyd_iterations (D,) <i8],
    ids (n,) <i8, lists.starts (L+1,) <i8, lists.centroids (L, D) <f4,
    attr_codes (n, A) |u1, attr.<name> (n,) per attribute in schema order,
    segments (S, n) |u1, signs (n, W) |u1, vectors (n, D) |u1 or <f4

``C`` is the padded cell count 2**max(bits). The header meta records the partition id, the counts, the
attribute names in order and ``unspent_bits``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError
from squash.format.sections import ContainerHeader, pack
from squash.model import PartitionData
from squash.osq import OSQ, CellTable, Rotation

MAGIC = b"SQSHPART"

OSQ_SECTIONS = (
    "osq.mean",
    "osq.matrix",
    "osq.eigenvalues",
    "osq.bits",
    "osq.edges",
    "osq.lo",
    "osq.hi",
    "osq.rep",
)
LLOYD_SECTION = "osq.lloyd_iterations"
ATTR_PREFIX = "attr."
VECTORS = "vectors"


def attr_section(name: str) -> str:
    return ATTR_PREFIX + name


def encode_partition(part: PartitionData, build_id: str) -> tuple[bytes, ContainerHeader]:
    """Serialise one partition; returns the object bytes and its header."""
    osq = part.osq
    arrays: dict[str, NDArray[Any]] = {
        "osq.mean": osq.rotation.mean,
        "osq.matrix": osq.rotation.matrix,
        "osq.eigenvalues": osq.rotation.eigenvalues,
        "osq.bits": osq.cells.bits,
        "osq.edges": osq.cells.edges,
        "osq.lo": osq.cells.lo,
        "osq.hi": osq.cells.hi,
        "osq.rep": osq.cells.rep,
    }
    if osq.lloyd_iterations is not None:
        arrays[LLOYD_SECTION] = osq.lloyd_iterations
    arrays["ids"] = part.ids
    arrays["lists.starts"] = part.list_starts
    arrays["lists.centroids"] = part.list_centroids
    arrays["attr_codes"] = part.attr_codes
    for name, column in part.attr_raw.items():
        arrays[attr_section(name)] = column
    arrays["segments"] = part.segments
    arrays["signs"] = part.signs
    arrays[VECTORS] = part.vectors
    meta = {
        "kind": "partition",
        "build_id": build_id,
        "partition": part.partition,
        "rows": part.size,
        "dim": osq.dim,
        "attributes": list(part.attr_raw),
        "unspent_bits": int(osq.unspent_bits),
    }
    return pack(MAGIC, meta, arrays)


def decode_partition(header: ContainerHeader, arrays: Mapping[str, NDArray[Any]], key: str) -> PartitionData:
    """Rebuild a `PartitionData` from a verified header and all its sections."""
    meta = header.meta
    try:
        attributes = meta["attributes"]
        osq = OSQ(
            rotation=Rotation(arrays["osq.mean"], arrays["osq.matrix"], arrays["osq.eigenvalues"]),
            cells=CellTable(
                arrays["osq.bits"], arrays["osq.edges"], arrays["osq.lo"], arrays["osq.hi"], arrays["osq.rep"]
            ),
            unspent_bits=int(meta["unspent_bits"]),
            lloyd_iterations=arrays.get(LLOYD_SECTION),
        )
        part = PartitionData(
            partition=int(meta["partition"]),
            ids=arrays["ids"],
            osq=osq,
            segments=arrays["segments"],
            signs=arrays["signs"],
            attr_codes=arrays["attr_codes"],
            attr_raw={name: arrays[attr_section(name)] for name in attributes},
            vectors=arrays[VECTORS],
            list_starts=arrays["lists.starts"],
            list_centroids=arrays["lists.centroids"],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptObjectError(f"partition object {key!r} is missing data: {e!r}", key=key) from None
    check_partition_shapes(part, meta, key)
    return part


def check_partition_shapes(part: PartitionData, meta: Mapping[str, Any], key: str) -> None:
    """Raise `CorruptObjectError` unless the arrays agree with each other and with the header meta."""
    n, d = part.size, part.osq.dim
    expected = {
        "ids": (part.ids.shape, (meta.get("rows"),)),
        "osq.matrix": (part.osq.rotation.matrix.shape, (d, d)),
        "osq.bits": (part.osq.cells.bits.shape, (d,)),
        "segments": (part.segments.shape, (part.layout.n_segments, n)),
        "signs": (part.signs.shape[0], n),
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
    starts = part.list_starts
    if starts.ndim != 1 or starts[0] != 0 or starts[-1] != n or (np.diff(starts) < 0).any():
        raise CorruptObjectError(
            f"partition object {key!r}: section 'lists.starts' is not a non-decreasing 0..{n} sequence", key=key
        )
