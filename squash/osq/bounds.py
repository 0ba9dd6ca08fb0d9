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


def l2_tables(q_rot: NDArray[np.float32], cells: CellTable) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Lower and upper squared-L2 tables (nq, D, cells) for rotated queries (nq, D)."""
    q = q_rot[:, :, None]
    below = cells.lo[None] - q
    above = q - cells.hi[None]
    lower = np.maximum(np.maximum(below, above), 0.0)
    upper = np.maximum(q - cells.lo[None], cells.hi[None] - q)
    return lower * lower, upper * upper


def representative_tables(q_rot: NDArray[np.float32], cells: CellTable) -> NDArray[np.float32]:
    """Squared-L2 tables (nq, D, cells) to each cell's representative (an estimate, not a bound)."""
    diff = cells.rep[None] - q_rot[:, :, None]
    return diff * diff


def ip_tables(q_dir: NDArray[np.float32], cells: CellTable) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Lower and upper tables (nq, D, cells) of -q'_d * z_d for direction-rotated queries."""
    q = q_dir[:, :, None]
    a = -q * cells.lo[None]
    b = -q * cells.hi[None]
    return np.minimum(a, b), np.maximum(a, b)


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
