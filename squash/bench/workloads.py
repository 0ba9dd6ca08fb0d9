"""Filtered workloads of ``squash bench search``: a filter per query, its rows and the exact filtered top-k.

The filters use a subset of Squash's syntax that :func:`evaluate` also runs on the raw attribute columns,
so the peers (and the ground truth) never depend on Squash's own filter evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.datasets import Dataset

K = 10

Filter = dict[str, Any] | None
Columns = dict[str, NDArray[Any]]
Ids = NDArray[np.int64]


@dataclass
class Workload:
    """One filter family: a filter per query, then its masks and exact filtered top-k."""

    selectivity: float
    name: str
    filters: list[Filter]
    share: float = 1.0
    masks: NDArray[np.bool_] | None = None
    truth: Ids = field(default_factory=lambda: np.empty((0, K), dtype=np.int64))

    @property
    def label(self) -> str:
        """Name with the measured mean selectivity."""
        return f"{self.name} [{self.share:.2%}]"


_OPS: dict[str, Callable[[NDArray[Any], Any], NDArray[np.bool_]]] = {
    "$gte": np.greater_equal,
    "$lte": np.less_equal,
    "$lt": np.less,
}


def evaluate(spec: Filter, columns: Columns) -> NDArray[np.bool_] | None:
    """Rows matching one filter (the subset of the syntax this benchmark writes); None: no filter."""
    if spec is None:
        return None
    mask: NDArray[np.bool_] | None = None
    for key, value in spec.items():
        if key == "$and":
            parts = [evaluate(s, columns) for s in value]
        elif isinstance(value, dict):
            parts = [_OPS[op](columns[key], bound) for op, bound in value.items()]
        else:
            parts = [columns[key] == value]
        for part in parts:
            mask = part if mask is None else mask & part
    return mask


def _window(
    columns: Columns, names: Sequence[str], centre: int, target: int, within: NDArray[np.bool_] | None
) -> dict[str, Any]:
    """Inclusive integer ranges on ``names`` around row ``centre``, grown until ~``target`` rows match.

    Half-widths are one common multiple of each column's spread, found by bisection: the columns are
    correlated, so per-column widths cannot be derived from the target alone.
    """
    values = [columns[n].astype(np.int64) for n in names]
    spreads = [float(v.std()) or 1.0 for v in values]
    inside = np.ones(len(values[0]), dtype=bool) if within is None else within

    def bounds(h: float) -> list[tuple[int, int]]:
        return [
            (math.ceil(v[centre] - h * s), math.floor(v[centre] + h * s)) for v, s in zip(values, spreads, strict=True)
        ]

    def count(h: float) -> int:
        mask = inside.copy()
        for v, (lo, hi) in zip(values, bounds(h), strict=True):
            mask &= (v >= lo) & (v <= hi)
        return int(mask.sum())

    low, high = 0.0, 10.0
    for _ in range(25):
        mid = (low + high) / 2
        low, high = (mid, high) if count(mid) < target else (low, mid)
    return {n: {"$gte": lo, "$lte": hi} for n, (lo, hi) in zip(names, bounds(high), strict=True)}


def fashion_workloads(data: Dataset, nq: int, seed: int) -> list[Workload]:
    """Label filters (the query's own label, and another one) and tuned range filters."""
    rng = np.random.default_rng(seed)
    cols = data.attributes
    labels = cols["label"]
    n = len(labels)
    own = data.query_attributes["label"][:nq].astype(int)
    other = (own + 1 + rng.integers(0, 9, size=nq)) % 10
    out = [
        Workload(1.0, "unfiltered", [None] * nq),
        Workload(0.1, "label = own (correlated)", [{"label": int(v)} for v in own]),
        Workload(0.1, "label = other (anti-correlated)", [{"label": int(v)} for v in other]),
    ]
    for s in (0.01, 0.001):
        target = max(K, round(s * n))
        box, combined = [], []
        for label in own:
            box.append(_window(cols, ("nonzero_pixels", "intensity_sum"), int(rng.integers(n)), target, None))
            same = labels == label
            window = _window(cols, ("intensity_sum",), int(rng.choice(np.flatnonzero(same))), target, same)
            combined.append({"$and": [{"label": int(label)}, window]})
        out.append(Workload(s, "pixels x intensity box", box))
        out.append(Workload(s, "label = own & intensity range", combined))
    return out


def synthetic_workloads(data: Dataset, nq: int, seed: int) -> list[Workload]:
    """Conjunctive ranges over every attribute (s^(1/A) wide each, SQUASH's workload) and one range."""
    rng = np.random.default_rng(seed)
    names = sorted(data.attributes)
    out = [Workload(1.0, "unfiltered", [None] * nq)]
    for s in (0.1, 0.01, 0.001):
        w = s ** (1 / len(names))
        conj: list[Filter] = [
            {"$and": [{a: {"$gte": float(lo), "$lt": float(lo + w)}} for a, lo in zip(names, row, strict=True)]}
            for row in rng.uniform(0, 1 - w, size=(nq, len(names)))
        ]
        single: list[Filter] = [
            {names[0]: {"$gte": float(lo), "$lt": float(lo + s)}} for lo in rng.uniform(0, 1 - s, size=nq)
        ]
        out.append(Workload(s, f"{len(names)}-attribute conjunction", conj))
        out.append(Workload(s, f"range on {names[0]}", single))
    return out


def debian_workloads(data: Dataset, nq: int, seed: int) -> list[Workload]:
    """Real package metadata: the query's own section (correlated with the text), installed-size x
    dependency-count boxes, and the own section with an installed-size range inside it."""
    rng = np.random.default_rng(seed)
    cols = data.attributes
    section = cols["section"]
    n = len(section)
    own = [str(s) for s in data.query_attributes["section"][:nq]]
    out = [
        Workload(1.0, "unfiltered", [None] * nq),
        Workload(0.1, "section = own (correlated)", [{"section": s} for s in own]),
    ]
    for s in (0.1, 0.01, 0.001):
        target = max(K, round(s * n))
        out.append(
            Workload(
                s,
                "size x depends box",
                [_window(cols, ("installed_size", "n_depends"), int(rng.integers(n)), target, None) for _ in own],
            )
        )
        if s == 0.1:
            continue  # no section holds 10% of the rows
        combined: list[Filter] = []
        for name in own:
            same = section == name
            # A section no base row has (a few queries' own) still gets a filter: it matches nothing.
            centre = int(rng.choice(np.flatnonzero(same))) if same.any() else int(rng.integers(n))
            window = _window(cols, ("installed_size",), centre, target, same)
            combined.append({"$and": [{"section": name}, window]})
        out.append(Workload(s, "section = own & size range", combined))
    return out


def ground_truth(
    base: NDArray[np.float32],
    norms: NDArray[np.float32],
    queries: NDArray[np.float32],
    columns: Columns,
    work: Workload,
) -> None:
    """Set ``work.masks``, ``work.share`` and ``work.truth``, the exact filtered top-k (ties by id, -1 pads).

    The same answer as :func:`squash.datasets.exact_knn` with each query's mask, batched over
    queries with distinct masks: a float32 screen over every row, then float64 on a pool.
    """
    n = base.shape[0]
    masks = None if work.filters[0] is None else np.stack([evaluate(f, columns) for f in work.filters])
    pool = min(n, 4 * K + 32)
    truth = np.full((len(queries), K), -1, dtype=np.int64)
    for start in range(0, len(queries), 32):
        rows = slice(start, start + 32)
        q = queries[rows]
        screen = norms[None, :] - 2 * (q @ base.T)
        if masks is not None:
            screen[~masks[rows]] = np.inf
        cand = np.argpartition(screen, pool - 1, axis=1)[:, :pool]
        exact = ((base[cand].astype(np.float64) - q[:, None, :].astype(np.float64)) ** 2).sum(axis=2)
        if masks is not None:
            exact[~np.take_along_axis(masks[rows], cand, 1)] = np.inf
        order = np.lexsort((cand, exact), axis=1)[:, :K]
        found = np.isfinite(np.take_along_axis(exact, order, 1))
        truth[rows] = np.where(found, np.take_along_axis(cand, order, 1), -1)
    work.masks, work.truth = masks, truth
    work.share = 1.0 if masks is None else float(masks.mean())


def check_results(ids: Ids, work: Workload, n: int) -> dict[str, float]:
    """Filter violations, wrong result counts (not min(k, matches)) and duplicate ids."""
    m = len(ids)
    valid = ids >= 0
    if work.masks is None:
        matches = np.full(m, n)
        violations = 0
    else:
        matches = work.masks[:m].sum(axis=1)
        hit = np.take_along_axis(work.masks[:m], np.where(valid, ids, 0), 1)
        violations = int((valid & ~hit).sum())
    wrong_count = int((valid.sum(axis=1) != np.minimum(K, matches)).sum())
    ordered = np.sort(np.where(valid, ids, -1 - np.arange(K)), axis=1)
    duplicates = int((np.diff(ordered, axis=1) == 0).sum())
    return {"violations": violations, "wrong_count": wrong_count, "duplicates": duplicates}
