"""The routing object: every partition's attribute codes in one container (magic ``b"SQSHROUT"``).

Section ``attr_codes`` (N, A) |u1 holds the rows of all partitions in partition order and ``list_centroids``
(L, D) <f4 every partition's fine-list centroids in partition order; the header meta records the partition
sizes and list counts. The planner reads it with one GET and splits both into per-partition views.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError
from squash.format.sections import ContainerHeader, pack, unpack_all

MAGIC = b"SQSHROUT"


def encode_routing(
    attr_codes: tuple[NDArray[np.uint8], ...],
    list_centroids: tuple[NDArray[np.float32], ...],
    n_attributes: int,
    dim: int,
    build_id: str,
) -> tuple[bytes, ContainerHeader]:
    """Serialise per-partition attribute codes, each (n_p, A) uint8, and list centroids, each (L_p, D)."""
    sizes = [int(c.shape[0]) for c in attr_codes]
    lists = [int(c.shape[0]) for c in list_centroids]
    codes = np.concatenate(attr_codes) if attr_codes else np.empty((0, n_attributes), np.uint8)
    centroids = np.concatenate(list_centroids) if list_centroids else np.empty((0, dim), np.float32)
    meta = {"kind": "routing", "build_id": build_id, "sizes": sizes, "lists": lists, "attributes": n_attributes}
    return pack(MAGIC, meta, {"attr_codes": codes, "list_centroids": centroids})


def decode_routing(
    data: bytes, key: str, sizes: NDArray[np.int64]
) -> tuple[ContainerHeader, tuple[NDArray[np.uint8], ...], tuple[NDArray[np.float32], ...]]:
    """Verify a routing object; split its codes and list centroids into per-partition views."""
    header, arrays = unpack_all(data, key, MAGIC)
    codes = arrays.get("attr_codes")
    centroids = arrays.get("list_centroids")
    lists = header.meta.get("lists")
    if (
        codes is None
        or codes.ndim != 2
        or header.meta.get("sizes") != sizes.tolist()
        or centroids is None
        or centroids.ndim != 2
        or not isinstance(lists, list)
        or len(lists) != len(sizes)
        or sum(lists) != centroids.shape[0]
    ):
        raise CorruptObjectError(f"routing object {key!r} does not match its manifest's partitions", key=key)
    split = tuple(np.split(centroids, np.cumsum(lists)[:-1])) if lists else ()
    return header, tuple(np.split(codes, np.cumsum(sizes)[:-1])), split
