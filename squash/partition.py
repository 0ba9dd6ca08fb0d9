"""Balanced k-means: split N vectors into P partitions whose sizes stay within ±tolerance of N/P.

Build-time only (design/algorithm.md section 4); imports only NumPy.

1. Train centroids on a row sample: greedy k-means++ (on at most 256 rows per centre), Lloyd iterations,
   then up to ten *balanced* Lloyd iterations (balanced assignment, then means). These move the centroids
   to where balanced partitions want them, so the final nearest-centroid cells are nearly balanced already,
   even when the natural clusters are very unequal, and they raise neighbour locality (on Fashion-MNIST,
   P = 40: top-10 neighbours in the nearest 3 partitions 0.950 without them, 0.973 with ten).
2. Assign every row to its nearest centroid, then repair the sizes exactly: rows move out of oversized
   partitions into partitions with room, then into undersized partitions from partitions above the lower
   bound, each time the rows whose move costs the least extra squared distance first (the regret order of
   the design notes). Each round fills a receiver or meets the demand, so the bounds always hold.

Per-partition prices (argmin of d² + λ_p, adjusted towards N/P) were tried in place of step 2's nearest
assignment: on SIFT and Fashion-MNIST they gave the same locality, a higher total squared distance and
slower builds, and they stalled on very unequal clusters, so the repair alone does the balancing.

Final centroids are the means of the balanced partitions; queries route by them. Output is deterministic
for a seed (on one machine and BLAS build), and distances are computed in float32 row blocks so extra memory
is bounded by the sample, a block and a few small arrays per row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError

_BLOCK_ROWS = 65_536
# Most elements in one block of rows or of distances (64 MB of float32): wide data or large P shrink it.
_DIST_BUDGET = 1 << 24
# Each row keeps its nearest few centroids for the repair (fewer if N * 8 would pass 2^24 pairs);
# receivers further away are found with a blocked distance pass over just those rows.
_CAND_BUDGET = 1 << 24
_MAX_CANDIDATES = 8
# Largest training sample (elements) kept as one float32 copy (512 MB).
_SAMPLE_BUDGET = 1 << 27
_BALANCED_LLOYD_ITERS = 10
_INIT_ROWS_PER_CENTROID = 256
# Lloyd stops once an iteration improves inertia by less than this fraction (the reference's tol 1e-4).
_LLOYD_TOL = 1e-4
_ROWS_PER_PARTITION = 100_000
_MAX_DEFAULT_PARTITIONS = 1_000


@dataclass(frozen=True)
class Partitioning:
    """Result of :func:`balanced_kmeans`: centroids (P, D) float32 (the means of the partitions), the
    partition id of every row (N,) int32 and the partition sizes (P,) int64."""

    centroids: NDArray[np.float32]
    assignment: NDArray[np.int32]
    sizes: NDArray[np.int64]


def default_partitions(n: int) -> int:
    """A partition count for ``n`` vectors: ``round(n / 100_000)`` clamped to ``[1, min(n, 1000)]``.

    About 100k vectors per partition gives P = 10 at one million vectors, the reference setting; the cap
    keeps the number of processor functions deployable.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InvalidInputError(f"n must be a positive integer number of vectors; got {n!r}")
    return int(min(max(1, round(n / _ROWS_PER_PARTITION)), n, _MAX_DEFAULT_PARTITIONS))


def balanced_kmeans(
    vectors: NDArray[np.generic],
    n_partitions: int,
    *,
    seed: int = 0,
    tolerance: float = 0.10,
    sample_size: int | None = 100_000,
    max_iter: int = 30,
    block_rows: int = _BLOCK_ROWS,
) -> Partitioning:
    """Partition the rows of ``vectors`` (N, D) into ``n_partitions`` balanced k-means partitions.

    Every partition holds between ``max(1, floor((1 - tolerance) N / P))`` and ``ceil((1 + tolerance) N / P)``
    rows, guaranteed for any N >= P. Centroids are trained on ``sample_size`` random rows (None: all rows)
    with at most ``max_iter`` Lloyd iterations (stopping once inertia improves by less than 1e-4) and up to
    10 balanced ones; every row is then assigned under the size constraint.
    ``vectors`` may be any real dtype (float32, float64, uint8, ...) or a memory map; work is done in
    float32 blocks of at most ``block_rows`` rows. The same input and ``seed`` give identical output.
    """
    x = _check_vectors(vectors, "vectors")
    n = x.shape[0]
    p = _check_int(n_partitions, "n_partitions", 1)
    if n < p:
        raise InvalidInputError(
            f"cannot split {n} vectors into {p} partitions: every partition needs at least one vector; "
            f"use n_partitions <= {n} (default_partitions(n) picks one)"
        )
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float | np.floating) or not 0 < tolerance < 1:
        raise InvalidInputError(f"tolerance must be a number strictly between 0 and 1 (0.10 = ±10%); got {tolerance!r}")
    if sample_size is not None and _check_int(sample_size, "sample_size", 1) < p:
        raise InvalidInputError(
            f"sample_size ({sample_size}) is smaller than n_partitions ({p}); use a larger sample_size "
            "(at least 40 rows per partition is sensible) or None for all rows"
        )
    max_iter = _check_int(max_iter, "max_iter", 1)
    block_rows = _check_int(block_rows, "block_rows", 1)

    rng = np.random.default_rng(seed)
    if sample_size is None or sample_size >= n:
        sample = x
    else:
        sample = x[np.sort(rng.choice(n, size=sample_size, replace=False))]
    if sample.size <= _SAMPLE_BUDGET:
        # Training passes over the sample dozens of times; convert it once rather than per block.
        sample = np.ascontiguousarray(sample, dtype=np.float32)
    seeds = sample
    if len(sample) > _INIT_ROWS_PER_CENTROID * p:
        # k-means++ reads every row once per centre; 256 rows per centre seed as well (faiss's default
        # training subsample) and Lloyd then runs on the whole sample.
        seeds = sample[np.sort(rng.choice(len(sample), size=_INIT_ROWS_PER_CENTROID * p, replace=False))]
    centroids = _lloyd(sample, _kmeans_plus_plus(seeds, p, rng, block_rows), max_iter, block_rows)

    lo, hi = _size_bounds(len(sample), p, tolerance)
    labels = None
    for _ in range(_BALANCED_LLOYD_ITERS):
        previous, labels = labels, _balanced_assign(sample, centroids, lo, hi, block_rows)
        if previous is not None and np.array_equal(previous, labels):
            break
        centroids = _means(sample, labels, p, block_rows)

    lo, hi = _size_bounds(n, p, tolerance)
    assignment = _balanced_assign(x, centroids, lo, hi, block_rows)
    return Partitioning(
        centroids=_means(x, assignment, p, block_rows),
        assignment=assignment,
        sizes=np.bincount(assignment, minlength=p).astype(np.int64),
    )


def kmeans(
    vectors: NDArray[np.generic],
    k: int,
    *,
    seed: int = 0,
    rows_per_centroid: int = 64,
    max_iter: int = 10,
    block_rows: int = _BLOCK_ROWS,
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Plain (unbalanced) k-means: centroids (k, D) float32 and the nearest centroid of every row (N,).

    For the fine lists inside a partition, where sizes need not be equal and build time matters: random
    initial centres, then at most ``max_iter`` Lloyd iterations on ``rows_per_centroid`` sampled rows per
    centre (faiss's coarse quantizers train the same way), then one assignment of every row.
    """
    x = _check_vectors(vectors, "vectors")
    n = x.shape[0]
    k = _check_int(k, "k", 1)
    if n < k:
        raise InvalidInputError(f"cannot form {k} clusters from {n} vectors; use k <= {n}")
    rng = np.random.default_rng(seed)
    size = min(n, rows_per_centroid * k)
    sample = np.ascontiguousarray(x[np.sort(rng.choice(n, size=size, replace=False))], dtype=np.float32)
    start = sample[rng.choice(size, size=k, replace=False)]
    centroids = _lloyd(sample, start, max_iter, block_rows)
    return centroids, _nearest(x, centroids, block_rows)[0]


def assign_to_centroids(
    vectors: NDArray[np.generic], centroids: NDArray[np.generic], block_rows: int = _BLOCK_ROWS
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Nearest centroid of every row by squared L2: ids (N,) int32 and squared distances (N,) float32.

    Rows are processed in blocks so memory is O(block_rows x P); ties go to the lower centroid id.
    """
    x = _check_vectors(vectors, "vectors")
    c = _check_vectors(centroids, "centroids")
    if c.shape[1] != x.shape[1]:
        raise InvalidInputError(
            f"vectors have {x.shape[1]} dimensions but centroids have {c.shape[1]}; they must match"
        )
    return _nearest(x, np.asarray(c, dtype=np.float32), _check_int(block_rows, "block_rows", 1))


def _check_vectors(vectors: NDArray[np.generic], name: str) -> NDArray[np.generic]:
    x = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidInputError(
            f"{name} must be a non-empty 2-D array (n, d); got shape {x.shape}. "
            "Reshape a single vector with v.reshape(1, -1)."
        )
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InvalidInputError(f"{name} must hold real numbers (float32, float64, uint8, ...); got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        for sl in _row_blocks(x.shape[0], _BLOCK_ROWS, x.shape[1]):
            # Check after the float32 cast: float64 values beyond float32's range become inf there.
            with np.errstate(over="ignore"):
                bad = ~np.isfinite(np.asarray(x[sl], dtype=np.float32)).all(axis=1)
            if bad.any():
                row = sl.start + int(np.argmax(bad))
                raise InvalidInputError(
                    f"{name} row {row} is not finite in float32 (NaN, inf or beyond ±3.4e38); "
                    "drop or fix such rows before partitioning"
                )
    return x


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _size_bounds(n: int, p: int, tolerance: float) -> tuple[int, int]:
    """Smallest and largest allowed partition size; never empty, always feasible (P*lo <= N <= P*hi)."""
    # The 1e-9 nudges keep float rounding from loosening a bound that is exactly an integer.
    lo = max(1, min(n // p, math.floor((1 - tolerance) * n / p + 1e-9)))
    hi = max(-(-n // p), math.ceil((1 + tolerance) * n / p - 1e-9))
    return lo, hi


def _row_blocks(n: int, block_rows: int, width: int) -> Iterator[slice]:
    step = max(1, min(block_rows, _DIST_BUDGET // max(width, 1)))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _sq_dists(
    x: NDArray[np.generic],
    centroids: NDArray[np.float32],
    block_rows: int,
    rows: NDArray[np.intp] | None = None,
) -> Iterator[tuple[slice, NDArray[np.float32]]]:
    """Squared distances from ``x`` (or its ``rows``) to ``centroids``, one row block at a time."""
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    n = x.shape[0] if rows is None else len(rows)
    for sl in _row_blocks(n, block_rows, max(len(centroids), x.shape[1])):
        xb = np.asarray(x[sl] if rows is None else x[rows[sl]], dtype=np.float32)
        d = xb @ centroids.T
        d *= -2.0
        d += np.einsum("ij,ij->i", xb, xb)[:, None]
        d += c_sq
        # |x|² - 2x·c + |c|² can dip below zero by rounding.
        np.maximum(d, 0.0, out=d)
        yield sl, d


def _nearest(
    x: NDArray[np.generic],
    centroids: NDArray[np.float32],
    block_rows: int,
    rows: NDArray[np.intp] | None = None,
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    n = x.shape[0] if rows is None else len(rows)
    ids = np.empty(n, dtype=np.int32)
    d2 = np.empty(n, dtype=np.float32)
    for sl, d in _sq_dists(x, centroids, block_rows, rows):
        best = d.argmin(axis=1)
        ids[sl] = best
        d2[sl] = d[np.arange(len(best)), best]
    return ids, d2


def _nearest_k(
    x: NDArray[np.generic], centroids: NDArray[np.float32], k: int, block_rows: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """The ``k`` nearest centroids of every row, nearest first: ids (N, k) int32, squared distances."""
    n, p = x.shape[0], len(centroids)
    ids = np.empty((n, k), dtype=np.int32)
    dists = np.empty((n, k), dtype=np.float32)
    for sl, d in _sq_dists(x, centroids, block_rows):
        if k < p:
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
            dk = np.take_along_axis(d, part, axis=1)
        else:
            part = np.broadcast_to(np.arange(p), d.shape)
            dk = d
        order = np.argsort(dk, axis=1, kind="stable")
        ids[sl] = np.take_along_axis(part, order, axis=1)
        dists[sl] = np.take_along_axis(dk, order, axis=1)
    return ids, dists


def _kmeans_plus_plus(x: NDArray[np.generic], p: int, rng: np.random.Generator, block_rows: int) -> NDArray[np.float32]:
    """Greedy k-means++: each centre is the best of 2 + log(P) D²-weighted draws (as scikit-learn)."""
    n = x.shape[0]
    trials = 2 + int(math.log(p))
    centres = np.empty((p, x.shape[1]), dtype=np.float32)
    centres[0] = x[int(rng.integers(n))]
    closest = _nearest(x, centres[:1], block_rows)[1].astype(np.float64)
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
        for sl, d in _sq_dists(x, candidates, block_rows):
            trial_d[sl] = np.minimum(d, closest[sl, None])
        best = int(trial_d.sum(axis=0).argmin())
        centres[i] = candidates[best]
        closest = trial_d[:, best]
    return centres


def _lloyd(
    x: NDArray[np.generic], centroids: NDArray[np.float32], max_iter: int, block_rows: int
) -> NDArray[np.float32]:
    p = len(centroids)
    previous = math.inf
    for _ in range(max_iter):
        labels, d2 = _nearest(x, centroids, block_rows)
        inertia = float(d2.sum(dtype=np.float64))
        counts = np.bincount(labels, minlength=p)
        empty = np.flatnonzero(counts == 0)
        centroids = _means(x, labels, p, block_rows, counts)
        if len(empty):
            # Reseed empty clusters at the rows worst served by the current centroids.
            farthest = np.argsort(-d2, kind="stable")[: len(empty)]
            centroids[empty] = np.asarray(x[np.sort(farthest)], dtype=np.float32)
        if previous - inertia <= _LLOYD_TOL * inertia:
            break
        previous = inertia
    return centroids


def _means(
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
    for sl in _row_blocks(x.shape[0], block_rows, x.shape[1]):
        block_labels = labels[sl]
        block = x[sl][np.argsort(block_labels, kind="stable")]
        block_counts = np.bincount(block_labels, minlength=p)
        ends = np.cumsum(block_counts)
        # One contiguous slice per label after sorting: a loop over labels, each a vectorised column sum,
        # is several times faster than np.add.at, reduceat or a one-hot product here.
        for label in np.flatnonzero(block_counts):
            sums[label] += block[ends[label] - block_counts[label] : ends[label]].sum(axis=0, dtype=np.float64)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _balanced_assign(
    x: NDArray[np.generic], centroids: NDArray[np.float32], lo: int, hi: int, block_rows: int
) -> NDArray[np.int32]:
    """Nearest-centroid assignment repaired so that every size is in [lo, hi]."""
    n, p = x.shape[0], len(centroids)
    k = min(p, _MAX_CANDIDATES, max(2, _CAND_BUDGET // n))
    cand_ids, cand_d = _nearest_k(x, centroids, k, block_rows)
    assignment = cand_ids[:, 0].copy()
    sizes = np.bincount(assignment, minlength=p)
    fix = _Repair(x, centroids, cand_ids, cand_d, assignment, cand_d[:, 0].copy(), sizes, block_rows)
    while (sizes > hi).any():
        fix.move(give=sizes - hi, take=hi - sizes)
    while (sizes < lo).any():
        fix.move(give=sizes - lo, take=lo - sizes)
    return assignment


@dataclass
class _Repair:
    """State of the exact size repair; :meth:`move` updates assignment, d_own and sizes in place."""

    x: NDArray[np.generic]
    centroids: NDArray[np.float32]
    cand_ids: NDArray[np.int32]
    cand_d: NDArray[np.float32]
    assignment: NDArray[np.int32]
    d_own: NDArray[np.float32]
    sizes: NDArray[np.intp]
    block_rows: int

    def move(self, give: NDArray[np.intp], take: NDArray[np.intp]) -> None:
        """One round: rows leave partitions with ``give`` > 0 for partitions with ``take`` > 0, at most that
        many out of and into each, smallest increase in squared distance first (ties by row id).

        Each row bids for its nearest receiver. A receiver that turns bids away is full afterwards; if none
        does, every giver met its quota, or for the lower bound (where givers hold more rows than they may
        give) ran out of it. So each round closes a partition or ends the demand: at most P + 1 rounds.
        """
        p = len(self.sizes)
        rows = np.flatnonzero(give[self.assignment] > 0)
        # The nearest receiver is usually among a row's candidates; compute distances for the others only.
        is_receiver = take[self.cand_ids[rows]] > 0
        first = is_receiver.argmax(axis=1)
        target = self.cand_ids[rows, first]
        d_new = self.cand_d[rows, first]
        missing = np.flatnonzero(~is_receiver[np.arange(len(rows)), first])
        if len(missing):
            receivers = np.flatnonzero(take > 0)
            choice, d_new[missing] = _nearest(self.x, self.centroids[receivers], self.block_rows, rows[missing])
            target[missing] = receivers[choice]
        extra = d_new - self.d_own[rows]
        source = self.assignment[rows]
        keep = _rank_in_group(source, extra, p) < give[source]
        rows, target, d_new, extra = rows[keep], target[keep], d_new[keep], extra[keep]
        keep = _rank_in_group(target, extra, p) < take[target]
        self.assignment[rows[keep]] = target[keep]
        self.d_own[rows[keep]] = d_new[keep]
        self.sizes[:] = np.bincount(self.assignment, minlength=p)


def _rank_in_group(groups: NDArray[np.intp], cost: NDArray[np.float32], p: int) -> NDArray[np.intp]:
    """Rank of each element within its group by ascending cost; the stable sort breaks ties by position."""
    order = np.lexsort((cost, groups))
    counts = np.bincount(groups, minlength=p)
    starts = np.cumsum(counts) - counts
    ranks = np.empty(len(groups), dtype=np.intp)
    ranks[order] = np.arange(len(groups)) - starts[groups[order]]
    return ranks
