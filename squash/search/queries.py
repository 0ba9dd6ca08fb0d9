"""Turning user queries and filters into what the engine reads."""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import FilterError, InvalidInputError, LimitExceededError
from squash.filter import CompiledFilter, canonical_filter, compile_exprs, group_of
from squash.model import IndexMeta, Metric
from squash.validation import as_vectors

MAX_BATCH = 100_000


def prepare_queries(queries: object, meta: IndexMeta) -> NDArray[np.float32]:
    """Validate a query (d,) or batch (nq, d) against the index; unit-normalise for cosine."""
    q = as_vectors(queries, name="queries", dim=meta.dim)
    if q.shape[0] > MAX_BATCH:
        raise LimitExceededError(
            f"a batch of {q.shape[0]} queries exceeds the limit of {MAX_BATCH}; split it into smaller batches"
        )
    if meta.metric is Metric.COSINE:
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InvalidInputError("a zero-length query has no cosine similarity; pass a non-zero vector")
        q = (q / norms).astype(np.float32)
    return q


@dataclass(frozen=True, eq=False)
class FilterSet:
    """One filter per query, deduplicated: distinct JSON expressions and the index of each query's one.

    The one way from what a caller passes to compiled filters (``FilterSet.from_user(...).compile(meta)``),
    in process and on the wire alike (requests carry ``exprs`` and ``of``)."""

    exprs: tuple[Any, ...]
    of: NDArray[np.int32]

    @classmethod
    def from_user(cls, filter: Any, n_queries: int) -> FilterSet:
        """None, one filter for every query, or a sequence of one filter per query (as `Index.search`)."""
        if isinstance(filter, Sequence) and not isinstance(filter, str | bytes):
            if len(filter) != n_queries:
                raise FilterError(
                    f"got {len(filter)} filters for {n_queries} queries; pass one filter for all queries or "
                    "one per query"
                )
            exprs: list[Any] = []
            seen: dict[str, int] = {}
            of = np.empty(n_queries, dtype=np.int32)
            for i, expr in enumerate(filter):
                # Round-trip through JSON so the sender holds exactly what receivers will see.
                key = canonical_filter(expr)
                if key not in seen:
                    seen[key] = len(exprs)
                    exprs.append(json.loads(key))
                of[i] = seen[key]
            return cls(tuple(exprs), of)
        return cls((json.loads(canonical_filter(filter)),), np.zeros(n_queries, dtype=np.int32))

    def per_query(self) -> list[Any]:
        return [self.exprs[i] for i in self.of]

    def compile(self, meta: IndexMeta) -> list[CompiledFilter | None]:
        """One compiled filter per query, against ``meta``'s schema; filters of one group share one object.

        Each distinct expression is compiled once (a decoded event may list one twice, and then its
        compiled copies share too), which lets processors share their candidate sets.
        """
        shared: dict[Hashable, CompiledFilter | None] = {}
        compiled = compile_exprs(list(self.exprs), meta.schema, meta.attr_quantizer)
        distinct = [shared.setdefault(group_of(f), f) for f in compiled]
        return [distinct[i] for i in self.of]

    def take(self, rows: slice | NDArray[np.int64]) -> FilterSet:
        """The filters of some queries, keeping only the expressions they use."""
        used, of = np.unique(self.of[rows], return_inverse=True)
        return FilterSet(tuple(self.exprs[i] for i in used), of.astype(np.int32).reshape(-1))
