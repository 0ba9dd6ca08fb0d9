"""Per-query ADC tables of lower and upper distance bounds, and their accumulation.

For squared L2 with a rotated query q' and a cell range [lo, hi] in dimension d:

    L[d, i] = max(lo - q'_d, 0, q'_d - hi)^2      U[d, i] = max(q'_d - lo, hi - q'_d)^2

and LB = sum_d L[d, c_d] <= ||x - q||^2 <= sum_d U[d, c_d] = UB because the rotation is orthogonal
and every encoded value lies in its cell's range. For inner product the quantity ranked is
-q·x = -(q @ V)·z - q·mean, bounded per dimension by the two ends of the cell range.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from squash.osq.cells import CellTable
from squash.osq.packing import SegmentLayout


def l2_lower(q: NDArray[np.float32], lo: NDArray[np.float32], hi: NDArray[np.float32]) -> NDArray[np.float32]:
    """Squared distance from query coordinates ``q`` to cell ranges [lo, hi] (broadcast); 0 inside."""
    gap = np.maximum(np.maximum(lo - q, q - hi), 0.0)
    return gap * gap


def ip_lower(q: NDArray[np.float32], lo: NDArray[np.float32], hi: NDArray[np.float32]) -> NDArray[np.float32]:
    """Lower bound of -q * z for z in [lo, hi] (broadcast): the smaller of the two ends."""
    return np.minimum(-q * lo, -q * hi)


def l2_tables(q_rot: NDArray[np.float32], cells: CellTable) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Lower and upper squared-L2 tables (nq, D, cells) for rotated queries (nq, D)."""
    q = q_rot[:, :, None]
    upper = np.maximum(q - cells.lo[None], cells.hi[None] - q)
    return l2_lower(q, cells.lo[None], cells.hi[None]), upper * upper


def representative_tables(q_rot: NDArray[np.float32], cells: CellTable) -> NDArray[np.float32]:
    """Squared-L2 tables (nq, D, cells) to each cell's representative (an estimate, not a bound)."""
    diff = cells.rep[None] - q_rot[:, :, None]
    return diff * diff


def ip_tables(q_dir: NDArray[np.float32], cells: CellTable) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Lower and upper tables (nq, D, cells) of -q'_d * z_d for direction-rotated queries."""
    q = q_dir[:, :, None]
    return ip_lower(q, cells.lo[None], cells.hi[None]), np.maximum(-q * cells.lo[None], -q * cells.hi[None])


def accumulate(
    table: NDArray[np.float32],
    segments: NDArray[np.uint8],
    layout: SegmentLayout,
    rows: NDArray[np.integer] | None = None,
) -> NDArray[np.float32]:
    """Sum ``table`` (nq, D, cells) over every dimension's code for ``rows``: (nq, m) float32.

    Dimensions with 0 bits have one cell, so their constant contribution is added without reading
    any codes. Partial sums after any prefix of dimensions are already valid lower bounds.
    """
    nq = table.shape[0]
    m = segments.shape[1] if rows is None else len(rows)
    total = np.zeros((nq, m), dtype=np.float32)
    coded = layout.bits > 0
    total += table[:, ~coded, 0].sum(axis=1, dtype=np.float32)[:, None]
    for dim in np.nonzero(coded)[0]:
        total += table[:, dim, layout.extract(segments, int(dim), rows)]
    return total
