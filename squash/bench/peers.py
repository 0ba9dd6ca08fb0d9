"""The peers of ``squash bench search``: faiss IVF-Flat and IVF-SQ8, hnswlib and a numpy pre-filter scan.

Every peer pays for its filter inside the timed region: a bitmap built from the raw attribute columns per
query (numpy comparisons over all N rows). The peers search one query per call when filtered (their
selectors are per query) and in batches of BATCH when not. Builds use every core; searches one thread.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.bench.workloads import Columns, Filter, Ids, K, evaluate
from squash.index import Index

# Points are bounded by time; at least this many queries are measured per point.
MIN_QUERIES = 20
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
PEERS = ("faiss IVF-Flat", "faiss IVF-SQ8", "hnswlib", "numpy pre-filter + exact")


@dataclass
class Run:
    """What one sweep setting returned: ids of the first ``len(ids)`` queries and the time they took."""

    ids: Ids
    seconds: float
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class System:
    """A built index: its sweep settings in series, how to run one, build time and memory per vector.

    Each series is swept in order until a point is accurate enough or the series' time is spent.
    """

    name: str
    series: list[list[tuple[str, Any]]]
    run: Callable[[Any, NDArray[np.float32], list[Filter], float], Run]
    build_s: float
    bytes_per_vector: float
    note: str = ""
    index: Index | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting by label."""
        return {label: setting for series in self.series for label, setting in series}


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
    return System(name, [settings], run, build_s, size, note)


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
    return System("hnswlib", [[(f"ef={e}", e) for e in efs]], run, build_s, size, note)


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
    return System("numpy pre-filter + exact", [[("exact", None)]], run, build_s, size)
