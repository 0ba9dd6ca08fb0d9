"""Ranking the rows of scanned lists from their scalar codes, batch by batch, answer by answer.

Every row of a list gets an estimated score from its one-byte-per-dimension codes (`squash.osq.scalar`)
and every dimension: one float32 matrix product per list for all the queries of the batch that scan it,
as faiss's big-batch search groups queries by list. A product's rounding depends on its shape, so on which
queries share the batch; the selection below makes each query's choice of rows independent of that all the
same: rows whose float32 estimate is clearly inside or outside a query's depth are decided from it, and the
few rows within the float32 error of the cut are ranked by an estimate computed pair by pair in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from squash.model import Metric
from squash.osq.scalar import LEVELS
from squash.search.levels import QueryCodes
from squash.search.prepared import PreparedPartition

# Unit roundoff of float32.
_U32 = 2.0**-24


# Rows of codes converted to float32 per product: 4 MB at D = 384, so a block stays in cache.
_ROW_BLOCK = 2048
# (query, row) pairs times dimensions per chunk of gathered codes: 4 MB of float32.
_PAIR_CHUNK = 1 << 20


def _product(
    part: PreparedPartition,
    codes: QueryCodes,
    qs: NDArray[np.int64],
    rows: slice | NDArray[np.int64],
    lead: bool = False,
) -> NDArray[np.float32]:
    """Float32 estimated scores (len(qs), rows) of ``rows`` for queries ``qs``: one matrix product. With
    ``lead``, the squared distance over the partition's leading dimensions only (``part.lead``)."""
    if lead:
        block = codes.weights[qs, : part.lead] @ part.data.scalar.codes[rows, : part.lead].astype(np.float32).T
        block += codes.lead_constant[qs].astype(np.float32)[:, None]
        block += part.lead_norms[rows]
        return block
    block = codes.weights[qs] @ part.data.scalar.codes[rows].astype(np.float32).T
    block += codes.constant[qs].astype(np.float32)[:, None]
    if codes.metric is not Metric.IP:
        block += part.data.scalar.norms[rows]
    return block


def estimate_table(
    part: PreparedPartition,
    codes: QueryCodes,
    qs: NDArray[np.int64],
    pair_q: NDArray[np.int64],
    pair_list: NDArray[np.int64],
    pair_at: NDArray[np.int64],
    width: int,
    lead: bool = False,
) -> NDArray[np.float32]:
    """(len(qs), width) estimated scores: pair j (query ``qs[pair_q[j]]``, list ``pair_list[j]``) writes its
    list's rows from flat position ``pair_at[j]`` on; positions no pair writes stay inf. One product per list,
    for all the queries that scan it; with ``lead``, over the leading dimensions only."""
    starts = part.data.list_starts
    table = np.full((len(qs), width), np.inf, dtype=np.float32)
    flat = table.reshape(-1)
    by_list = np.argsort(pair_list, kind="stable")
    lists, first = np.unique(pair_list[by_list], return_index=True)
    edges = np.append(first, len(by_list)).tolist()
    for j, lst in enumerate(lists.tolist()):
        pairs = by_list[edges[j] : edges[j + 1]]
        lo, hi = int(starts[lst]), int(starts[lst + 1])
        block = _product(part, codes, qs[pair_q[pairs]], slice(lo, hi), lead)
        flat[(pair_at[pairs, None] + np.arange(hi - lo)).ravel()] = block.ravel()
    return table


def shared_estimates(
    part: PreparedPartition, codes: QueryCodes, qs: NDArray[np.int64], rows: NDArray[np.int64]
) -> NDArray[np.float32]:
    """Float32 estimated scores (len(qs), len(rows)) of rows shared by queries ``qs``."""
    out = np.empty((len(qs), len(rows)), dtype=np.float32)
    for start in range(0, len(rows), _ROW_BLOCK):
        out[:, start : start + _ROW_BLOCK] = _product(part, codes, qs, rows[start : start + _ROW_BLOCK])
    return out


def gathered_estimates(
    part: PreparedPartition, codes: QueryCodes, rows: NDArray[np.int64], qs: NDArray[np.int64] | None = None
) -> NDArray[np.float32]:
    """Float32 estimated scores (nq, m) of query ``qs[i]``'s own rows ``rows[i]`` (``qs``: every query of
    ``codes``, in order): one matrix-vector product each."""
    nq, m = rows.shape
    qs = np.arange(nq) if qs is None else qs
    weights, constant = codes.weights[qs], codes.constant[qs].astype(np.float32)
    out = np.empty((nq, m), dtype=np.float32)
    step = max(1, _PAIR_CHUNK // max(m * part.data.scalar.codes.shape[1], 1))
    for start in range(0, nq, step):
        chunk = slice(start, start + step)
        x = part.data.scalar.codes[rows[chunk]].astype(np.float32)
        out[chunk] = np.matmul(x, weights[chunk, :, None])[..., 0] + constant[chunk, None]
    if codes.metric is not Metric.IP:
        out += part.data.scalar.norms[rows]
    return out


def rounding_margin(
    part: PreparedPartition, codes: QueryCodes, qs: NDArray[np.int64], lead: bool = False
) -> NDArray[np.float64]:
    """Per query, a bound on |float32 table estimate - float64 pair estimate| (with ``lead``, of the estimates
    over the leading dimensions): the float32 product's error over its d terms of at most 255 |w_d| each, and
    the rounding of the two additions."""
    if lead:
        weights, norms, constant = codes.weights[qs, : part.lead], part.lead_norms, codes.lead_constant[qs]
    else:
        weights, norms, constant = codes.weights[qs], part.data.scalar.norms, codes.constant[qs]
    terms = LEVELS * np.abs(weights.astype(np.float64)).sum(axis=1)
    largest = terms + float(norms.max(initial=0.0)) + np.abs(constant)
    return 2.0 * (weights.shape[1] + 3) * _U32 * largest


def pair_estimates(
    part: PreparedPartition,
    codes: QueryCodes,
    queries: NDArray[np.int64],
    rows: NDArray[np.int64],
    lead: bool = False,
) -> NDArray[np.float64]:
    """The estimated score of each (query, row) pair, computed pair by pair in float64 (with ``lead``, over
    the partition's leading dimensions only)."""
    if lead:
        w = codes.weights[queries, : part.lead].astype(np.float64)
        x = part.data.scalar.codes[rows, : part.lead].astype(np.float64)
        return np.einsum("pd,pd->p", w, x) + codes.lead_constant[queries] + part.lead_norms[rows]
    w = codes.weights[queries].astype(np.float64)
    out = np.einsum("pd,pd->p", w, part.data.scalar.codes[rows].astype(np.float64)) + codes.constant[queries]
    if codes.metric is not Metric.IP:
        out += part.data.scalar.norms[rows]
    return out


def select_depth(
    table: NDArray[np.float32],
    depth: NDArray[np.int64],
    margin: NDArray[np.float64],
    exact: Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.float64]],
) -> NDArray[np.int64]:
    """Columns (nq, max depth) of the ``depth[i]`` smallest entries of each row by the exact estimate, -1 past
    a row's depth; ``table`` holds float32 estimates within ``margin`` of it, and ``exact(q, col)`` computes
    it. Ties go to the smaller column.

    If t is a row's depth-th smallest float32 estimate, the exact depth-th smallest lies within ``margin``
    of t, so entries below t - 2 margin are certainly chosen and entries above t + 2 margin certainly not;
    only the entries in between are ranked by ``exact``. The entries that can matter are first gathered
    into a narrow table (:func:`_shortlist`), so only one pass touches the whole table.
    """
    nq = table.shape[0]
    keep = min(table.shape[1], int(depth.max(initial=0)))
    if keep == 0:
        return np.full((nq, 0), -1, dtype=np.int64)
    columns = _shortlist(table, np.minimum(depth, keep), margin)
    narrow = np.where(columns >= 0, np.take_along_axis(table, np.maximum(columns, 0), 1), np.inf)
    finite = np.isfinite(narrow).sum(axis=1)
    take = np.minimum(depth, finite)
    ordered = np.sort(narrow, axis=1)
    cut = ordered[np.arange(nq), np.maximum(take, 1) - 1].astype(np.float64)
    everything = take >= finite  # no more finite entries than the depth: take them all
    low = np.where(everything, np.inf, cut - 2.0 * margin)
    high = np.where(everything, -np.inf, cut + 2.0 * margin)
    sure = (narrow < low[:, None]) & np.isfinite(narrow)
    band = (narrow >= low[:, None]) & (narrow <= high[:, None])
    need = take - sure.sum(axis=1)
    bq, bj = np.nonzero(band)
    if len(bq):
        bc = columns[bq, bj]
        order = np.lexsort((bc, exact(bq, bc), bq))
        bq, bj = bq[order], bj[order]
        rank = np.arange(len(bq)) - np.searchsorted(bq, bq)
        picked = rank < need[bq]
        sure[bq[picked], bj[picked]] = True
    sq, sj = np.nonzero(sure)
    out = np.full((nq, keep), -1, dtype=np.int64)
    out[sq, np.arange(len(sq)) - np.searchsorted(sq, sq)] = columns[sq, sj]
    return out


# Rows are sampled one column in this many to find a cut, and the cut is set past the expected rank by
# this many standard deviations (binomial), so one pass over the table usually suffices.
_SAMPLE_EVERY = 8
_SAMPLE_SIGMAS = 4.0


def _shortlist(table: NDArray[np.float32], depth: NDArray[np.int64], margin: NDArray[np.float64]) -> NDArray[np.int64]:
    """Columns (nq, w), -1 padded, holding every entry of each row within 2 ``margin`` of its depth-th smallest.

    A per-row cut from a sample of the columns bounds the depth-th smallest from above (checked by
    counting; rows where it does not are cut exactly), so the full table is compared once and never
    partitioned; a partition over every column costs about twenty times a comparison.
    """
    nq = table.shape[0]
    sample = table[:, ::_SAMPLE_EVERY]
    expected = depth / _SAMPLE_EVERY
    rank = np.minimum(sample.shape[1], np.ceil(expected + _SAMPLE_SIGMAS * np.sqrt(expected) + 2)).astype(np.int64)
    cut = np.full(nq, np.inf)
    sampled = rank < sample.shape[1]
    if sampled.any():
        ordered = np.partition(sample, int(rank[sampled].max()) - 1, axis=1)
        cut[sampled] = ordered[np.flatnonzero(sampled), rank[sampled] - 1]
    inside = table <= (cut + 2.0 * margin)[:, None]
    short = inside.sum(axis=1) < depth
    if short.any():  # the sample missed: this row's exact cut
        exact = np.partition(table[short], depth[short].max() - 1, axis=1)
        cut[short] = exact[np.arange(short.sum()), depth[short] - 1]
        inside[short] = table[short] <= (cut[short] + 2.0 * margin[short])[:, None]
    q, c = np.nonzero(inside)
    counts = np.bincount(q, minlength=nq)
    out = np.full((nq, int(counts.max(initial=0))), -1, dtype=np.int64)
    out[q, np.arange(len(q)) - np.searchsorted(q, q)] = c
    return out
