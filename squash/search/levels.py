"""Per-partition forms of a query batch and the bound levels shared by the candidate and list scans."""

from __future__ import annotations

from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from squash.model import Metric
from squash.osq import ip_lower, l2_lower, sign_codes
from squash.search.prepared import PreparedPartition


class QueryCodes:
    """Per-partition forms of a query batch, each computed on first use.

    List scans need only the prefix (a (nq, D) x (D, d0) product); the full rotation, the sign codes
    and the OSQ tail tables (nq x every cell of every tail dimension: 12,544 per query on
    Fashion-MNIST) are paid only by the candidate-set levels that read them.
    """

    def __init__(self, part: PreparedPartition, queries: NDArray[np.float32], metric: Metric) -> None:
        self.part = part
        self.queries = queries
        self.metric = metric

    @cached_property
    def prefix(self) -> NDArray[np.float64]:
        lead = self.part.lead
        rotated = lead.apply_direction(self.queries) if self.metric is Metric.IP else lead.apply(self.queries)
        return rotated.astype(np.float64)

    @cached_property
    def prefix_norms(self) -> NDArray[np.float64]:
        return (self.prefix**2).sum(axis=1)

    @cached_property
    def lifted(self) -> NDArray[np.float64]:
        """(nq, d0 + 2) such that ``lifted @ part.lifted.T`` is the prefix bound: [-2q, 1, |q|^2] for
        L2 and cosine (|x|^2 - 2 q.x + |q|^2), [-q, 0, 0] for ``ip`` (the bound's constant is dropped)."""
        if self.metric is Metric.IP:
            zeros = np.zeros((len(self.queries), 2))
            return np.hstack([-self.prefix, zeros])
        return np.hstack([-2.0 * self.prefix, np.ones((len(self.queries), 1)), self.prefix_norms[:, None]])

    @cached_property
    def rotated(self) -> NDArray[np.float32]:
        rotation = self.part.data.osq.rotation
        return rotation.apply_direction(self.queries) if self.metric is Metric.IP else rotation.apply(self.queries)

    @cached_property
    def signs(self) -> NDArray[np.uint8]:
        return sign_codes(self.rotated)

    @cached_property
    def tail(self) -> NDArray[np.float32]:
        """Flat OSQ bound tables (nq, cells) over the dimensions after the prefix."""
        cells = self.part.cells
        q = self.rotated[:, cells.dims]
        return ip_lower(q, cells.lo, cells.hi) if self.metric is Metric.IP else l2_lower(q, cells.lo, cells.hi)

    @cached_property
    def weights(self) -> NDArray[np.float32]:
        """(nq, D) float32 ``w`` such that a row's estimated score is ``alpha * norm + constant + w @ code``
        (`squash.osq.scalar`): ``-2 q∘step`` for L2 and cosine (``alpha = 1``), ``-q∘step`` for ``ip``
        (``alpha = 0``), over the rotated query ``q``."""
        scale = -1.0 if self.metric is Metric.IP else -2.0
        step = self.part.scalar.step.astype(np.float64)
        return (scale * self.rotated.astype(np.float64) * step).astype(np.float32)

    @cached_property
    def constant(self) -> NDArray[np.float64]:
        """(nq,) the per-query term of the estimated score: ``|q|^2 - 2 q.lo`` for L2 and cosine,
        ``-q.lo - q.mean`` for ``ip``. Row-wise sums, so a query's terms never depend on its batch-mates."""
        q = self.rotated.astype(np.float64)
        lo = self.part.scalar.lo.astype(np.float64)
        if self.metric is Metric.IP:
            mean = self.part.data.osq.rotation.mean.astype(np.float64)
            return -(q * lo).sum(axis=1) - (self.queries.astype(np.float64) * mean).sum(axis=1)
        return (q * q).sum(axis=1) - 2.0 * (q * lo).sum(axis=1)

    @cached_property
    def offset(self) -> NDArray[np.float32]:
        """Per-query constant of the bound: -q.mean for ``ip`` (q.x = (q @ V).z + q.mean), else 0."""
        if self.metric is not Metric.IP:
            return np.zeros((len(self.queries), 1), dtype=np.float32)
        mean = self.part.data.osq.rotation.mean.astype(np.float64)
        return (-(self.queries.astype(np.float64) @ mean)[:, None]).astype(np.float32)


def select_smallest(values: NDArray[np.generic], count: int) -> NDArray[np.int64]:
    """Column indices of the ``count`` smallest values in each row (unordered)."""
    if count >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    return np.argpartition(values, count - 1, axis=1)[:, :count]


def tail_bounds(part: PreparedPartition, tables: NDArray[np.float32], rows: NDArray[np.int64]) -> NDArray[np.float32]:
    """OSQ lower bounds (nq, m) over the dimensions after the prefix, from flat tables (nq, cells).

    Codes are extracted one dimension at a time (never decoding whole vectors) into one index array,
    then a single gather reads every (query, row, dimension) term.
    """
    layout = part.data.layout
    cells = part.cells
    nq, m = rows.shape
    tail = range(cells.first_dim, layout.bits.shape[0])
    index = np.empty((nq, m, len(tail)), dtype=np.int32)
    for j, dim in enumerate(tail):
        index[:, :, j] = layout.extract(part.data.segments, dim, rows)
    index += cells.offsets
    index += (np.arange(nq, dtype=np.int32) * tables.shape[1])[:, None, None]
    return tables.reshape(-1)[index].sum(axis=2, dtype=np.float32)
