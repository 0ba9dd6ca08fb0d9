"""Per-partition forms of a query batch, shared by the list scans and the candidate-set scans."""

from __future__ import annotations

from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from squash.model import Metric
from squash.search.prepared import PreparedPartition


class QueryCodes:
    """Per-partition forms of a query batch, each computed on first use: the rotated queries and the terms
    of their estimated scores against the partition's scalar codes (`squash.osq.scalar`)."""

    def __init__(self, part: PreparedPartition, queries: NDArray[np.float32], metric: Metric) -> None:
        self.part = part
        self.queries = queries
        self.metric = metric

    @cached_property
    def rotated(self) -> NDArray[np.float32]:
        rotation = self.part.data.rotation
        return rotation.apply_direction(self.queries) if self.metric is Metric.IP else rotation.apply(self.queries)

    @cached_property
    def weights(self) -> NDArray[np.float32]:
        """(nq, D) float32 ``w`` such that a row's estimated score is ``alpha * norm + constant + w @ code``:
        ``-2 q∘step`` for L2 and cosine (``alpha = 1``, the squared distance to the decoded row), ``-q∘step``
        for ``ip`` (``alpha = 0``, the negated inner product), over the rotated query ``q``."""
        scale = -1.0 if self.metric is Metric.IP else -2.0
        step = self.part.data.scalar.step.astype(np.float64)
        return (scale * self.rotated.astype(np.float64) * step).astype(np.float32)

    @cached_property
    def constant(self) -> NDArray[np.float64]:
        """(nq,) the per-query term of the estimated score: ``|q|^2 - 2 q.lo`` for L2 and cosine,
        ``-q.lo - q.mean`` for ``ip`` (q.x = (q @ V).z + q.mean). Row-wise sums, so a query's terms never
        depend on its batch-mates."""
        q = self.rotated.astype(np.float64)
        lo = self.part.data.scalar.lo.astype(np.float64)
        if self.metric is Metric.IP:
            mean = self.part.data.rotation.mean.astype(np.float64)
            return -(q * lo).sum(axis=1) - (self.queries.astype(np.float64) * mean).sum(axis=1)
        return (q * q).sum(axis=1) - 2.0 * (q * lo).sum(axis=1)

    @cached_property
    def lead_constant(self) -> NDArray[np.float64]:
        """(nq,) `constant` over the partition's leading dimensions only (L2 and cosine)."""
        q = self.rotated[:, : self.part.lead].astype(np.float64)
        lo = self.part.data.scalar.lo[: self.part.lead].astype(np.float64)
        return (q * q).sum(axis=1) - 2.0 * (q * lo).sum(axis=1)


def select_smallest(values: NDArray[np.generic], count: int) -> NDArray[np.int64]:
    """Column indices of the ``count`` smallest values in each row (unordered)."""
    if count >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    return np.argpartition(values, count - 1, axis=1)[:, :count]
