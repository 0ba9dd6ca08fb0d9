"""Calibration at build time: measure the recall of each effort rung on queries drawn from the data itself.

Queries are rows of the index searched with themselves excluded (as the SQUASH paper samples its queries
from the base set), so the calibration needs no query log and follows whatever the data looks like. For
filtered kinds, each sample query gets a filter of about the band's selectivity on one of the index's own
attributes, built around an anchor row: for half the queries a random row, for the other half a row among
the farthest half from the query, so that the filter's matches lie elsewhere (anti-correlated) whenever
the attributes follow the geometry. Exact ground truth comes from numpy brute force.

Each kind climbs the ladder of `squash.search.effort` two rungs (a doubling) at a time, from rung 0, until
its recall reaches 0.999, or a rung costs more time than the exact search, or the time budget is spent;
the table of what was measured is stored in the manifest's ``params["calibration"]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

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
# Recall at which a kind stops climbing: enough for any recall_target a user may pass.
_ENOUGH = 0.999
# Seconds the calibration may spend at most, beyond its first measurement of each kind.
_BUDGET_SECONDS = 60.0
# Selectivity each filtered kind aims its filters at.
_BAND_CENTRES = {"10%": 0.1, "1%": 0.01, "0.1%": 0.001}
# Rows per chunk of the brute-force ground truth: (chunk, n) float32 distances at a time.
_GT_CELLS = 1 << 24


def check_target(target: object) -> float:
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0.5 <= target <= 0.9999:
        raise InvalidInputError(f"target_recall must be a number in 0.5 .. 0.9999, got {target!r}")
    return float(target)


def _distances(x: NDArray[np.float32], q: NDArray[np.float32], metric: Metric) -> NDArray[np.float32]:
    dots = q @ x.T
    if metric is Metric.L2:
        return (x * x).sum(axis=1)[None, :] - 2.0 * dots + (q * q).sum(axis=1)[:, None]
    return -dots if metric is Metric.IP else 1.0 - dots


def _truth(
    x: NDArray[np.float32], rows: NDArray[np.int64], masks: list[NDArray[np.bool_] | None], metric: Metric
) -> list[NDArray[np.int64]]:
    """Exact top-K of each sample row among the rows its mask allows (None: all), itself excluded."""
    n = x.shape[0]
    step = max(1, _GT_CELLS // max(n, 1))
    truth = []
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        d = _distances(x, x[chunk], metric)
        for j, row in enumerate(chunk.tolist()):
            mask = masks[start + j]
            di = d[j] if mask is None else np.where(mask, d[j], np.inf)
            di[row] = np.inf
            kk = min(K, int(np.isfinite(di).sum()))
            top = np.argpartition(di, kk - 1)[:kk] if kk else np.empty(0, dtype=np.int64)
            truth.append(top.astype(np.int64))
    return truth


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

    def around(self, anchor: int, share: float) -> tuple[dict[str, Any], NDArray[np.bool_]] | None:
        spec = self.specs[int(self.rng.integers(len(self.specs)))]
        column = self.raw[spec.name]
        value = column[anchor]
        if spec.type in (AttrType.INT, AttrType.FLOAT):
            ordered = self.sorted[spec.name]
            n = len(ordered)
            rank = int(np.searchsorted(ordered, value))
            half = max(1, int(share * n / 2))
            lo, hi = ordered[max(0, rank - half)], ordered[min(n - 1, rank + half)]
            cast = int if spec.type is AttrType.INT else float
            return {spec.name: {"$gte": cast(lo), "$lte": cast(hi)}}, (column >= lo) & (column <= hi)
        if spec.type is AttrType.BOOL:
            return {spec.name: bool(value)}, column == value
        return {spec.name: spec.categories[int(value)]}, column == value


def _sample_kind(
    meta: IndexMeta,
    x: NDArray[np.float32],
    raw: Mapping[str, NDArray[Any]],
    kind: str,
    rng: np.random.Generator,
) -> tuple[NDArray[np.int64], list[Any], list[NDArray[np.int64]]] | None:
    """Sample rows, their filters (None for unfiltered) and ground truth for one kind; None if impossible."""
    n = x.shape[0]
    size = min(SAMPLE, max(1, n // 10))
    rows = rng.choice(n, size=size, replace=False).astype(np.int64)
    if kind == KINDS[0]:
        return rows, [None] * size, _truth(x, rows, [None] * size, meta.metric)
    share = _BAND_CENTRES[kind]
    if not meta.schema.fields or share * n < 3 * K:
        return None
    filters = _Filters(meta, raw, rng)
    kept_rows, exprs, masks = [], [], []
    for attempt in range(4 * size):
        i = attempt % size
        # Half the filters are anchored far from their query: their matches lie elsewhere.
        anchor = _far_anchor(x, int(rows[i]), meta.metric, rng) if attempt % 2 else int(rng.integers(n))
        made = filters.around(anchor, share)
        if made is None or made[1].sum() < K:
            continue
        (compiled,) = FilterSet.from_user(made[0], 1).compile(meta)
        if kind_of(selectivities(meta, [compiled])[0]) != kind:
            continue
        kept_rows.append(int(rows[i]))
        exprs.append(made[0])
        masks.append(made[1])
        if len(kept_rows) == size:
            break
    if len(kept_rows) < size // 3:
        return None
    chosen = np.asarray(kept_rows, dtype=np.int64)
    return chosen, exprs, _truth(x, chosen, masks, meta.metric)


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
    prepared: dict[int, PreparedPartition] = {}

    def partition(pid: int) -> PreparedPartition:
        if pid not in prepared:
            prepared[pid] = PreparedPartition(parts[pid])
        return prepared[pid]

    rng = np.random.default_rng(seed + 20261204)
    recall: dict[str, list[list[float]]] = {}
    exact_faster: dict[str, int] = {}
    exact_seconds: dict[str, float] = {}
    for kind in KINDS:
        sample = _sample_kind(meta, x, raw, kind, rng)
        if sample is None:
            continue
        rows, exprs, truth = sample
        queries = x[rows]
        timed = time.perf_counter()
        search(meta, partition, queries, k=K + 1, filter=exprs, knobs={"exact": True})
        exact_time = time.perf_counter() - timed
        exact_seconds[kind] = exact_time / len(rows)
        table: list[list[float]] = []
        exact_faster[kind] = TOP_RUNG + 1
        for rung in range(0, TOP_RUNG + 1, 2):
            timed = time.perf_counter()
            found = search(meta, partition, queries, k=K + 1, filter=exprs, knobs=rung_knobs(rung)).ids
            seconds = time.perf_counter() - timed
            per_query = _recall(found, rows, truth)
            mean = float(per_query.mean())
            se = float(per_query.std(ddof=1) / math.sqrt(len(rows))) if len(rows) > 1 else 1.0
            table.append([rung, mean, se])
            if seconds > exact_time:
                exact_faster[kind] = rung
                break
            if mean >= _ENOUGH or time.perf_counter() - started > _BUDGET_SECONDS:
                break
        recall[kind] = table
    calibration = {
        "target": float(target),
        "k": K,
        "sample": SAMPLE,
        "seconds": round(time.perf_counter() - started, 3),
        "recall": recall,
        "exact_faster": exact_faster,
        "exact_seconds_per_query": exact_seconds,
    }
    return replace(meta, params={**meta.params, "calibration": calibration})
