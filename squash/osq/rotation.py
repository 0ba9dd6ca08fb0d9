"""KLT/PCA rotation: the one place where vectors are centred and rotated.

Convention: ``matrix`` holds the eigenvectors of the covariance as **columns**, ordered by descending
eigenvalue, and a vector is rotated as ``z = (x - mean) @ matrix``. The SQUASH reference stores the
eigenvectors as rows and multiplies by that matrix, which rotates by the transpose: distances survive
but nothing is decorrelated (see design/algorithm.md 2.1). Build and query both call :meth:`apply`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class Rotation:
    """A fitted rotation: centre by ``mean`` then multiply by ``matrix`` (D, D)."""

    mean: NDArray[np.float32]
    matrix: NDArray[np.float32]
    eigenvalues: NDArray[np.float64]

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def apply(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        """Rotate rows of ``x`` (n, D) into the decorrelated space, float32 (n, D).

        Computed in float64 and rounded once, so a row rotates to the same float32 values whether it
        arrives alone (a query) or in a block (the build): BLAS float32 kernels differ by batch size.
        """
        centred = np.asarray(x, dtype=np.float64) - self.mean.astype(np.float64)
        return (centred @ self.matrix.astype(np.float64)).astype(np.float32)

    def apply_direction(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        """Rotate without centring (for inner products: q·x = (q @ V)·z + q·mean)."""
        return (np.asarray(x, dtype=np.float64) @ self.matrix.astype(np.float64)).astype(np.float32)


def fit_klt(x: NDArray[np.floating], *, block_rows: int = _BLOCK_ROWS) -> Rotation:
    """Fit the KLT of ``x`` (n, D): mean-centred covariance in float64, ``eigh``, descending order.

    Two passes in row blocks (mean, then centred cross-products) keep float64 accuracy for data
    with a large offset and bound the extra memory to one block. Each eigenvector's sign is fixed
    (largest-magnitude component positive) so builds do not depend on the LAPACK build.
    """
    n, d = x.shape
    total = np.zeros(d, dtype=np.float64)
    for start in range(0, n, block_rows):
        total += x[start : start + block_rows].sum(axis=0, dtype=np.float64)
    mean = total / n
    cross = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, block_rows):
        block = np.asarray(x[start : start + block_rows], dtype=np.float64) - mean
        cross += block.T @ block
    eigenvalues, vectors = np.linalg.eigh(cross / n)
    order = np.argsort(eigenvalues, kind="stable")[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    vectors = vectors[:, order]
    pivot = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[pivot, np.arange(d)])
    signs[signs == 0] = 1.0
    vectors = vectors * signs
    return Rotation(
        mean=mean.astype(np.float32),
        matrix=np.ascontiguousarray(vectors, dtype=np.float32),
        eigenvalues=eigenvalues,
    )
