"""``squash bench search``: filtered QPS against recall@10, Squash next to faiss IVF, hnswlib and numpy.

On Fashion-MNIST (real labels, correlated numeric attributes) and on a synthetic clustered N x 128
set with four uniform attributes, at selectivities 100%, 10%, 1% and 0.1%, each query with its own
filter. Every system pays for its filter inside the timed region: the peers build a bitmap from the
raw attribute columns per query (numpy comparisons over all N rows), Squash takes the filter dicts.
The peers search one query per call (their selectors are per query); Squash takes the batch with a
list of per-query filters, which is its API. Builds use every core; every search runs on one thread.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from squash.bench.common import environment_header, markdown_table, recall_at_k
from squash.datasets import Dataset, shared_dataset, synthetic_clustered
from squash.index import Index

K = 10
TARGETS = (0.90, 0.95, 0.99)
# A sweep stops once a point reaches this recall: more effort can only be slower.
ENOUGH = 0.995
# Points are bounded by time; at least this many queries are measured per point.
MIN_QUERIES = 20
# One system's sweep on one workload stops after this many point budgets.
SWEEP_POINT_BUDGETS = 10
# Queries per call when a system can answer a batch: Squash always, the peers when the workload has no filter
# (a per-query filter needs its own call in faiss and hnswlib).
BATCH = 200
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_MIN_EF_CONSTRUCTION = 40
# HNSW insertion slows as the graph grows (~log n), so the first tenth under-predicts the rest: 1.3 let a
# 1M build at ef_construction=200 pass its 5-minute budget at 800k vectors.
HNSW_GROWTH = 2.0
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
EFS = (10, 20, 40, 80, 160, 320, 640)
# Squash knobs, roughly in increasing cost: probe (fine lists per query) and probe_matches (matches a
# filtered query scans for) set the candidates, rerank_depth how many of them are ranked exactly;
# centroid_factor adds partitions for filtered queries. Steps are finer at the cheap end, where lists of
# up to 768 rows put recall 0.95 between 4 and 16 lists on clustered data.
SQUASH_SWEEP: tuple[dict[str, Any], ...] = (
    {"probe": 4, "probe_matches": 30, "rerank_depth": 20},
    {"probe": 4, "probe_matches": 30, "rerank_depth": 40},
    {"probe": 6, "probe_matches": 45, "rerank_depth": 30},
    {"probe": 8, "probe_matches": 60, "rerank_depth": 20},
    {"probe": 8, "probe_matches": 60, "rerank_depth": 40},
    {"probe": 12, "probe_matches": 90, "rerank_depth": 30},
    {"probe": 16, "probe_matches": 120, "rerank_depth": 30},
    {"probe": 24, "probe_matches": 200, "rerank_depth": 40},
    {"probe": 32, "probe_matches": 300, "rerank_depth": 40},
    {"probe": 48, "probe_matches": 400, "rerank_depth": 50},
    {"probe": 64, "probe_matches": 600, "rerank_depth": 60},
    {"probe": 128, "probe_matches": 1000, "centroid_factor": 1.5, "rerank_depth": 80},
    {"probe": 256, "probe_matches": 2000, "centroid_factor": 2.0, "rerank_depth": 120},
)
QUICK_SWEEP = tuple(knobs for knobs in SQUASH_SWEEP if knobs["probe"] in (8, 16, 32, 64))

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


@dataclass
class Point:
    """One measured sweep setting; ``info`` holds engine timings and result checks."""

    label: str
    recall: float
    qps: float
    queries: int
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """What one sweep setting returned: ids of the first ``len(ids)`` queries and the time they took."""

    ids: Ids
    seconds: float
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class System:
    """A built index: its sweep settings, how to run one, build time and memory per vector."""

    name: str
    settings: list[tuple[str, Any]]
    run: Callable[[Any, NDArray[np.float32], list[Filter], float], Run]
    build_s: float
    bytes_per_vector: Callable[[], float]
    note: str = ""
    index: Index | None = None


# ---------------------------------------------------------------- filters and workloads


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


# ---------------------------------------------------------------- systems


def _per_query(
    search_one: Callable[[NDArray[np.float32], NDArray[np.bool_] | None], Ids],
    queries: NDArray[np.float32],
    filters: list[Filter],
    columns: Columns,
    budget: float,
) -> Run:
    """Time one query at a time, bitmap included, until every query ran or the budget is spent."""
    ids = np.full((len(queries), K), -1, dtype=np.int64)
    start = time.perf_counter()
    done = 0
    while done < len(queries):
        ids[done] = search_one(queries[done], evaluate(filters[done], columns))
        done += 1
        if done >= MIN_QUERIES and time.perf_counter() - start > budget:
            break
    return Run(ids[:done], time.perf_counter() - start)


def _timed(
    search_one: Callable[[NDArray[np.float32], NDArray[np.bool_] | None], Ids],
    search_batch: Callable[[NDArray[np.float32]], Ids],
    queries: NDArray[np.float32],
    filters: list[Filter],
    columns: Columns,
    budget: float,
) -> Run:
    """Unfiltered workloads in batches of BATCH, filtered ones one query at a time (see BATCH)."""
    if filters[0] is not None:
        return _per_query(search_one, queries, filters, columns, budget)
    ids = np.full((len(queries), K), -1, dtype=np.int64)
    start = time.perf_counter()
    done = 0
    while done < len(queries):
        ids[done : done + BATCH] = search_batch(queries[done : done + BATCH])
        done = min(len(queries), done + BATCH)
        if done >= MIN_QUERIES and time.perf_counter() - start > budget:
            break
    return Run(ids[:done], time.perf_counter() - start)


def _padded(found: NDArray[np.integer]) -> Ids:
    out = np.full(K, -1, dtype=np.int64)
    out[: len(found)] = found
    return out


def _faiss_system(
    name: str, index: Any, columns: Columns, nlist: int, build_s: float, size: float, note: str
) -> System:
    import faiss

    def search_one(q: NDArray[np.float32], mask: NDArray[np.bool_] | None, nprobe: int) -> Ids:
        if mask is None:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        else:
            bitmap = np.packbits(mask, bitorder="little")
            params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBitmap(bitmap), nprobe=nprobe)
        return index.search(q[None], K, params=params)[1][0]

    def search_batch(q: NDArray[np.float32], nprobe: int) -> Ids:
        return index.search(q, K, params=faiss.SearchParametersIVF(nprobe=nprobe))[1]

    def run(nprobe: int, q: NDArray[np.float32], filters: list[Filter], budget: float) -> Run:
        return _timed(
            lambda x, m: search_one(x, m, nprobe), lambda x: search_batch(x, nprobe), q, filters, columns, budget
        )

    # Ending at nprobe = nlist lets the curve reach an exhaustive (for IVF-Flat, exact) scan.
    nprobes = [p for p in NPROBES if p < nlist] + [nlist]
    settings: list[tuple[str, Any]] = [(f"nprobe={p}", p) for p in nprobes]
    return System(name, settings, run, build_s, lambda: size, note)


def build_faiss(base: NDArray[np.float32], columns: Columns, attr_bytes: float, seed: int) -> list[System]:
    """IVF-Flat and IVF-SQ8 sharing one coarse quantizer (nlist ~ 4 sqrt(N), trained on a sample)."""
    import faiss

    n, d = base.shape
    nlist = max(1, round(4 * math.sqrt(n)))
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    sample = base[np.sort(rng.choice(n, size=min(n, 32 * nlist), replace=False))]
    quantizer = faiss.IndexFlatL2(d)
    flat = faiss.IndexIVFFlat(quantizer, d, nlist)
    flat.cp.seed = seed
    flat.train(sample)
    trained = time.perf_counter() - start
    sq8 = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit)
    sq8.train(sample)
    # One assignment serves both indexes: they share the quantizer.
    _, assign = quantizer.search(base, 1)
    assign = np.ascontiguousarray(assign.ravel())
    shared = time.perf_counter() - start
    note = f"nlist={nlist}, quantizer trained on {len(sample):,} in {trained:.0f} s (shared)"
    systems = []
    for name, index in (("faiss IVF-Flat", flat), ("faiss IVF-SQ8", sq8)):
        t = time.perf_counter()
        index.add_core(n, faiss.swig_ptr(base), None, faiss.swig_ptr(assign))
        size = len(faiss.serialize_index(index)) / n + attr_bytes
        systems.append(_faiss_system(name, index, columns, nlist, shared + time.perf_counter() - t, size, note))
    return systems


def build_hnswlib(
    base: NDArray[np.float32], columns: Columns, attr_bytes: float, efs: Sequence[int], budget_s: float, seed: int
) -> System | str:
    """hnswlib with M=16, restarting with a lower ef_construction while the build is projected to overrun.

    Returns the reason instead when even the lowest ef_construction overruns the budget.
    """
    import hnswlib

    n, d = base.shape
    chunk = max(1, n // 10)
    efc = HNSW_EF_CONSTRUCTION
    probes = []
    # The budget covers every attempt, so a restart only gets the time left.
    deadline = time.perf_counter() + budget_s
    while True:
        index = hnswlib.Index(space="l2", dim=d)
        index.init_index(max_elements=n, M=HNSW_M, ef_construction=efc, random_seed=seed)
        start = time.perf_counter()
        restart = False
        for first in range(0, n, chunk):
            rows = np.arange(first, min(n, first + chunk))
            index.add_items(base[rows], rows, num_threads=os.cpu_count() or 1)
            now = time.perf_counter()
            elapsed, left = now - start, deadline - now
            added = int(rows[-1]) + 1
            remaining = elapsed * (n - added) / added * (HNSW_GROWTH if added < n else 1.0)
            # Re-projected after every chunk: on a shared machine the rate changes during the build.
            if remaining > left and efc > HNSW_MIN_EF_CONSTRUCTION:
                projected = elapsed + remaining
                probes.append(f"ef_construction={efc} projected {projected:.0f} s")
                efc = max(HNSW_MIN_EF_CONSTRUCTION, int(efc * (left - 0.1 * budget_s) / projected))
                restart = True
                break
            if left < 0:
                return f"hnswlib skipped: build passed {budget_s:.0f} s at {added:,} of {n:,} vectors"
        if not restart:
            break
    build_s = time.perf_counter() - start

    def search_one(q: NDArray[np.float32], mask: NDArray[np.bool_] | None) -> Ids:
        # A bytes object indexes to 0/1 with no numpy scalar per visited node.
        accept = None if mask is None else mask.tobytes().__getitem__
        try:
            return index.knn_query(q, K, num_threads=1, filter=accept)[0][0].astype(np.int64)
        except RuntimeError:
            # hnswlib raises when it finds fewer than k matches: count that as an empty answer.
            return np.full(K, -1, dtype=np.int64)

    def search_batch(q: NDArray[np.float32]) -> Ids:
        return index.knn_query(q, K, num_threads=1)[0].astype(np.int64)

    def run(ef: int, q: NDArray[np.float32], filters: list[Filter], budget: float) -> Run:
        index.set_ef(ef)
        return _timed(search_one, search_batch, q, filters, columns, budget)

    note = f"M={HNSW_M}, ef_construction={efc}"
    if probes:
        note += " (" + "; ".join(probes) + ", over budget)"
    size = index.index_file_size() / n + attr_bytes
    return System("hnswlib", [(f"ef={e}", e) for e in efs], run, build_s, lambda: size, note)


def build_numpy(base: NDArray[np.float32], columns: Columns, attr_bytes: float) -> System:
    """Pre-filter, then an exact float32 scan of the matching rows."""
    start = time.perf_counter()
    norms = (base * base).sum(axis=1)
    build_s = time.perf_counter() - start

    def search_one(q: NDArray[np.float32], mask: NDArray[np.bool_] | None) -> Ids:
        rows = None if mask is None else np.flatnonzero(mask)
        dist = norms - 2 * (base @ q) if rows is None else norms[rows] - 2 * (base[rows] @ q)
        kk = min(K, len(dist))
        if kk == 0:
            return _padded(np.empty(0, dtype=np.int64))
        top = np.argpartition(dist, kk - 1)[:kk]
        top = top[np.argsort(dist[top], kind="stable")]
        return _padded(top if rows is None else rows[top])

    def run(_: None, q: NDArray[np.float32], filters: list[Filter], budget: float) -> Run:
        return _per_query(search_one, q, filters, columns, budget)

    size = base.itemsize * base.shape[1] + norms.itemsize + attr_bytes
    return System("numpy pre-filter + exact", [("exact", None)], run, build_s, lambda: size)


def squash_bytes(index: Index) -> float:
    """PartitionData plus what the warm partitions derive: prefix arrays, posting lists, meta codes."""
    total = sum(a.nbytes for a in index.meta.attr_codes)
    for pid in range(index.meta.n_partitions):
        part = index.partition(pid)
        total += part.nbytes
    return total / len(index)


_SHORT = {
    "probe": "probe",
    "probe_matches": "pm",
    "centroid_factor": "cf",
    "max_partitions": "mp",
    "rerank_depth": "depth",
}


def knob_label(knobs: dict[str, Any]) -> str:
    """Short label of a sweep setting, e.g. ``probe=8 pm=60 depth=40``."""
    return " ".join(f"{_SHORT.get(k, k)}={v}" for k, v in knobs.items())


def build_squash(base: NDArray[Any], columns: Columns, sweep: Sequence[dict[str, Any]], seed: int) -> System:
    start = time.perf_counter()
    index = Index.build(base, columns, seed=seed)
    for pid in range(index.meta.n_partitions):
        index.partition(pid)  # a warm index: partitions loaded and prepared before any timing
    build_s = time.perf_counter() - start
    settings: list[tuple[str, Any]] = []
    for knobs in sweep:
        if index.meta.n_partitions == 1:
            # One partition: only the list and pruning knobs change anything.
            knobs = {k: v for k, v in knobs.items() if k not in ("centroid_factor", "max_partitions")}
        label = knob_label(knobs)
        if label not in [s[0] for s in settings]:
            settings.append((label, knobs))

    def run(knobs: dict[str, Any], q: NDArray[np.float32], filters: list[Filter], budget: float) -> Run:
        ids = np.full((len(q), K), -1, dtype=np.int64)
        info = {"plan_s": 0.0, "scan_s": 0.0, "filter_s": 0.0, "bound_s": 0.0, "rerank_s": 0.0}
        stats: dict[str, float] = {}
        start = time.perf_counter()
        done = 0
        while done < len(q):
            rows = slice(done, done + BATCH)
            chunk = filters[rows]
            result = index.search(q[rows], K, None if chunk[0] is None else chunk, **knobs)
            ids[rows] = result.ids
            done += len(result)
            for name in info:
                info[name] += result.info[name]
            for name, values in result.stats.items():
                stats[name] = stats.get(name, 0.0) + float(values.sum())
            if done >= MIN_QUERIES and time.perf_counter() - start > budget:
                break
        seconds = time.perf_counter() - start
        info.update({f"mean {name}": value / done for name, value in stats.items()})
        return Run(ids[:done], seconds, info)

    note = f"P={index.meta.n_partitions}, 4 bits/dim"
    return System("Squash", settings, run, build_s, lambda: squash_bytes(index), note, index)


# ---------------------------------------------------------------- measuring


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


def measure(
    system: System, label: str, setting: Any, work: Workload, queries: NDArray[np.float32], budget: float, n: int
) -> Point:
    """One timed run of one sweep setting."""
    run = system.run(setting, queries, work.filters, budget)
    m = len(run.ids)
    point = Point(label, recall_at_k(run.ids, work.truth[:m], K), m / run.seconds, m, dict(run.info))
    if system.index is not None:
        point.info.update(check_results(run.ids, work, n))
    return point


def sweep(system: System, work: Workload, queries: NDArray[np.float32], budget: float, n: int) -> list[Point]:
    """Measure settings in order until one reaches ENOUGH recall or the sweep's time is spent."""
    points = []
    spent = 0.0
    for label, setting in system.settings:
        point = measure(system, label, setting, work, queries, budget, n)
        spent += point.queries / point.qps
        points.append(point)
        print(
            f"    {system.name:26s} {label:28s} recall {point.recall:.4f}  QPS {point.qps:9.1f}  ({point.queries} q)",
            flush=True,
        )
        if point.recall >= ENOUGH or spent > SWEEP_POINT_BUDGETS * budget:
            break
    return points


def retime(
    system: System, work: Workload, queries: NDArray[np.float32], budget: float, n: int, points: list[Point]
) -> None:
    """Run every point of a sweep again and keep, per point, the faster of the two runs."""
    settings = dict(system.settings)
    for j, point in enumerate(points):
        again = measure(system, point.label, settings[point.label], work, queries, budget, n)
        if again.qps > point.qps:
            points[j] = again
    print(f"    {system.name:26s} re-timed: QPS {', '.join(f'{p.qps:.0f}' for p in points)}", flush=True)


def frontier(points: Sequence[Point]) -> list[Point]:
    """Pareto frontier, ascending recall (so descending QPS)."""
    best = -1.0
    keep = []
    for p in sorted(points, key=lambda p: (-p.recall, -p.qps)):
        if p.qps > best:
            keep.append(p)
            best = p.qps
    return keep[::-1]


def qps_at(points: Sequence[Point], target: float) -> float | None:
    """QPS at ``target`` recall, log-interpolated between the frontier points around it."""
    front = frontier(points)
    for i, p in enumerate(front):
        if p.recall >= target:
            if i == 0:
                return p.qps
            lo = front[i - 1]
            t = (target - lo.recall) / (p.recall - lo.recall)
            return math.exp(math.log(lo.qps) + t * (math.log(p.qps) - math.log(lo.qps)))
    return None


def point_at(points: Sequence[Point], target: float) -> Point | None:
    """The fastest measured point reaching ``target``."""
    reached = [p for p in points if p.recall >= target]
    return max(reached, key=lambda p: p.qps) if reached else None


# ---------------------------------------------------------------- reporting


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def results_table(work_curves: list[tuple[Workload, dict[str, list[Point]]]]) -> str:
    headers = ["workload", "system", *[f"QPS@{t}" for t in TARGETS], "max recall", "queries/point"]
    rows = []
    for work, curves in work_curves:
        for name, points in curves.items():
            rows.append(
                [
                    work.label,
                    name,
                    *[_fmt(qps_at(points, t)) for t in TARGETS],
                    f"{max(p.recall for p in points):.4f}",
                    _span(sorted({p.queries for p in points})),
                ]
            )
        ratios = []
        for t in TARGETS:
            ours = qps_at(curves["Squash"], t)
            peers = [q for name, pts in curves.items() if name != "Squash" and (q := qps_at(pts, t)) is not None]
            ratios.append("—" if ours is None or not peers else f"{ours / max(peers):.2f}x")
        rows.append([work.label, "**Squash / best peer**", *ratios, "", ""])
    return markdown_table(headers, rows)


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None:
        return "below 0.95"
    return "no peer value" if theirs is None else f"{ours / theirs:.2f}x"


PEERS = ("faiss IVF-Flat", "faiss IVF-SQ8", "hnswlib", "numpy pre-filter + exact")
SUMMARY_HEADERS = ["dataset", "workload", "Squash", *PEERS]
SUMMARY_HEADERS += ["Squash / best peer", "Squash / IVF-SQ8", "Squash / hnswlib"]


def summary_rows(
    name: str, work_curves: list[tuple[Workload, dict[str, list[Point]]]], target: float = 0.95
) -> list[list[str]]:
    """One row per workload: QPS at ``target`` recall per system and Squash's ratios (the headline table)."""
    rows = []
    for work, curves in work_curves:
        qps = {system: qps_at(points, target) for system, points in curves.items()}
        peers = [q for system, q in qps.items() if system != "Squash" and q is not None]
        rows.append(
            [
                name,
                f"{work.selectivity:.1%} {work.label}",
                *(_fmt(qps.get(system)) for system in ("Squash", *PEERS)),
                _ratio(qps["Squash"], max(peers) if peers else None),
                _ratio(qps["Squash"], qps.get("faiss IVF-SQ8")),
                _ratio(qps["Squash"], qps.get("hnswlib")),
            ]
        )
    return rows


def time_table(work_curves: list[tuple[Workload, dict[str, list[Point]]]]) -> str:
    """Where Squash's time goes at its fastest point with recall >= 0.95."""
    headers = [
        "workload",
        "knobs",
        "recall",
        "QPS",
        "plan %",
        "filter %",
        "bounds %",
        "re-rank %",
        "rest %",
        "partitions",
        "filtered",
        "prefix kept",
        "reranked",
        "exact scans",
        "checks (viol/count/dup)",
    ]
    rows = []
    for work, curves in work_curves:
        p = point_at(curves["Squash"], 0.95)
        if p is None:
            rows.append([work.label, "never reaches 0.95", *[""] * 13])
            continue
        total = p.queries / p.qps
        shares = [p.info[name] / total for name in ("plan_s", "filter_s", "bound_s", "rerank_s")]
        rows.append(
            [
                work.label,
                p.label,
                f"{p.recall:.4f}",
                _fmt(p.qps),
                *(f"{100 * share:.0f}" for share in shares),
                f"{100 * (1 - sum(shares)):.0f}",
                f"{p.info['mean partitions']:.2f}",
                f"{p.info['mean filtered']:,.0f}",
                f"{p.info['mean prefix']:,.0f}",
                f"{p.info['mean reranked']:,.0f}",
                f"{p.info['mean exact_scans']:.2f}",
                f"{p.info['violations']:.0f}/{p.info['wrong_count']:.0f}/{p.info['duplicates']:.0f}",
            ]
        )
    return markdown_table(headers, rows)


def profile_top(index: Index, queries: NDArray[np.float32], work: Workload, knobs: dict[str, Any]) -> str:
    """cProfile top-10 by own time of one Squash search call."""
    chunk = work.filters[: len(queries)]
    profiler = cProfile.Profile()
    profiler.enable()
    index.search(queries, K, None if chunk[0] is None else chunk, **knobs)
    profiler.disable()
    stats = pstats.Stats(profiler).sort_stats("tottime")
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    lines = []
    for func in stats.fcn_list[:10]:  # type: ignore[attr-defined]
        calls, _, tottime, cumtime, _ = stats.stats[func]  # type: ignore[attr-defined]
        path, line, name = func
        where = f"{Path(path).name}:{line}({name})" if line else name
        lines.append(f"    {tottime:7.3f} s {100 * tottime / total:5.1f}%  cum {cumtime:7.3f} s  {calls:>7}  {where}")
    return "\n".join(lines)


def plot(
    out: Path, dataset: str, selectivity: float, work_curves: list[tuple[Workload, dict[str, list[Point]]]]
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(work_curves), figsize=(6 * len(work_curves), 4.5), squeeze=False)
    for ax, (work, curves) in zip(axes[0], work_curves, strict=True):
        for name, points in curves.items():
            # The frontier as a line, every measured point as a faint marker of the same colour.
            front = frontier(points)
            style = {"linewidth": 2.5, "color": "black"} if name == "Squash" else {}
            (line,) = ax.plot([p.recall for p in front], [p.qps for p in front], marker="o", label=name, **style)
            ax.scatter([p.recall for p in points], [p.qps for p in points], color=line.get_color(), alpha=0.3, s=12)
        for t in TARGETS:
            ax.axvline(t, color="grey", linewidth=0.5, linestyle=":")
        ax.set_yscale("log")
        ax.set_xlim(0.5, 1.005)
        ax.set_xlabel(f"recall@{K}")
        ax.set_ylabel("queries per second (1 thread)")
        ax.set_title(f"{dataset}, {selectivity:.1%}: {work.label}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{dataset}-{selectivity * 100:g}pct.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- driver


def bench_dataset(
    data: Dataset, workloads: list[Workload], args: argparse.Namespace, report: list[str], summary: list[list[str]]
) -> None:
    import faiss

    base = np.ascontiguousarray(data.base, dtype=np.float32)
    queries = np.ascontiguousarray(data.queries[: args.queries], dtype=np.float32)
    columns = data.attributes
    n = base.shape[0]
    attr_bytes = sum(c.nbytes for c in columns.values()) / n
    norms = (base.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    print(f"\n## {data.name}: {n:,} x {base.shape[1]}, {len(queries)} queries\n", flush=True)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    systems: list[System] = []
    for build in (
        lambda: build_squash(data.base, columns, QUICK_SWEEP if args.quick else SQUASH_SWEEP, args.seed),
        lambda: build_faiss(base, columns, attr_bytes, args.seed),
        lambda: build_hnswlib(
            base, columns, attr_bytes, EFS[::2] if args.quick else EFS, args.hnsw_build_minutes * 60, args.seed
        ),
        lambda: build_numpy(base, columns, attr_bytes),
    ):
        built = build()
        for system in built if isinstance(built, list) else [built]:
            if isinstance(system, str):
                print(system)
                report.append(f"- {system}")
                continue
            systems.append(system)
            print(f"built {system.name} in {system.build_s:.1f} s {system.note}", flush=True)
    faiss.omp_set_num_threads(1)

    results: list[tuple[Workload, dict[str, list[Point]]]] = []
    with threadpool_limits(1):
        for work in workloads:
            start = time.perf_counter()
            ground_truth(base, norms, queries, columns, work)
            print(
                f"\n  {work.selectivity:.1%} {work.name}: measured selectivity {work.share:.3%}, "
                f"truth in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
            curves = {s.name: sweep(s, work, queries, args.point_budget, n) for s in systems}
            # This machine's speed drifts by 30-60% over minutes: each repeat re-times every system's points
            # in turn (systems interleaved, not back to back) and each point keeps its fastest run.
            for _ in range(args.repeats - 1):
                for s in systems:
                    retime(s, work, queries, args.point_budget, n, curves[s.name])
            results.append((work, curves))
            work.masks = None  # (nq, N) booleans: free them before the next workload
        squash = systems[0]
        index = squash.index
        assert index is not None
        report.append(f"\n## {data.name}: {n:,} x {base.shape[1]}, {len(queries)} held-out queries\n")
        report.append(
            markdown_table(
                ["system", "build s", "bytes/vector", "notes"],
                [[s.name, f"{s.build_s:.1f}", f"{s.bytes_per_vector():,.0f}", s.note] for s in systems],
            )
        )
        report.append(
            "\nbytes/vector: faiss = serialize_index, hnswlib = index_file_size, numpy = float32 rows + norms, "
            "each plus the raw attribute columns their bitmaps are built from; Squash = PartitionData "
            "(codes, raw vectors for the re-rank, raw and coded attributes) + prefix arrays + posting lists."
        )
        out = Path(args.out)
        for s in sorted({w.selectivity for w, _ in results}, reverse=True):
            group = [(w, c) for w, c in results if w.selectivity == s]
            report.append(f"\n### {data.name}, selectivity {s:.1%}: QPS at recall@{K} (1 thread)\n")
            report.append(results_table(group))
            report.append(f"\n![{data.name} {s:.1%}]({plot(out, data.name, s, group).name})")
        summary += summary_rows(data.name, results)
        report.append(f"\n### {data.name}: where Squash's time goes at its fastest point with recall >= 0.95\n")
        report.append(time_table(results))
        report.append(
            "\nShares of wall time: plan = partition and fine-list selection; filter = filter evaluation (codes, "
            "posting lists, exact checks) and list choice; bounds = pruning levels (prefix bounds over the "
            "scanned lists, Hamming and OSQ bounds of candidate sets); re-rank = exact distances and top-k; "
            "rest = query rotation, merging and the caller's loop. "
            "checks: filter violations / queries without exactly min(k, matches) results / duplicate ids, "
            "summed over the measured queries."
        )
        bad = [
            (w.name, p.label, p.info)
            for w, c in results
            for p in c["Squash"]
            if p.info["violations"] or p.info["wrong_count"] or p.info["duplicates"]
        ]
        for name, label, info in bad:
            report.append(f"- CHECK FAILED {name} {label}: {info}")
        for s in sorted({w.selectivity for w, _ in results}, reverse=True):
            work, curves = next((w, c) for w, c in results if w.selectivity == s)
            p = point_at(curves["Squash"], 0.95) or max(curves["Squash"], key=lambda p: p.recall)
            knobs = dict(squash.settings)[p.label]
            sample = queries[: min(len(queries), BATCH)]
            report.append(f"\ncProfile, {len(sample)} queries, {work.label}, {p.label}:\n")
            report.append("```\n" + profile_top(index, sample, work, knobs) + "\n```")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squash bench search", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (default 1M)")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries per point")
    parser.add_argument("--point-budget", type=float, default=6.0, help="seconds per sweep point at most")
    # 8 minutes: the 1M build at ef_construction=200 takes 4.5-5.5 minutes on this 2-core machine.
    parser.add_argument("--hnsw-build-minutes", type=float, default=8.0, help="hnswlib build budget")
    parser.add_argument("--dataset", choices=("all", "fashion", "synthetic"), default="all")
    parser.add_argument("--out", default="bench-results/search", help="directory for search.md and plots")
    parser.add_argument("--quick", action="store_true", help="N=100k, 100 queries, fewer sweep points")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs per sweep point, systems interleaved; the fastest counts"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        args.n, args.queries, args.point_budget = 100_000, 100, 3.0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    header = environment_header(
        {
            "k": K,
            "n": args.n,
            "queries": args.queries,
            "point_budget_s": args.point_budget,
            "quick": args.quick,
            "repeats (fastest kept)": args.repeats,
            "seed": args.seed,
            "search threads": 1,
        }
    )
    print(header)
    report = ["# squash bench search", "", "```", header, "```"]
    summary: list[list[str]] = []
    started = time.perf_counter()
    if args.dataset in ("all", "fashion"):
        fashion = shared_dataset("fashion-mnist-784")
        if fashion is None:
            print("skipping fashion-mnist-784: ../shared/data is absent")
            report.append("\nfashion-mnist-784 skipped: ../shared/data is absent")
        else:
            bench_dataset(fashion, fashion_workloads(fashion, args.queries, args.seed), args, report, summary)
    if args.dataset in ("all", "synthetic"):
        start = time.perf_counter()
        synth = synthetic_clustered(args.n, 128, n_queries=args.queries, attributes=4, seed=args.seed)
        print(f"\ngenerated {synth.name} in {time.perf_counter() - start:.1f} s")
        bench_dataset(synth, synthetic_workloads(synth, args.queries, args.seed), args, report, summary)
    total = f"total run time {time.perf_counter() - started:.0f} s"
    report.append(f"\n{total}")
    text = "\n".join(report)
    print("\n" + text)
    (Path(args.out) / "search.md").write_text(text + "\n")
    headline = [
        f"QPS at recall@{K} = 0.95, one thread, each query with its own filter, fastest of {args.repeats} "
        f'interleaved runs per point ("—": never reached; {total}; full report: search.md).\n',
        markdown_table(SUMMARY_HEADERS, summary),
    ]
    (Path(args.out) / "summary.md").write_text("\n".join(headline) + "\n")
    print("\n" + "\n".join(headline))
    return 0
