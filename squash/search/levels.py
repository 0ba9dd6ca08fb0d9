"""Per-partition forms of a query batch and the bound levels shared by the candidate and list scans."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from squash.model import Metric
from squash.osq import ip_lower, l2_lower, sign_codes
from squash.search.prepared import PreparedPartition


class QueryCodes:
    """Per-partition forms of a query batch: rotated coordinates, sign codes, bound tables."""

    def __init__(self, part: PreparedPartition, queries: NDArray[np.float32], metric: Metric) -> None:
        rotation = part.data.osq.rotation
        self.offset = np.zeros((len(queries), 1), dtype=np.float32)
        cells = part.cells
        if metric is Metric.IP:
            rotated = rotation.apply_direction(queries)
            q = rotated[:, cells.dims]
            self.tail = ip_lower(q, cells.lo, cells.hi)
            self.offset = (-(queries.astype(np.float64) @ rotation.mean.astype(np.float64))[:, None]).astype(np.float32)
        else:
            rotated = rotation.apply(queries)
            q = rotated[:, cells.dims]
            self.tail = l2_lower(q, cells.lo, cells.hi)
        self.prefix = rotated[:, : part.prefix_dims].astype(np.float64)
        self.prefix_norms = (self.prefix**2).sum(axis=1)
        self.signs = sign_codes(rotated)


def select_smallest(values: NDArray[np.generic], count: int) -> NDArray[np.int64]:
    """Column indices of the ``count`` smallest values in each row (unordered)."""
    if count >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    return np.argpartition(values, count - 1, axis=1)[:, :count]


def tail_bounds(part: PreparedPartition, tables: NDArray[np.float32], rows: NDArray[np.int64]) -> NDArray[np.float32]:
    """OSQ lower bounds (nq, m) over the dimensions after the prefix, from flat tables (nq, cells).

    Codes are extracted one dimension at a time (never decoding whole vectors) into one index array,
    then a single gather reads every (query, row, dimension) term.
    """
    layout = part.data.layout
    cells = part.cells
    nq, m = rows.shape
    tail = range(cells.first_dim, layout.bits.shape[0])
    index = np.empty((nq, m, len(tail)), dtype=np.int32)
    for j, dim in enumerate(tail):
        index[:, :, j] = layout.extract(part.data.segments, dim, rows)
    index += cells.offsets
    index += (np.arange(nq, dtype=np.int32) * tables.shape[1])[:, None, None]
    return tables.reshape(-1)[index].sum(axis=2, dtype=np.float32)
