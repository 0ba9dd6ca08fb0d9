"""Segment bit-packing of cell codes and dimensional extraction.

Each vector's codes are concatenated MSB-first in dimension order (``bits[d]`` bits for dimension
``d``, nothing for 0-bit dimensions) and zero-padded to whole bytes. Byte ``s`` of every vector forms
the **segment column** ``s``; storage is segment-major, shape (n_segments, n). A code may straddle
two segment columns. Extraction reads one dimension for any subset of rows with one or two gathers
and a few shifts, never decoding whole vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class SegmentLayout:
    """Where each dimension's code sits in the segment columns (precomputed once per partition)."""

    bits: NDArray[np.uint8]
    segment: NDArray[np.int64]
    offset: NDArray[np.int64]

    @classmethod
    def from_bits(cls, bits: NDArray[np.integer]) -> SegmentLayout:
        b = np.asarray(bits, dtype=np.uint8)
        starts = np.concatenate(([0], np.cumsum(b, dtype=np.int64)[:-1]))
        return cls(bits=b, segment=starts // 8, offset=starts % 8)

    @property
    def total_bits(self) -> int:
        return int(self.bits.sum(dtype=np.int64))

    @property
    def n_segments(self) -> int:
        return (self.total_bits + 7) // 8

    def pack(self, codes: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """Pack codes (n, D) uint8 into segment columns (n_segments, n) uint8."""
        n = codes.shape[0]
        out = np.zeros((self.n_segments, n), dtype=np.uint16)
        for dim in np.nonzero(self.bits)[0]:
            b, s, r = int(self.bits[dim]), int(self.segment[dim]), int(self.offset[dim])
            code = codes[:, dim].astype(np.uint16)
            spill = r + b - 8
            if spill <= 0:
                out[s] |= code << (8 - r - b)
            else:
                out[s] |= code >> spill
                out[s + 1] |= (code & ((1 << spill) - 1)) << (8 - spill)
        return out.astype(np.uint8)

    def extract(
        self, segments: NDArray[np.uint8], dim: int, rows: NDArray[np.integer] | None = None
    ) -> NDArray[np.uint8]:
        """Codes of dimension ``dim`` for ``rows`` (all rows when None), uint8."""
        b, s, r = int(self.bits[dim]), int(self.segment[dim]), int(self.offset[dim])
        if b == 0:
            return np.zeros(segments.shape[1:] if rows is None else np.shape(rows), dtype=np.uint8)
        high = segments[s] if rows is None else segments[s, rows]
        spill = r + b - 8
        if spill <= 0:
            return (high >> (8 - r - b)) & ((1 << b) - 1)
        low = segments[s + 1] if rows is None else segments[s + 1, rows]
        return ((high & ((1 << (8 - r)) - 1)) << spill) | (low >> (8 - spill))

    def unpack(self, segments: NDArray[np.uint8], rows: NDArray[np.integer] | None = None) -> NDArray[np.uint8]:
        """All codes (m, D) of ``rows``, one dimension at a time."""
        n = segments.shape[1] if rows is None else len(rows)
        codes = np.zeros((n, self.bits.shape[0]), dtype=np.uint8)
        for dim in np.nonzero(self.bits)[0]:
            codes[:, dim] = self.extract(segments, int(dim), rows)
        return codes
