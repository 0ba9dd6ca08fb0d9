"""``squash bench search``: filtered QPS against recall@10, Squash next to faiss IVF, hnswlib and numpy.

On Fashion-MNIST (real labels, correlated numeric attributes), Debian package descriptions embedded by
e5-small (real text embeddings, real package metadata), a generated 768-d flat-spectrum set and a
synthetic clustered N x 128 set, at selectivities 100%, 10%, 1% and 0.1%, each query with its own filter.
Every system pays for its filter inside the timed region: the peers build a bitmap from the raw attribute
columns per query (numpy comparisons over all N rows), Squash takes the filter dicts. The peers search one
query per call (their selectors are per query); Squash takes the batch with a list of per-query filters,
which is its API. Builds use every core; every search runs on one thread.

Squash's curve holds its point without knobs (what the build's calibration chooses), the calibration's
effort ladder, the exact search and hand-set knob points. Per dataset the report adds Squash's bytes per
vector (stored objects, warm prepared partitions) and the cost of the first search after opening.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from squash.bench.common import environment_header, markdown_table, recall_at_k
from squash.bench.peers import BATCH, EFS, MIN_QUERIES, Run, System, build_faiss, build_hnswlib, build_numpy
from squash.bench.search_report import (
    DEFAULT,
    SUMMARY_HEADERS,
    Curves,
    Footprint,
    Point,
    first_query_table,
    footprint_table,
    plot,
    point_at,
    profile_top,
    results_table,
    summary_rows,
    time_table,
)
from squash.bench.workloads import (
    Columns,
    Filter,
    K,
    Workload,
    check_results,
    debian_workloads,
    fashion_workloads,
    ground_truth,
    synthetic_workloads,
)
from squash.datasets import Dataset, shared_dataset, synthetic_clustered, synthetic_flat_spectrum
from squash.format.reader import open_index
from squash.index import Index
from squash.pipeline import build_index
from squash.search.effort import TOP_RUNG, rung_knobs
from squash.search.prepared import PreparedPartition

# A sweep series stops once a point reaches this recall: more effort can only be slower.
ENOUGH = 0.995
# One series of one system's sweep on one workload stops after this many point budgets.
SWEEP_POINT_BUDGETS = 10
# Warm searches whose median the first search after opening is compared with.
WARM_SEARCHES = 5
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


DATASETS = ("fashion", "debian", "flat", "synthetic")
SHARED = {"fashion": "fashion-mnist-784", "debian": "debian-packages-e5small-384"}
WORKLOADS: dict[str, Callable[[Dataset, int, int], list[Workload]]] = {
    "fashion": fashion_workloads,
    "debian": debian_workloads,
    "flat": synthetic_workloads,
    "synthetic": synthetic_workloads,
}
# Sizes: full run, then --quick (every dataset cut to its first rows, for a smoke run).
FULL = {"n": 1_000_000, "flat_n": 100_000, "rows": None, "queries": 200, "point_budget": 6.0, "repeats": 2}
QUICK = {"n": 10_000, "flat_n": 10_000, "rows": 10_000, "queries": 50, "point_budget": 0.5, "repeats": 1}


# ---------------------------------------------------------------- Squash


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


def squash_series(partitions: int, sweep: Sequence[dict[str, Any]], quick: bool) -> list[list[tuple[str, Any]]]:
    """The default (no knobs), the calibration's effort ladder, the exact search, then the hand-set points."""
    rungs = range(0, TOP_RUNG + 1, 2 if quick else 1)
    ladder = [(f"rung {r}: {knob_label(rung_knobs(r))}", rung_knobs(r)) for r in rungs]
    explicit: list[tuple[str, Any]] = []
    for knobs in sweep:
        if partitions == 1:
            # One partition: only the list and pruning knobs change anything.
            knobs = {k: v for k, v in knobs.items() if k not in ("centroid_factor", "max_partitions")}
        label = knob_label(knobs)
        if label not in [s[0] for s in explicit]:
            explicit.append((label, knobs))
    return [[(DEFAULT, {})], ladder, [("exact", {"exact": True})], explicit]


def warm_up(index: Index) -> float:
    """Load and prepare every partition (posting lists included), as a warm container holds them; returns
    the bytes that takes per vector (the sum of `PreparedPartition.nbytes`, what its cache counts)."""
    return sum(index.partition(pid).nbytes for pid in range(index.meta.n_partitions)) / len(index)


def build_squash(
    name: str, base: NDArray[Any], columns: Columns, root: Path, args: argparse.Namespace
) -> tuple[System, Footprint, str]:
    """Build into a local store, open it and warm it; the system, its footprint and the store's URI."""
    report = build_index(str(root), base, columns, seed=args.seed)
    start = time.perf_counter()
    index = Index.open(report.uri, version=report.version)
    warm_bytes = warm_up(index)
    warmed = time.perf_counter() - start
    n = report.n_vectors

    def run(knobs: dict[str, Any], q: NDArray[np.float32], filters: list[Filter], budget: float) -> Run:
        ids = np.full((len(q), K), -1, dtype=np.int64)
        info = dict.fromkeys(("plan_s", "scan_s", "filter_s", "estimate_s", "rerank_s"), 0.0)
        estimate = 0.0
        stats: dict[str, float] = {}
        start = time.perf_counter()
        done = 0
        while done < len(q):
            rows = slice(done, done + BATCH)
            chunk = filters[rows]
            result = index.search(q[rows], K, None if chunk[0] is None else chunk, **knobs)
            ids[rows] = result.ids
            done += len(result)
            for key in info:
                info[key] += result.info[key]
            if result.recall_estimate is not None:
                estimate += float(np.nansum(result.recall_estimate))
            for key, values in result.stats.items():
                stats[key] = stats.get(key, 0.0) + float(values.sum())
            if done >= MIN_QUERIES and time.perf_counter() - start > budget:
                break
        seconds = time.perf_counter() - start
        info["estimate"] = estimate / done
        info.update({f"mean {key}": value / done for key, value in stats.items()})
        return Run(ids[:done], seconds, info)

    note = (
        f"P={report.n_partitions}, 4 bits/dim; objects written in {report.seconds['write']:.1f} s, "
        f"opened and warmed in {warmed:.1f} s"
    )
    series = squash_series(report.n_partitions, QUICK_SWEEP if args.quick else SQUASH_SWEEP, args.quick)
    build_s = report.seconds["read"] + report.seconds["build"]
    system = System("Squash", series, run, build_s, warm_bytes, note, index)
    stored = open_index(report.uri, report.version)
    ranged = sum(
        PreparedPartition(stored.load_partition(p, hold_vectors=False)).nbytes for p in range(stored.meta.n_partitions)
    )
    footprint = Footprint(name, (n, report.dim), sum(report.partition_bytes) / n, warm_bytes, ranged / n)
    return system, footprint, report.uri


def first_query(
    uri: str, queries: NDArray[np.float32], filters: list[Filter] | None
) -> tuple[float, float, float, float, float]:
    """Seconds of one batch: (open, first search on the freshly opened index, which loads and prepares the
    partitions it visits; loading and preparing every partition of another fresh one, its first search after
    that, the median warm search)."""
    start = time.perf_counter()
    index = Index.open(uri)
    opened = time.perf_counter()
    index.search(queries, K, filters)
    first = time.perf_counter()
    fresh = Index.open(uri)
    load_start = time.perf_counter()
    warm_up(fresh)
    loaded = time.perf_counter()
    fresh.search(queries, K, filters)
    after_load = time.perf_counter() - loaded
    warm = []
    for _ in range(WARM_SEARCHES):
        t = time.perf_counter()
        index.search(queries, K, filters)
        warm.append(time.perf_counter() - t)
    return opened - start, first - opened, loaded - load_start, after_load, float(np.median(warm))


# ---------------------------------------------------------------- measuring


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
    """Measure each series' settings in order until one reaches ENOUGH recall or the series' time is spent."""
    points = []
    for series in system.series:
        spent = 0.0
        for label, setting in series:
            point = measure(system, label, setting, work, queries, budget, n)
            spent += point.queries / point.qps
            points.append(point)
            print(
                f"    {system.name:26s} {label:40s} recall {point.recall:.4f}  QPS {point.qps:9.1f}  "
                f"({point.queries} q)",
                flush=True,
            )
            if point.recall >= ENOUGH or spent > SWEEP_POINT_BUDGETS * budget:
                break
    return points


def retime(
    system: System, work: Workload, queries: NDArray[np.float32], budget: float, n: int, points: list[Point]
) -> None:
    """Run every point of a sweep again and keep, per point, the faster of the two runs."""
    settings = system.settings
    for j, point in enumerate(points):
        again = measure(system, point.label, settings[point.label], work, queries, budget, n)
        if again.qps > point.qps:
            points[j] = again
    print(f"    {system.name:26s} re-timed: QPS {', '.join(f'{p.qps:.0f}' for p in points)}", flush=True)


# ---------------------------------------------------------------- driver


def bench_dataset(
    data: Dataset, workloads: list[Workload], args: argparse.Namespace, report: list[str], summary: list[list[str]]
) -> Footprint:
    """Build every system on one dataset, sweep them over its workloads, and write its part of the report."""
    import faiss

    base = np.ascontiguousarray(data.base, dtype=np.float32)
    queries = np.ascontiguousarray(data.queries[: args.queries], dtype=np.float32)
    columns = data.attributes
    n, d = base.shape
    attr_bytes = sum(c.nbytes for c in columns.values()) / n
    norms = (base.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    print(f"\n## {data.name}: {n:,} x {d}, {len(queries)} queries\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="squash-bench-search-") as root:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        squash, footprint, uri = build_squash(data.name, data.base, columns, Path(root) / "index", args)
        systems: list[System] = [squash]
        print(f"built Squash in {squash.build_s:.1f} s {squash.note}", flush=True)
        for build in (
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

        results: list[tuple[Workload, Curves]] = []
        with threadpool_limits(1):
            # A process's first search pays one-time costs: one untimed run per system keeps them off its first point.
            first = queries[:MIN_QUERIES]
            for s in systems:
                s.run(s.series[0][0][1], first, [None] * len(first), 0.0)
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
            batch = queries[: min(len(queries), BATCH)]
            one_pct = next(w for w in workloads if w.selectivity == 0.01)
            footprint.first_query["unfiltered"] = first_query(uri, batch, None)
            footprint.first_query[f"1% {one_pct.name}"] = first_query(uri, batch, one_pct.filters[: len(batch)])
            report_dataset(data.name, (n, d), len(queries), systems, results, footprint, batch, args, report)
    summary += summary_rows(data.name, results)
    return footprint


def report_dataset(
    name: str,
    shape: tuple[int, int],
    nq: int,
    systems: list[System],
    results: list[tuple[Workload, Curves]],
    footprint: Footprint,
    sample: NDArray[np.float32],
    args: argparse.Namespace,
    report: list[str],
) -> None:
    """One dataset's section of the full report: builds, footprint, curves per selectivity, time profiles."""
    squash = systems[0]
    assert squash.index is not None
    report.append(f"\n## {name}: {shape[0]:,} x {shape[1]}, {nq} held-out queries\n")
    report.append(
        markdown_table(
            ["system", "build s", "bytes/vector", "notes"],
            [[s.name, f"{s.build_s:.1f}", f"{s.bytes_per_vector:,.0f}", s.note] for s in systems],
        )
    )
    report.append(
        "\nbytes/vector: faiss = serialize_index, hnswlib = index_file_size, numpy = float32 rows + norms, "
        "each plus the raw attribute columns their bitmaps are built from; Squash = its warm prepared "
        "partitions (`PreparedPartition.nbytes`: codes, raw vectors for the re-rank, raw and coded attributes, "
        "posting lists of every attribute). Squash's build s excludes writing its objects."
    )
    report.append(f"\n### {name}: Squash's bytes per vector and its first search after opening\n")
    report.append(footprint_table([footprint]))
    report.append("")
    report.append(first_query_table([footprint]))
    report.append(
        f"\nobjects = the partition objects in the store; warm = the prepared partitions a warm processor "
        f"caches. first search = the first `search` of {len(sample)} queries on a freshly opened "
        f"`Index.open` (it loads and prepares the partitions it visits and the posting lists its filters use; "
        f"the local files are in the OS page cache) against the median of {WARM_SEARCHES} searches after it, "
        f"at default settings; first after load = the first search of an index whose partitions were all loaded "
        f"and prepared first (load s). Warm without vectors = a processor reading the raw vectors it re-ranks "
        f"by ranged reads (`RuntimeConfig.rerank_vectors`)."
    )
    out = Path(args.out)
    for s in sorted({w.selectivity for w, _ in results}, reverse=True):
        group = [(w, c) for w, c in results if w.selectivity == s]
        report.append(f"\n### {name}, selectivity {s:.1%}: QPS at recall@{K} (1 thread)\n")
        report.append(results_table(group))
        report.append(f"\n![{name} {s:.1%}]({plot(out, name, s, group).name})")
    report.append(
        f"\nSquash's curve takes every point it measured: {DEFAULT} (the effort the build's calibration chooses "
        "per kind of query, also its own row: QPS where its recall reaches the target, and that recall), "
        "the calibration's effort ladder (`squash.search.effort.rung_knobs`), the exact search and hand-set knobs."
    )
    report.append(f"\n### {name}: where Squash's time goes at its fastest point with recall >= 0.95\n")
    report.append(time_table(results))
    report.append(
        "\nShares of wall time: plan = partition and fine-list selection; filter = filter evaluation (codes, "
        "posting lists, exact checks) and list choice; estimates = scalar-code estimates of the "
        "scanned lists and candidate sets; re-rank = exact distances and top-k; "
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
    for work_name, label, info in bad:
        report.append(f"- CHECK FAILED {work_name} {label}: {info}")
    for s in sorted({w.selectivity for w, _ in results}, reverse=True):
        work, curves = next((w, c) for w, c in results if w.selectivity == s)
        p = point_at(curves["Squash"], 0.95) or max(curves["Squash"], key=lambda p: p.recall)
        report.append(f"\ncProfile, {len(sample)} queries, {work.label}, {p.label}:\n")
        report.append("```\n" + profile_top(squash.index, sample, work, squash.settings[p.label]) + "\n```")


def load(name: str, args: argparse.Namespace) -> Dataset | None:
    """One dataset at the run's size (None: a shared one that is absent)."""
    if name in SHARED:
        data = shared_dataset(SHARED[name])
        if data is None or args.rows is None:
            return data
        cut = {k: v[: args.rows] for k, v in data.attributes.items()}
        return Dataset(data.name, data.base[: args.rows], data.queries, cut, data.query_attributes)
    start = time.perf_counter()
    if name == "flat":
        data = synthetic_flat_spectrum(args.flat_n, n_queries=args.queries, seed=args.seed)
    else:
        data = synthetic_clustered(args.n, 128, n_queries=args.queries, attributes=4, seed=args.seed)
    print(f"\ngenerated {data.name} in {time.perf_counter() - start:.1f} s")
    return data


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="squash bench search", description=__doc__)
    parser.add_argument("--dataset", default="all", help=f"all, or comma-separated from {', '.join(DATASETS)}")
    quick = ", ".join(f"{k}={v}" for k, v in QUICK.items())
    parser.add_argument("--quick", action="store_true", help=f"a smoke run in about a minute: {quick}")
    parser.add_argument("--n", type=int, help=f"synthetic clustered vectors (default {FULL['n']:,})")
    parser.add_argument("--flat-n", type=int, help=f"flat-spectrum vectors (default {FULL['flat_n']:,})")
    parser.add_argument("--rows", type=int, help="use only the first ROWS base rows of the shared datasets")
    parser.add_argument("--queries", type=int, help=f"held-out queries per point (default {FULL['queries']})")
    parser.add_argument("--point-budget", type=float, help="seconds per sweep point at most (default 6)")
    parser.add_argument(
        "--repeats", type=int, help="timed runs per sweep point, systems interleaved; the fastest counts (default 2)"
    )
    # 8 minutes: the 1M build at ef_construction=200 takes 4.5-5.5 minutes on this 2-core machine.
    parser.add_argument("--hnsw-build-minutes", type=float, default=8.0, help="hnswlib build budget")
    parser.add_argument("--out", default="bench-results/search", help="directory for search.md and plots")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = list(DATASETS) if args.dataset == "all" else [s.strip() for s in args.dataset.split(",") if s.strip()]
    if not names or set(names) - set(DATASETS):
        parser.error(f"--dataset: choose all or from {', '.join(DATASETS)}, got {args.dataset!r}")
    args.datasets = names
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    for key in ("n", "flat_n", "rows", "queries"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    params = {k: getattr(args, k) for k in ("dataset", *FULL, "quick", "seed")}
    header = environment_header({"k": K, **params, "search threads": 1})
    print(header)
    report = ["# squash bench search", "", "```", header, "```"]
    summary: list[list[str]] = []
    footprints: list[Footprint] = []
    started = time.perf_counter()
    for name in args.datasets:
        data = load(name, args)
        if data is None:
            print(f"skipping {SHARED[name]}: ../shared/data is absent")
            report.append(f"\n{SHARED[name]} skipped: ../shared/data is absent")
            continue
        footprints.append(bench_dataset(data, WORKLOADS[name](data, args.queries, args.seed), args, report, summary))
    total = f"total run time {time.perf_counter() - started:.0f} s"
    report.append(f"\n{total}")
    text = "\n".join(report)
    print("\n" + text)
    (Path(args.out) / "search.md").write_text(text + "\n")
    headline = [
        f"QPS at recall@{K} = 0.95, one thread, each query with its own filter, fastest of {args.repeats} "
        f'interleaved runs per point ("—": never reached; {total}; full report: search.md). The last column is '
        f"Squash without knobs: the recall and QPS its calibrated defaults give.\n",
        markdown_table(SUMMARY_HEADERS, summary),
        "\nSquash's bytes per vector (stored partition objects; warm prepared partitions, what a processor's "
        "cache holds) against raw float32, and its first search after `Index.open` against warm searches "
        "of the same batch:\n",
        footprint_table(footprints),
        "",
        first_query_table(footprints),
    ]
    (Path(args.out) / "summary.md").write_text("\n".join(headline) + "\n")
    print("\n" + "\n".join(headline))
    return 0
