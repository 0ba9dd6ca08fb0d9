"""Calibration at build time: measure the recall of each effort rung on queries drawn from the data itself.

Queries are rows of the index searched with themselves excluded (as the SQUASH paper samples its queries
from the base set), so the calibration needs no query log and follows whatever the data looks like. For
filtered kinds, each sample query gets a filter of about the band's selectivity on one of the index's own
attributes, built around an anchor row: for half the queries a random row, for the other half a row among
the farthest half from the query, so that the filter's matches lie elsewhere (anti-correlated) whenever
the attributes follow the geometry. Exact ground truth comes from numpy brute force.

Each kind climbs the ladder of `squash.search.effort` two rungs (a doubling) at a time, from rung 0, until
its recall reaches 0.999, or a rung costs more time than the exact search, or the time budget is spent;
the table of what was measured is stored in the manifest's ``params["calibration"]``: per kind and rung, the
mean recall (the estimate a query of that kind reports) and the recall it is assured of (the lower of the
near- and far-anchored halves, less two standard errors), which a recall target is checked against.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from squash.attributes import AttrType
from squash.errors import InvalidInputError
from squash.model import IndexMeta, Metric, PartitionData
from squash.search.effort import KINDS, TOP_RUNG, kind_of, rung_knobs, selectivities
from squash.search.engine import search
from squash.search.prepared import PreparedPartition
from squash.search.queries import FilterSet

DEFAULT_TARGET = 0.95
K = 10
# Sample queries per kind: the standard error of a recall near 0.95 over 150 queries is about 0.01.
SAMPLE = 150
# Assured recall at which a kind stops climbing: enough for any recall_target a user may pass.
_ENOUGH = 0.999
# Seconds the calibration may spend at most, beyond its first measurement of each kind.
_BUDGET_SECONDS = 60.0
# Sample queries (one batch) that time each rung against the exact search: per-query costs compare at equal
# batch size, since the exact search shares one matrix product across a batch.
_TIMED = 16
_EXACT = {"exact": True}
# Selectivity each filtered kind aims its filters at.
_BAND_CENTRES = {"10%": 0.1, "1%": 0.01, "0.1%": 0.001}
# Rows per chunk of the brute-force ground truth: (chunk, n) float32 distances at a time.
_GT_CELLS = 1 << 24


def check_target(target: object) -> float:
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0.5 <= target <= 0.9999:
        raise InvalidInputError(f"target_recall must be a number in 0.5 .. 0.9999, got {target!r}")
    return float(target)


def _distances(
    x: NDArray[np.float32], q: NDArray[np.float32], metric: Metric, norms: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    dots = q @ x.T
    if metric is Metric.L2:
        norms = (x * x).sum(axis=1) if norms is None else norms
        return norms[None, :] - 2.0 * dots + (q * q).sum(axis=1)[:, None]
    return -dots if metric is Metric.IP else 1.0 - dots


@dataclass
class _Sample:
    """One kind's sample queries (rows of the index), their filters and masks, and exact top-K of each."""

    rows: NDArray[np.int64]
    exprs: list[Any]
    masks: list[NDArray[np.bool_] | None]
    far: NDArray[np.bool_]  # which filters were anchored far from their query (anti-correlated)
    truth: list[NDArray[np.int64]] = field(default_factory=list)


def _fill_truth(x: NDArray[np.float32], rows: NDArray[np.int64], samples: list[_Sample], metric: Metric) -> None:
    """Exact top-K of every sample query among the rows its mask allows, itself excluded.

    Every kind samples its queries from ``rows``, so one brute-force pass over them serves all kinds.
    """
    n = x.shape[0]
    norms = (x * x).sum(axis=1) if metric is Metric.L2 else None
    where = {int(row): i for i, row in enumerate(rows.tolist())}
    slots = [[where[int(r)] for r in sample.rows.tolist()] for sample in samples]
    for sample in samples:
        sample.truth = [np.empty(0, dtype=np.int64)] * len(sample.rows)
    step = max(1, _GT_CELLS // max(n, 1))
    for start in range(0, len(rows), step):
        d = _distances(x, x[rows[start : start + step]], metric, norms)
        for sample, slot in zip(samples, slots, strict=True):
            for j, i in enumerate(slot):
                if start <= i < start + step:
                    mask = sample.masks[j]
                    di = d[i - start] if mask is None else np.where(mask, d[i - start], np.inf)
                    di[sample.rows[j]] = np.inf
                    kk = min(K, int(np.isfinite(di).sum()))
                    sample.truth[j] = np.argpartition(di, kk - 1)[:kk].astype(np.int64) if kk else sample.truth[j]


def _far_anchor(x: NDArray[np.float32], row: int, metric: Metric, rng: np.random.Generator) -> int:
    """A row among the farthest half from ``row``, judged on a random subsample."""
    pool = rng.choice(x.shape[0], size=min(x.shape[0], 256), replace=False)
    d = _distances(x[pool], x[row : row + 1], metric)[0]
    far = pool[d >= np.median(d)]
    return int(far[int(rng.integers(len(far)))])


def _recall(found: NDArray[np.int64], rows: NDArray[np.int64], truth: list[NDArray[np.int64]]) -> NDArray[np.float64]:
    out = np.ones(len(rows))
    for i, (ids, row, want) in enumerate(zip(found, rows.tolist(), truth, strict=True)):
        if len(want):
            got = set(ids[(ids >= 0) & (ids != row)][:K].tolist())
            out[i] = len(got & set(want.tolist())) / len(want)
    return out


class _Filters:
    """Filters of a given selectivity around anchor rows, on the index's own attributes."""

    def __init__(self, meta: IndexMeta, raw: Mapping[str, NDArray[Any]], rng: np.random.Generator) -> None:
        self.meta, self.raw, self.rng = meta, raw, rng
        self.specs = list(meta.schema.fields)
        self.sorted = {s.name: np.sort(raw[s.name]) for s in self.specs if s.type in (AttrType.INT, AttrType.FLOAT)}

    def around(self, anchor: int, share: float) -> tuple[dict[str, Any], NDArray[np.bool_]]:
        spec = self.specs[int(self.rng.integers(len(self.specs)))]
        column = self.raw[spec.name]
        value = column[anchor]
        if spec.type in (AttrType.INT, AttrType.FLOAT):
            # The anchor's value, widened evenly by rank until about ``share`` of the rows are inside (a
            # value at least that frequent, as in a low-cardinality column, stands alone).
            ordered = self.sorted[spec.name]
            n = len(ordered)
            left, right = int(np.searchsorted(ordered, value)), int(np.searchsorted(ordered, value, side="right"))
            extra = max(0, int(share * n) - (right - left)) // 2
            lo, hi = ordered[max(0, left - extra)], ordered[min(n - 1, right - 1 + extra)]
            cast = int if spec.type is AttrType.INT else float
            return {spec.name: {"$gte": cast(lo), "$lte": cast(hi)}}, (column >= lo) & (column <= hi)
        if spec.type is AttrType.BOOL:
            return {spec.name: bool(value)}, column == value
        return {spec.name: spec.categories[int(value)]}, column == value


def _filtered_sample(
    meta: IndexMeta,
    x: NDArray[np.float32],
    filters: _Filters,
    rows: NDArray[np.int64],
    kind: str,
    rng: np.random.Generator,
) -> _Sample | None:
    """Filters of about ``kind``'s selectivity for the sample ``rows``; None if the attributes cannot make them."""
    n, size = x.shape[0], len(rows)
    share = _BAND_CENTRES[kind]
    if share * n < 3 * K:
        return None
    kept, exprs, masks, far = [], [], [], []
    for attempt in range(4 * size):
        i = attempt % size
        # Half the filters are anchored far from their query: their matches lie elsewhere.
        anchored_far = attempt % 2 == 1
        anchor = _far_anchor(x, int(rows[i]), meta.metric, rng) if anchored_far else int(rng.integers(n))
        expr, mask = filters.around(anchor, share)
        if mask.sum() < K:
            continue
        (compiled,) = FilterSet.from_user(expr, 1).compile(meta)
        if kind_of(selectivities(meta, [compiled])[0]) != kind:
            continue
        kept.append(int(rows[i]))
        exprs.append(expr)
        masks.append(mask)
        far.append(anchored_far)
        if len(kept) == size:
            break
    if len(kept) < size // 3:
        return None
    return _Sample(np.asarray(kept, dtype=np.int64), exprs, masks, np.asarray(far, dtype=bool))


def _samples(
    meta: IndexMeta, x: NDArray[np.float32], raw: Mapping[str, NDArray[Any]], rng: np.random.Generator
) -> dict[str, _Sample]:
    """Each kind's sample, with its ground truth; kinds the attributes cannot express are left out."""
    n = x.shape[0]
    size = min(SAMPLE, max(1, n // 10))
    rows = rng.choice(n, size=size, replace=False).astype(np.int64)
    samples = {KINDS[0]: _Sample(rows, [None] * size, [None] * size, np.zeros(size, dtype=bool))}
    if meta.schema.fields:
        filters = _Filters(meta, raw, rng)
        for kind in KINDS[1:]:
            sample = _filtered_sample(meta, x, filters, rows, kind, rng)
            if sample is not None:
                samples[kind] = sample
    _fill_truth(x, rows, list(samples.values()), meta.metric)
    return samples


def _assured(recall: NDArray[np.float64], far: NDArray[np.bool_]) -> float:
    """The recall a rung can be trusted to give both the near- and the far-anchored filters of a kind: the
    lower of each group's mean less two standard errors, so a mix of easy filters cannot hide hard ones."""
    groups = [recall[far], recall[~far]]
    return min(
        float(g.mean()) - (2.0 * float(g.std(ddof=1)) / math.sqrt(len(g)) if len(g) > 1 else 1.0)
        for g in groups
        if len(g)
    )


def _seconds_per_query(
    meta: IndexMeta, partition: Any, queries: NDArray[np.float32], exprs: list[Any], knobs: dict[str, Any]
) -> float:
    """Seconds per query of one search of ``queries`` with ``knobs``, on one thread as a processor runs."""
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        search(meta, partition, queries, k=K + 1, filter=exprs, knobs=knobs)
    return (time.perf_counter() - started) / max(len(queries), 1)


def calibrate(
    meta: IndexMeta,
    parts: list[PartitionData],
    x: NDArray[np.float32],
    raw: Mapping[str, NDArray[Any]],
    *,
    target: float = DEFAULT_TARGET,
    seed: int = 0,
) -> IndexMeta:
    """``meta`` with its calibration: measured recall@10 per effort rung for each kind of query."""
    started = time.perf_counter()
    # Prepared before anything is timed, so no search pays for it.
    prepared = [PreparedPartition(part) for part in parts]
    partition = prepared.__getitem__

    rng = np.random.default_rng(seed + 20261204)
    recall: dict[str, list[list[float]]] = {}
    exact_faster: dict[str, int] = {}
    exact_seconds: dict[str, float] = {}
    samples = _samples(meta, x, raw, rng)
    for kind, sample in samples.items():
        rows, exprs, truth = sample.rows, sample.exprs, sample.truth
        queries = x[rows]
        timed = queries[:_TIMED], exprs[:_TIMED]
        exact_seconds[kind] = _seconds_per_query(meta, partition, *timed, _EXACT)
        table: list[list[float]] = []
        exact_faster[kind] = TOP_RUNG + 1
        for rung in range(0, TOP_RUNG + 1, 2):
            knobs = rung_knobs(rung)
            # Timed first: a rung slower than the exact search is never chosen, so its recall is not needed.
            if _seconds_per_query(meta, partition, *timed, knobs) > exact_seconds[kind]:
                exact_faster[kind] = rung
                break
            found = search(meta, partition, queries, k=K + 1, filter=exprs, knobs=knobs).ids
            per_query = _recall(found, rows, truth)
            table.append([rung, float(per_query.mean()), _assured(per_query, sample.far)])
            if table[-1][2] >= _ENOUGH or time.perf_counter() - started > _BUDGET_SECONDS:
                break
        recall[kind] = table
    calibration = {
        "target": float(target),
        "k": K,
        "sample": {kind: len(sample.rows) for kind, sample in samples.items()},
        "seconds": round(time.perf_counter() - started, 3),
        "recall": recall,
        "exact_faster": exact_faster,
        "exact_seconds_per_query": exact_seconds,
    }
    return replace(meta, params={**meta.params, "calibration": calibration})
