"""Per-dimension cells: equi-depth start, Lloyd-Max refinement, encoding.

Cells of one dimension are described by interior ``edges`` (a value ``v`` is in cell
``searchsorted(edges, v, side="right")``, the one rule used by build and query) and by the observed
minimum and maximum of the training values in each cell. Bounds use the observed ``[lo, hi]``,
which is tighter than the edges and still contains every value encoded into the cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

LLOYD_MAX_ITER = 250
LLOYD_REL_TOL = 0.005


@dataclass(frozen=True)
class CellTable:
    """Cells of every dimension, padded to ``max_cells`` columns.

    ``edges`` (D, max_cells - 1) float32 is padded with +inf, so ``searchsorted`` never yields a
    code past a dimension's last real cell; ``lo``/``hi`` (D, max_cells) float32 hold each cell's
    observed value range and ``rep`` its mean (the Lloyd-Max representative); padding cells are
    never addressed.
    """

    bits: NDArray[np.uint8]
    edges: NDArray[np.float32]
    lo: NDArray[np.float32]
    hi: NDArray[np.float32]
    rep: NDArray[np.float32]

    @property
    def max_cells(self) -> int:
        return int(self.lo.shape[1])

    def encode(self, z: NDArray[np.float32]) -> NDArray[np.uint8]:
        """Cell codes (n, D) uint8 of rotated rows ``z`` (n, D)."""
        codes = np.zeros(z.shape, dtype=np.uint8)
        for dim in np.nonzero(self.bits)[0]:
            codes[:, dim] = np.searchsorted(self.edges[dim], z[:, dim], side="right")
        return codes


def distinct_capacity(sorted_column: NDArray[np.floating]) -> int:
    """Usable bits of a column: floor(log2(distinct values)), at most 8."""
    distinct = 1 + int(np.count_nonzero(np.diff(sorted_column)))
    return min(8, int(np.floor(np.log2(distinct))))


def lloyd_max(sorted_column: NDArray[np.float64], cells: int) -> tuple[NDArray[np.float64], int]:
    """Lloyd-Max quantizer of one sorted column with ``cells`` cells.

    Returns (interior edges, iterations). Prefix sums of the values and their squares make each
    iteration O(cells log n): cell counts and sums come from ``searchsorted`` on the sorted column,
    and distortion is sum(x^2) - (sum x)^2 / count per cell, exactly. Empty cells take the midpoint
    of their interval as representative, which keeps the build a pure function of its input.
    """
    s = sorted_column
    n = s.shape[0]
    p1 = np.concatenate(([0.0], np.cumsum(s)))
    p2 = np.concatenate(([0.0], np.cumsum(s * s)))
    init = np.ceil(np.arange(1, cells) * n / cells).astype(np.int64)
    edges = np.unique(s[np.minimum(init, n - 1)])
    edges = edges[edges > s[0]]
    prev = np.inf
    iterations = 0
    for iterations in range(1, LLOYD_MAX_ITER + 1):  # noqa: B007 - the count is returned
        bounds = np.concatenate(([0], np.searchsorted(s, edges, side="left"), [n]))
        count = np.diff(bounds)
        total = p1[bounds[1:]] - p1[bounds[:-1]]
        safe = np.maximum(count, 1)
        interval = np.concatenate(([s[0]], edges, [s[-1]]))
        rep = np.where(count > 0, total / safe, (interval[:-1] + interval[1:]) / 2)
        distortion = float(np.sum(np.maximum(p2[bounds[1:]] - p2[bounds[:-1]] - total * total / safe, 0.0)))
        new_edges = (rep[:-1] + rep[1:]) / 2
        converged = np.isfinite(prev) and (prev == 0.0 or abs(prev - distortion) <= LLOYD_REL_TOL * prev)
        prev = distortion
        if converged or np.array_equal(new_edges, edges):
            break
        edges = new_edges
    return edges, iterations


def _cell_ranges(
    column: NDArray[np.float64], edges: NDArray[np.float32]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Observed (lo, hi, mean) per cell of a sorted column under float32 ``edges``.

    Ranges come from the codes encoding will produce with the float32 edges, because rounding an
    edge can move a training value into the neighbouring cell. Empty cells get their edge interval.
    """
    cells = edges.shape[0] + 1
    codes = np.searchsorted(edges, column.astype(np.float32), side="right")
    first = np.searchsorted(codes, np.arange(cells), side="left")
    stop = np.searchsorted(codes, np.arange(cells), side="right")
    filled = stop > first
    interval = np.concatenate(([column[0]], edges, [column[-1]]))
    lo = np.where(filled, column[np.minimum(first, column.size - 1)], interval[:-1])
    hi = np.where(filled, column[np.maximum(stop - 1, 0)], interval[1:])
    prefix = np.concatenate(([0.0], np.cumsum(column)))
    sums = prefix[stop] - prefix[first]
    mean = np.where(filled, sums / np.maximum(stop - first, 1), (lo + hi) / 2)
    return lo, hi, mean


def fit_cells(z: NDArray[np.float32], bits: NDArray[np.uint8]) -> tuple[CellTable, NDArray[np.int64]]:
    """Design cells for rotated data ``z`` (n, D) with ``bits`` per dimension.

    Returns the table and the Lloyd iteration count per dimension (0 for 0-bit dimensions).
    """
    d = z.shape[1]
    max_cells = 1 << int(bits.max()) if bits.size and bits.max() > 0 else 1
    edges = np.full((d, max(max_cells - 1, 0)), np.inf, dtype=np.float32)
    lo = np.zeros((d, max_cells), dtype=np.float32)
    hi = np.zeros((d, max_cells), dtype=np.float32)
    rep = np.zeros((d, max_cells), dtype=np.float32)
    iterations = np.zeros(d, dtype=np.int64)
    for dim in range(d):
        column = np.sort(z[:, dim].astype(np.float64))
        e = np.empty(0, dtype=np.float32)
        if bits[dim] > 0:
            found, iterations[dim] = lloyd_max(column, 1 << int(bits[dim]))
            e = found.astype(np.float32)
            edges[dim, : e.shape[0]] = e
        cells = e.shape[0] + 1
        lo[dim, :cells], hi[dim, :cells], rep[dim, :cells] = _cell_ranges(column, e)
    return CellTable(bits=bits, edges=edges, lo=lo, hi=hi, rep=rep), iterations
