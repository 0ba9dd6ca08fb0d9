"""Turning user queries and filters into what the engine reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import FilterError, InvalidInputError, LimitExceededError
from squash.filter import MAX_DEPTH, CompiledFilter, compile_exprs
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


def canonical_filter(expr: Any) -> str:
    """A stable text form of a JSON filter, so equal filters compile once.

    Only what strict JSON can carry passes: AWS Lambda refuses a payload holding NaN or infinity, and UTF-8
    (hence any payload) cannot hold a lone surrogate, so such a filter fails here rather than in transit.
    """
    try:
        text = json.dumps(expr, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except RecursionError:
        raise FilterError(f"filter nested deeper than the limit of {MAX_DEPTH} levels; flatten it") from None
    except (TypeError, ValueError) as exc:
        raise FilterError(
            f"filter is not strict JSON ({exc}); build it from dicts, lists, strings, booleans and finite numbers "
            "(NaN and infinity never compare true, and a Lambda payload cannot carry them)"
        ) from None
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise FilterError(
            f"filter holds text that is not valid Unicode ({exc.reason} at {exc.object[exc.start : exc.end]!r}); "
            "attribute names and categories are always valid UTF-8"
        ) from None
    return text


def compile_filters(filter: Any, nq: int, meta: IndexMeta) -> list[CompiledFilter | None]:
    """One compiled filter per query: ``filter`` is None, one filter for all, or a list of nq filters.

    Equal filters share one compiled object, which lets processors share their candidate sets.
    """
    if isinstance(filter, Sequence) and not isinstance(filter, str | bytes):
        if len(filter) != nq:
            raise FilterError(
                f"got {len(filter)} filters for {nq} queries; pass one filter for all queries or one per query"
            )
        exprs = list(filter)
    else:
        exprs = [filter] * nq
    keys = [canonical_filter(expr) for expr in exprs]
    unique = dict(zip(keys, exprs, strict=True))
    compiled = compile_exprs(list(unique.values()), meta.schema, meta.attr_quantizer)
    by_key = dict(zip(unique, compiled, strict=True))
    return [by_key[key] for key in keys]
