"""The routing object: every partition's attribute codes in one container (magic ``b"SQSHROUT"``).

One section ``attr_codes`` (N, A) |u1 holds the rows of all partitions in partition order; the header meta
records the partition sizes. The planner reads it with one GET and splits it into per-partition views.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError
from squash.format.sections import ContainerHeader, pack, unpack_all

MAGIC = b"SQSHROUT"


def encode_routing(
    attr_codes: tuple[NDArray[np.uint8], ...], n_attributes: int, build_id: str
) -> tuple[bytes, ContainerHeader]:
    """Serialise per-partition attribute codes, each (n_p, A) uint8."""
    sizes = [int(c.shape[0]) for c in attr_codes]
    codes = np.concatenate(attr_codes) if attr_codes else np.empty((0, n_attributes), np.uint8)
    meta = {"kind": "routing", "build_id": build_id, "sizes": sizes, "attributes": n_attributes}
    return pack(MAGIC, meta, {"attr_codes": codes})


def decode_routing(
    data: bytes, key: str, sizes: NDArray[np.int64]
) -> tuple[ContainerHeader, tuple[NDArray[np.uint8], ...]]:
    """Verify a routing object and split its codes into per-partition views for partitions of ``sizes``."""
    header, arrays = unpack_all(data, key, MAGIC)
    codes = arrays.get("attr_codes")
    if codes is None or codes.ndim != 2 or header.meta.get("sizes") != sizes.tolist():
        raise CorruptObjectError(f"routing object {key!r} does not match its manifest's partitions", key=key)
    return header, tuple(np.split(codes, np.cumsum(sizes)[:-1]))
