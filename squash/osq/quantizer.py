"""OSQ: the fitted quantizer of one partition (rotation, bits, cells, packing)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from squash.osq.bits import allocate_bits, total_bit_budget
from squash.osq.cells import CellTable, distinct_capacity, fit_cells
from squash.osq.packing import SegmentLayout
from squash.osq.rotation import Rotation, fit_klt
from squash.osq.signs import sign_codes
from squash.validation import as_vectors

_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class EncodedVectors:
    """OSQ codes of a set of rows: segment columns (n_segments, n) and sign rows (n, W)."""

    segments: NDArray[np.uint8]
    signs: NDArray[np.uint8]


@dataclass(frozen=True)
class OSQ:
    """A fitted OSQ quantizer.

    ``unspent_bits`` is the part of the budget no dimension could use (all saturated);
    ``lloyd_iterations`` records the Lloyd-Max iterations per dimension.
    """

    rotation: Rotation
    cells: CellTable
    unspent_bits: int = 0
    lloyd_iterations: NDArray[np.int64] | None = None

    @property
    def layout(self) -> SegmentLayout:
        return SegmentLayout.from_bits(self.cells.bits)

    @property
    def dim(self) -> int:
        return self.rotation.dim

    @classmethod
    def fit(cls, x: NDArray[np.floating], *, bits_per_dim: float = 4.0) -> OSQ:
        """Fit rotation, bit allocation and Lloyd-Max cells to ``x`` (n, D)."""
        x = as_vectors(x)
        budget = total_bit_budget(bits_per_dim, x.shape[1])
        rotation = fit_klt(x)
        z = rotation.apply(x)
        capacity = np.array([distinct_capacity(np.sort(z[:, d])) for d in range(z.shape[1])])
        allocation = allocate_bits(rotation.eigenvalues, budget, capacity=capacity)
        cells, iterations = fit_cells(z, allocation.bits)
        return cls(rotation, cells, allocation.unspent, iterations)

    def encode(self, x: NDArray[np.floating]) -> EncodedVectors:
        """Encode rows of ``x`` that the quantizer was fitted on (their values lie in its cells)."""
        layout = self.layout
        n = x.shape[0]
        segments = np.empty((layout.n_segments, n), dtype=np.uint8)
        signs = []
        for start in range(0, n, _BLOCK_ROWS):
            z = self.rotation.apply(x[start : start + _BLOCK_ROWS])
            segments[:, start : start + z.shape[0]] = layout.pack(self.cells.encode(z))
            signs.append(sign_codes(z))
        return EncodedVectors(segments=segments, signs=np.concatenate(signs))
