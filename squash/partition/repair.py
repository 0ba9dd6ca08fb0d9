"""The exact size repair of a nearest-centroid assignment: rows move, cheapest extra squared distance
first, until every partition size is within its bounds (step 2 of `squash.partition.balanced`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from squash.partition.blocks import nearest, nearest_k

# Each row keeps its nearest few centroids for the repair (fewer if N * 8 would pass 2^24 pairs);
# receivers further away are found with a blocked distance pass over just those rows.
_CAND_BUDGET = 1 << 24
_MAX_CANDIDATES = 8


def size_bounds(n: int, p: int, tolerance: float) -> tuple[int, int]:
    """Smallest and largest allowed partition size; never empty, always feasible (P*lo <= N <= P*hi)."""
    # The 1e-9 nudges keep float rounding from loosening a bound that is exactly an integer.
    lo = max(1, min(n // p, math.floor((1 - tolerance) * n / p + 1e-9)))
    hi = max(-(-n // p), math.ceil((1 + tolerance) * n / p - 1e-9))
    return lo, hi


def balanced_assign(
    x: NDArray[np.generic], centroids: NDArray[np.float32], lo: int, hi: int, block_rows: int
) -> NDArray[np.int32]:
    """Nearest-centroid assignment repaired so that every size is in [lo, hi]."""
    n, p = x.shape[0], len(centroids)
    k = min(p, _MAX_CANDIDATES, max(2, _CAND_BUDGET // n))
    cand_ids, cand_d = nearest_k(x, centroids, k, block_rows)
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
            choice, d_new[missing] = nearest(self.x, self.centroids[receivers], self.block_rows, rows[missing])
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
