"""Scalar codes: one byte per rotated dimension, the compact form list scans rank candidates from.

Each dimension of the KLT-rotated vectors is cut into 256 equal cells between its smallest and largest
value in the partition, so a code decodes linearly, ``x̂ = lo + step * c``. That makes the estimated
distance of every row of a list to every query that scans it one float32 matrix product over the codes
(`squash.search.codescan`), using every dimension: on flat spectra (sentence embeddings) the leading
dimensions hold too little of the distance to rank by. Each row also keeps ``error = |z - x̂|``, so
``|sqrt(estimate) - distance| <= error``: the estimate comes with a bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

LEVELS = 255
_BLOCK_ROWS = 16_384


@dataclass(frozen=True)
class ScalarCodes:
    """Codes (n, D) of rotated vectors with their decode (``lo``, ``step``), the squared norms of the
    decoded rows (``norms``) and each row's distance to its decoded form (``error``)."""

    lo: NDArray[np.float32]
    step: NDArray[np.float32]
    codes: NDArray[np.uint8]
    norms: NDArray[np.float32]
    error: NDArray[np.float32]

    @classmethod
    def encode(cls, rotated: NDArray[np.float32]) -> ScalarCodes:
        """Fit the cells to ``rotated`` (n, D) and encode it."""
        n, d = rotated.shape
        if n == 0:
            lo = np.zeros(d, dtype=np.float32)
            step = np.ones(d, dtype=np.float32)
        else:
            lo = rotated.min(axis=0).astype(np.float32)
            span = rotated.max(axis=0).astype(np.float64) - lo
            # A constant dimension still needs a positive step (its codes are all 0 and decode exactly), and
            # a span below float32's smallest normal step keeps that step (its cells are then not filled).
            step = np.where(span > 0, np.maximum(span / LEVELS, np.finfo(np.float32).tiny), 1.0).astype(np.float32)
        codes = np.empty((n, d), dtype=np.uint8)
        norms = np.empty(n, dtype=np.float32)
        error = np.empty(n, dtype=np.float32)
        for start in range(0, n, _BLOCK_ROWS):
            block = rotated[start : start + _BLOCK_ROWS].astype(np.float64)
            c = np.clip(np.rint((block - lo) / step), 0, LEVELS)
            codes[start : start + len(block)] = c
            decoded = lo + step * c
            norms[start : start + len(block)] = (decoded**2).sum(axis=1)
            error[start : start + len(block)] = np.sqrt(((block - decoded) ** 2).sum(axis=1))
        return cls(lo, step, codes, norms, error)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.lo, self.step, self.codes, self.norms, self.error)))
