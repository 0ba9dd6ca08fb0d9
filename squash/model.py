"""The in-memory shape of an index: what planners and processors read.

Builders produce these objects, the storage format serialises them, and the search engine consumes
them; none of the three needs to know how the others work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from squash.attributes import AttributeQuantizer, AttributeSchema
from squash.errors import InvalidInputError
from squash.osq import Rotation
from squash.osq.scalar import ScalarCodes


class Metric(StrEnum):
    """Distance conventions. Every returned distance is ascending-is-better.

    ``l2``: squared Euclidean. ``ip``: negated inner product. ``cosine``: 1 - cosine similarity
    (vectors are normalised at build and query time, then ranked by squared L2 = 2 * (1 - cos)).
    """

    L2 = "l2"
    IP = "ip"
    COSINE = "cosine"

    @classmethod
    def parse(cls, value: object) -> Metric:
        try:
            return cls(str(value).lower())
        except ValueError:
            raise InvalidInputError(f"unknown metric {value!r}; use one of {', '.join(m.value for m in cls)}") from None


class Rows(Protocol):
    """What the re-rank needs of the raw vectors: an (n, D) array, or rows read on demand
    (`squash.format.rows.RangedRows`), indexed by integer arrays only."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    @property
    def nbytes(self) -> int: ...

    def __getitem__(self, rows: Any) -> NDArray[Any]: ...


@dataclass(frozen=True)
class PartitionData:
    """Everything a processor needs to search one partition.

    Rows are in partition order, grouped by fine list: list ``j`` (k-means inside the partition) is
    rows ``list_starts[j]:list_starts[j + 1]`` around ``list_centroids[j]``. ``ids`` maps rows to
    global ids. ``rotation`` is the partition's KLT and ``scalar`` the one-byte-per-dimension codes of its
    rotated rows, what searches rank rows from (list scans over the ``lead`` leading dimensions alone when
    it is not 0: `squash.osq.lead`); ``vectors`` keeps the original values (uint8 data stays
    uint8) for the exact re-rank and ``vector_norms`` their squared norms; ``attr_raw`` the exact attribute
    values for the filter's exact check.
    """

    partition: int
    ids: NDArray[np.int64]
    rotation: Rotation
    scalar: ScalarCodes
    attr_codes: NDArray[np.uint8]
    attr_raw: Mapping[str, NDArray[Any]]
    vectors: Rows
    list_starts: NDArray[np.int64]
    list_centroids: NDArray[np.float32]
    vector_norms: NDArray[np.float32]
    lead: int = 0

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_lists(self) -> int:
        return int(self.list_centroids.shape[0])

    @property
    def nbytes(self) -> int:
        arrays = [
            self.ids,
            self.attr_codes,
            self.vectors,
            self.vector_norms,
            self.list_starts,
            self.list_centroids,
            *self.attr_raw.values(),
        ]
        return self.scalar.nbytes + int(sum(a.nbytes for a in arrays))


@dataclass(frozen=True)
class IndexMeta:
    """Global, small data the planner needs: routing, attribute summaries, parameters.

    ``attr_histograms`` (P, A, 256) counts attribute codes per partition, so partitions with no
    possible match are skipped without touching rows; ``attr_codes`` (one (n_p, A) array per
    partition) gives exact certain-match counts for the partitions a query may visit;
    ``list_centroids`` (one (L_p, D) array per partition) lets the planner rank every fine list.
    """

    dim: int
    metric: Metric
    n_vectors: int
    centroids: NDArray[np.float32]
    sizes: NDArray[np.int64]
    schema: AttributeSchema
    attr_quantizer: AttributeQuantizer
    attr_histograms: NDArray[np.int64]
    attr_codes: tuple[NDArray[np.uint8], ...]
    list_centroids: tuple[NDArray[np.float32], ...]
    params: Mapping[str, Any]

    @property
    def n_partitions(self) -> int:
        return int(self.centroids.shape[0])

    @cached_property
    def all_lists(self) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
        """Every fine list of the index: centroids (L, D), their squared norms (L,), owning partition (L,)."""
        counts = [c.shape[0] for c in self.list_centroids]
        centroids = (
            np.concatenate(self.list_centroids) if counts else np.zeros((0, self.dim), dtype=np.float32)
        ).astype(np.float32, copy=False)
        owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        return centroids, np.einsum("ij,ij->i", centroids, centroids), owner
