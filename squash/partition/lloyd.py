"""Unbalanced k-means pieces: greedy k-means++ seeding, Lloyd iterations and blocked means, and `kmeans`
for the fine lists inside a partition."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError
from squash.partition.blocks import BLOCK_ROWS, check_int, check_vectors, nearest, row_blocks, sq_dists

# Lloyd stops once an iteration improves inertia by less than this fraction (the reference's tol 1e-4).
_LLOYD_TOL = 1e-4


def kmeans(
    vectors: NDArray[np.generic],
    k: int,
    *,
    seed: int = 0,
    rows_per_centroid: int = 64,
    max_iter: int = 10,
    block_rows: int = BLOCK_ROWS,
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Plain (unbalanced) k-means: centroids (k, D) float32 and the nearest centroid of every row (N,).

    For the fine lists inside a partition, where sizes need not be equal and build time matters: random
    initial centres, then at most ``max_iter`` Lloyd iterations on ``rows_per_centroid`` sampled rows per
    centre (faiss's coarse quantizers train the same way), then one assignment of every row.
    """
    x = check_vectors(vectors, "vectors")
    n = x.shape[0]
    k = check_int(k, "k", 1)
    if n < k:
        raise InvalidInputError(f"cannot form {k} clusters from {n} vectors; use k <= {n}")
    rng = np.random.default_rng(seed)
    size = min(n, rows_per_centroid * k)
    sample = np.ascontiguousarray(x[np.sort(rng.choice(n, size=size, replace=False))], dtype=np.float32)
    start = sample[rng.choice(size, size=k, replace=False)]
    centroids = lloyd(sample, start, max_iter, block_rows)
    return centroids, nearest(x, centroids, block_rows)[0]


def kmeans_plus_plus(x: NDArray[np.generic], p: int, rng: np.random.Generator, block_rows: int) -> NDArray[np.float32]:
    """Greedy k-means++: each centre is the best of 2 + log(P) D²-weighted draws (as scikit-learn)."""
    n = x.shape[0]
    trials = 2 + int(math.log(p))
    centres = np.empty((p, x.shape[1]), dtype=np.float32)
    centres[0] = x[int(rng.integers(n))]
    closest = nearest(x, centres[:1], block_rows)[1].astype(np.float64)
    for i in range(1, p):
        cumulative = np.cumsum(closest)
        if cumulative[-1] > 0:
            draws = np.searchsorted(cumulative, rng.random(trials) * cumulative[-1], side="right")
            picks = np.minimum(draws, n - 1)
        else:
            # Every row coincides with a centre already; any row will do.
            picks = rng.integers(n, size=trials)
        candidates = np.asarray(x[picks], dtype=np.float32)
        trial_d = np.empty((n, trials), dtype=np.float64)
        for sl, d in sq_dists(x, candidates, block_rows):
            trial_d[sl] = np.minimum(d, closest[sl, None])
        best = int(trial_d.sum(axis=0).argmin())
        centres[i] = candidates[best]
        closest = trial_d[:, best]
    return centres


def lloyd(
    x: NDArray[np.generic], centroids: NDArray[np.float32], max_iter: int, block_rows: int
) -> NDArray[np.float32]:
    p = len(centroids)
    previous = math.inf
    for _ in range(max_iter):
        labels, d2 = nearest(x, centroids, block_rows)
        inertia = float(d2.sum(dtype=np.float64))
        counts = np.bincount(labels, minlength=p)
        empty = np.flatnonzero(counts == 0)
        centroids = means(x, labels, p, block_rows, counts)
        if len(empty):
            # Reseed empty clusters at the rows worst served by the current centroids.
            farthest = np.argsort(-d2, kind="stable")[: len(empty)]
            centroids[empty] = np.asarray(x[np.sort(farthest)], dtype=np.float32)
        if previous - inertia <= _LLOYD_TOL * inertia:
            break
        previous = inertia
    return centroids


def means(
    x: NDArray[np.generic],
    labels: NDArray[np.int32],
    p: int,
    block_rows: int,
    counts: NDArray[np.intp] | None = None,
) -> NDArray[np.float32]:
    """Per-label means with float64 sums; labels with no rows get a zero vector."""
    if counts is None:
        counts = np.bincount(labels, minlength=p)
    sums = np.zeros((p, x.shape[1]), dtype=np.float64)
    for sl in row_blocks(x.shape[0], block_rows, x.shape[1]):
        block_labels = labels[sl]
        block = x[sl][np.argsort(block_labels, kind="stable")]
        block_counts = np.bincount(block_labels, minlength=p)
        ends = np.cumsum(block_counts)
        # One contiguous slice per label after sorting: a loop over labels, each a vectorised column sum,
        # is several times faster than np.add.at, reduceat or a one-hot product here.
        for label in np.flatnonzero(block_counts):
            sums[label] += block[ends[label] - block_counts[label] : ends[label]].sum(axis=0, dtype=np.float64)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
