"""How many leading KLT dimensions rank a partition's rows well enough that list scans may skip the others.

On data whose variance the rotation packs into few dimensions (Fashion-MNIST: 90% in 84 of 784), ranking
scanned rows by their codes over those alone, then re-ranking more of them exactly, is faster than
estimating over every dimension (1.5x at equal recall on Fashion-MNIST). Whether the leading dimensions
rank well depends on the data, not only on its spectrum: where neighbours differ mostly in the tail, ranking
by the head caps recall whatever the effort. So the build measures it: rows of the partition stand in for
queries, and the smallest candidate count of leading dimensions whose ranking holds nearly all of each
sample's true neighbours among the rows it would re-rank is kept (0: every dimension).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from squash.osq.scalar import ScalarCodes

# Rows the leading dimensions' ranking is judged at: half of what list scans re-rank at the effort ladder's
# smallest depth (20, widened 4 times), a margin for queries less like the rows than the rows themselves.
RERANKED = 40
NEIGHBOURS = 10
# Share of the samples' true neighbours the leading dimensions' ranking must keep among RERANKED rows.
KEPT = 0.995
SAMPLES = 64
# Candidate counts, as fractions of the dimensions: fewer than a quarter saves too little to pay its pass.
FRACTIONS = (16, 8, 4)
_MIN_ROWS = 4 * RERANKED
_MIN_DIMS = 32


def leading_dims(rotated: NDArray[np.float32], scalar: ScalarCodes, seed: int = 0) -> int:
    """The leading dimensions list scans may rank ``rotated`` (n, D) rows by, from their ``scalar`` codes; 0 for
    every dimension."""
    n, d = rotated.shape
    if n < _MIN_ROWS or d < _MIN_DIMS:
        return 0
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, size=min(SAMPLES, n), replace=False)
    x = rotated.astype(np.float64)
    q = x[picked]
    exact = (x * x).sum(axis=1)[None, :] - 2.0 * (q @ x.T)
    exact[np.arange(len(picked)), picked] = np.inf  # a row is not its own neighbour
    truth = np.argpartition(exact, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
    for fraction in FRACTIONS:
        lead = d // fraction
        decoded = scalar.lo[:lead].astype(np.float64) + scalar.step[:lead].astype(np.float64) * scalar.codes[:, :lead]
        head = q[:, :lead]
        estimate = (decoded * decoded).sum(axis=1)[None, :] - 2.0 * (head @ decoded.T)
        estimate[np.arange(len(picked)), picked] = np.inf
        ranked = np.argpartition(estimate, RERANKED, axis=1)[:, :RERANKED]
        kept = np.mean([len(np.intersect1d(t, r)) for t, r in zip(truth, ranked, strict=True)]) / NEIGHBOURS
        if kept >= KEPT:
            return lead
    return 0
