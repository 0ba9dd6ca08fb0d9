"""Search knobs: one frozen dataclass, validated once at the edge."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from squash.errors import InvalidInputError, LimitExceededError

MAX_K = 1000


@dataclass(frozen=True)
class SearchParams:
    """Knobs of one search. Users set at most ``recall_target``: an index calibrated at build time
    (`squash.search.effort`) chooses the effort knobs per kind of query; passing any of them searches as
    told instead (benchmarks, experts), and the defaults below are then used for the others.

    Attributes:
        recall_target: the recall@k to aim for (0.5 .. 0.9999; None: the build's ``target_recall``), a
            calibrated expectation over queries like the data's own, not a per-query guarantee.
        centroid_factor: a filtered query also visits partitions whose centroid distance is within this
            factor of the nearest partition that certainly holds k matches (1.0: up to that partition).
        max_partitions: caps the partitions a filtered query adds by ``centroid_factor`` (None: no
            cap); partitions needed to hold k matches, or owning its nearest lists, are still visited.
        probe: a query scans the ``probe`` fine lists (k-means clusters of 256-768 rows) nearest to
            it over the whole index, in the partitions that own them; larger is slower and more exact.
        probe_matches: a filtered query scans further lists, nearest first, until they hold this many
            matching rows (at least k), so filtered recall holds at any selectivity.
        rerank_depth: the rows per query and partition ranked exactly on the original vectors, chosen by
            their scalar-code estimate over every dimension (at least k).
        exact_threshold: a partition expected to hold at most this many matching rows finds them all
            through its attribute posting lists instead of scanning lists; when there are at most this
            many it ranks all of them exactly (cheaper than pruning, and exact).
        exact_budget: when a filter's possible matches over the whole index number at most this, every
            partition holding one is visited and scanned exactly: selective queries become exact.
        exact: visit every partition with a possible match and refine by lower bound until the result
            provably equals brute force (slow; for verification).
    """

    centroid_factor: float = 1.0
    max_partitions: int | None = None
    probe: int = 32
    probe_matches: int = 300
    rerank_depth: int = 40
    exact_threshold: int = 2000
    exact_budget: int = 5000
    exact: bool = False
    recall_target: float | None = None

    def __post_init__(self) -> None:
        checks = [
            (
                self.recall_target is None or 0.5 <= self.recall_target <= 0.9999,
                "recall_target must be in 0.5 .. 0.9999 (or None: the index's calibrated default)",
            ),
            (self.centroid_factor >= 1.0, "centroid_factor must be >= 1.0"),
            (self.max_partitions is None or self.max_partitions >= 1, "max_partitions must be >= 1 or None"),
            (self.probe >= 1, "probe must be >= 1"),
            (self.probe_matches >= 1, "probe_matches must be >= 1"),
            (self.rerank_depth >= 1, "rerank_depth must be >= 1"),
            (self.exact_threshold >= 0, "exact_threshold must be >= 0"),
            (self.exact_budget >= 0, "exact_budget must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(f"{message}; see squash.SearchParams for the defaults")

    @classmethod
    def from_knobs(cls, knobs: dict[str, Any]) -> SearchParams:
        """Build from keyword arguments, rejecting unknown names and wrong types with a clear error."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(knobs) - set(known))
        if unknown:
            raise InvalidInputError(f"unknown search knob(s) {unknown}; known knobs: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, value in knobs.items():
            default = getattr(cls, name)
            if name == "exact":
                if not isinstance(value, bool):
                    raise InvalidInputError(f"knob 'exact' must be a bool, got {value!r}")
            elif name in ("max_partitions", "recall_target") and value is None:
                pass
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInputError(f"knob {name!r} must be a number, got {value!r}")
            elif isinstance(value, float) and not math.isfinite(value):
                raise InvalidInputError(f"knob {name!r} must be a finite number, got {value!r}")
            elif isinstance(default, int) or name == "max_partitions":
                if value != int(value):
                    raise InvalidInputError(f"knob {name!r} must be an integer, got {value!r}")
                value = int(value)
            else:
                try:
                    value = float(value)
                except OverflowError:
                    problem = f"knob {name!r} must be a finite number, got an integer past float64's range"
                    raise InvalidInputError(problem) from None
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_k(k: object) -> int:
    """Validate k (1..MAX_K)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise LimitExceededError(f"k={k} exceeds the limit of {MAX_K} results per query; ask for fewer")
    return k
