"""Search results as a struct of arrays, with per-query statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

# Per-query counters, summed over the partitions a query visited.
STAT_FIELDS = (
    "partitions",  # partitions visited
    "filtered",  # candidates that satisfy the filter (exactly)
    "estimated",  # rows chosen by their scalar-code estimate for the exact re-rank (list scans, candidate sets)
    "reranked",  # candidates handed to the exact re-rank (after the safe pruning of exact scans)
    "exact_scans",  # partitions answered by an exact scan of all their candidates (or holding no match)
    "unvisited",  # partitions that may hold a match but were not visited (set by the planner's caller)
)


# Processor time by activity (seconds per partition search), reported up the tree as ``<name>_seconds``.
LEVEL_TIMES = (
    "filter",  # filter evaluation: posting lists, code states, exact checks, choosing lists
    "estimate",  # scalar-code estimates of scanned lists and candidate sets, and choosing the rows to re-rank
    "rerank",  # exact distances (float32 screen, float64 pass) and top-k
)


def empty_stats(nq: int) -> dict[str, NDArray[np.int64]]:
    return {name: np.zeros(nq, dtype=np.int64) for name in STAT_FIELDS}


def provably_exact(stats: dict[str, NDArray[np.int64]]) -> NDArray[np.bool_]:
    """Queries that visited every partition that may hold a match and ranked all matches exactly there."""
    return (stats["unvisited"] == 0) & (stats["exact_scans"] == stats["partitions"])


def calibrated_estimates(estimates: NDArray[np.float32], stats: dict[str, NDArray[np.int64]]) -> NDArray[np.float32]:
    """Recall estimates with 1.0 for the queries whose search was provably exact."""
    return np.where(provably_exact(stats), np.float32(1.0), estimates).astype(np.float32)


@dataclass(frozen=True)
class Hits:
    """One query's row of a `SearchResult` (``result[i]``, or `Client.query`'s answer): ``ids`` int64 (k,)
    padded with -1 and ``distances`` float32 (k,) ascending, views into the batch's arrays; ``stats`` (the
    :data:`STAT_FIELDS` counters of this query), the run's ``info``, and the calibrated ``recall_estimate`` of
    its effort (1.0 when ``exact``: provably equal to brute force)."""

    ids: NDArray[np.int64]
    distances: NDArray[np.float32]
    stats: dict[str, int]
    info: dict[str, float]
    complete: bool = True
    recall_estimate: float = float("nan")
    exact: bool = False

    def __len__(self) -> int:
        """Results found (k unless fewer vectors match)."""
        return int((self.ids >= 0).sum())


@dataclass
class SearchResult:
    """``ids`` int64 (nq, k) padded with -1 and ``distances`` float32 (nq, k), ascending, padded with inf.

    Distances are exact: squared L2 for ``l2``, the negated inner product for ``ip``, and
    1 - cosine similarity for ``cosine``. ``stats`` maps each name in :data:`STAT_FIELDS` to an
    int64 array (nq,); ``info`` carries run-level figures (timings, invocations, bytes read).
    ``complete`` bool (nq,) says which queries searched every partition they were routed to; only
    ``Client.query_batch(..., allow_partial=True)`` can return False (None: all complete).
    ``recall_estimate`` float32 (nq,) is the recall@k the index's calibration expects of each query's
    effort (1.0 where exact; NaN where effort knobs were passed and no calibration applies).
    """

    ids: NDArray[np.int64]
    distances: NDArray[np.float32]
    stats: dict[str, NDArray[np.int64]]
    info: dict[str, float] = field(default_factory=dict)
    complete: NDArray[np.bool_] | None = None
    recall_estimate: NDArray[np.float32] | None = None

    @property
    def counts(self) -> NDArray[np.int64]:
        """Results found per query (k unless fewer vectors match)."""
        return (self.ids >= 0).sum(axis=1)

    @property
    def exact(self) -> NDArray[np.bool_]:
        """Per query: the result provably equals brute force (every partition that may hold a match was
        visited and ranked all its matches exactly)."""
        return provably_exact(self.stats)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> Hits:
        """The row view of query ``i`` (negative counts from the end; iterating yields every row in order)."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"a SearchResult row is indexed by an int, got {type(i).__name__}")
        ids = self.ids[i]  # IndexError past the end, which also ends iteration
        stats = {name: int(values[i]) for name, values in self.stats.items()}
        return Hits(
            ids,
            self.distances[i],
            stats,
            self.info,
            True if self.complete is None else bool(self.complete[i]),
            float("nan") if self.recall_estimate is None else float(self.recall_estimate[i]),
            bool(provably_exact(stats)),
        )
