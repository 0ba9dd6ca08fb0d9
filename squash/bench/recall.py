"""``squash bench recall``: recall@10 at default settings on every shared dataset and on generated hard cases.

Each case builds one index with ``Index.build(base, attributes)`` (default ``target_recall``, 0.95) and
searches its held-out queries (never base rows) under each of its filters twice in one process: with the
calibrated defaults, and with the effort knobs the defaults had before calibration existed (passing them
bypasses the calibration). Recall@10 is measured against numpy brute force over the rows each filter
admits, with the filters evaluated on the raw attribute arrays, not by Squash. Next to it: the mean
``recall_estimate`` the calibration reports, the share of queries flagged ``exact``, single-thread QPS
(the queries as one batch, fastest of two timed runs after a warm-up), and the result checks (filter
violations, queries without exactly min(k, matches) results, duplicate ids, queries flagged exact whose
distances differ from brute force). Any recall below the build
target, estimate more than 0.03 from the measured recall, or failed check is listed as a finding.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from squash.bench.common import environment_header, markdown_table, recall_at_k
from squash.bench.workloads import Workload, check_results
from squash.datasets import SHARED_DATA, exact_knn
from squash.index import Index
from squash.search.result import SearchResult

K = 10
TARGET = 0.95
# How far the mean estimate may sit from the measured recall before it counts as a finding.
ESTIMATE_TOLERANCE = 0.03
# The effort knobs SearchParams defaulted to before the calibration: passing them bypasses it.
OLD_DEFAULTS: dict[str, Any] = {"probe": 32, "probe_matches": 300, "rerank_depth": 200}
MODES: tuple[tuple[str, dict[str, Any]], ...] = (("calibrated", {}), ("old defaults", OLD_DEFAULTS))
TIMED_RUNS = 2

Filter = dict[str, Any] | None
Mask = NDArray[np.bool_] | None


@dataclass
class Filtering:
    """One row of the table: a filter per query and the rows each admits (None: unfiltered)."""

    label: str
    filters: list[Filter]
    masks: list[Mask]


@dataclass
class Case:
    """Base vectors, held-out queries, attributes (None: none) and the filters to search them under."""

    name: str
    base: NDArray[np.float32]
    queries: NDArray[np.float32]
    attributes: dict[str, NDArray[Any]] | None
    filterings: list[Filtering]


@dataclass
class Measured:
    """One mode's answer to one filtering."""

    recall: float
    estimate: float
    exact: float
    qps: float
    checks: dict[str, float]

    @property
    def failed_checks(self) -> bool:
        return any(self.checks.values())


@dataclass
class Row:
    case: str
    label: str
    share: float
    modes: dict[str, Measured]


@dataclass
class CaseResult:
    name: str
    shape: tuple[int, int]
    partitions: int
    build_s: float
    calibration_s: float
    rows: list[Row]


# ---------------------------------------------------------------- filters


def everyone(nq: int) -> Filtering:
    return Filtering("unfiltered", [None] * nq, [None] * nq)


def shared(label: str, spec: dict[str, Any], mask: NDArray[np.bool_], nq: int) -> Filtering:
    """The same filter for every query."""
    return Filtering(label, [spec] * nq, [mask] * nq)


def windows(label: str, name: str, column: NDArray[Any], share: float, nq: int, rng: np.random.Generator) -> Filtering:
    """Per query, a range ``[lo, hi)`` on ``column`` holding about ``share`` of the rows, at a random place."""
    ordered = np.sort(column)
    width = max(1, round(share * len(column)))
    cast: Callable[[Any], Any] = int if np.issubdtype(column.dtype, np.integer) else float
    specs: list[Filter] = []
    masks: list[Mask] = []
    for start in rng.integers(0, len(column) - width, size=nq).tolist():
        lo, hi = ordered[start], ordered[start + width]
        specs.append({name: {"$gte": cast(lo), "$lt": cast(hi)}})
        masks.append((column >= lo) & (column < hi))
    return Filtering(label, specs, masks)


def fractions(
    label: str, name: str, column: NDArray[Any], shares: Sequence[float], nq: int, seed: int
) -> list[Filtering]:
    rng = np.random.default_rng(seed + 1)
    return [windows(f"{s:.1%} {label}", name, column, s, nq, rng) for s in shares]


# ---------------------------------------------------------------- cases


def _shared_files(name: str) -> Path | None:
    path = SHARED_DATA / name
    return path if (path / "base.npy").exists() else None


def _held_out(path: Path, rows: int | None, nq: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    base = np.load(path / "base.npy")[:rows].astype(np.float32)
    return base, np.load(path / "queries.npy")[:nq].astype(np.float32)


def sift_case(rows: int | None, nq: int, seed: int) -> Case | None:
    """Real SIFT (4,500 rows) with no attributes of its own: a synthetic uniform one for range filters."""
    path = _shared_files("sift-ngt-5k")
    if path is None:
        return None
    base, queries = _held_out(path, rows, nq)
    u = np.random.default_rng(seed).random(len(base))
    filterings = [everyone(nq), *fractions("range on uniform u", "u", u, (0.1, 0.01, 0.001), nq, seed)]
    return Case("sift-ngt-5k", base, queries, {"u": u}, filterings)


def fashion_case(rows: int | None, nq: int, seed: int) -> Case | None:
    """Fashion-MNIST with its real labels (the query's own, another) and ranges on its pixel sums."""
    path = _shared_files("fashion-mnist-784")
    if path is None:
        return None
    base, queries = _held_out(path, rows, nq)
    raw = np.load(path / "base_attrs.npy")[: len(base)]
    label, pixels, intensity = raw[:, 0], raw[:, 1], raw[:, 2]
    own = np.load(path / "query_attrs.npy")[:nq, 0]
    other = (own + 1 + np.random.default_rng(seed).integers(0, 9, size=nq)) % 10
    by_label = {int(v): label == v for v in np.unique(label)}
    filterings = [
        everyone(nq),
        Filtering("10% label = own", [{"label": int(v)} for v in own], [by_label[int(v)] for v in own]),
        Filtering("10% label = other", [{"label": int(v)} for v in other], [by_label[int(v)] for v in other]),
        *fractions("range on intensity_sum", "intensity_sum", intensity, (0.01, 0.001), nq, seed),
    ]
    attrs = {"label": label, "nonzero_pixels": pixels, "intensity_sum": intensity}
    return Case("fashion-mnist-784", base, queries, attrs, filterings)


def debian_case(rows: int | None, nq: int, seed: int) -> Case | None:
    """Real text embeddings with real attributes: the dataset's filters, and a ~0.1% size filter."""
    path = _shared_files("debian-packages-e5small-384")
    if path is None:
        return None
    base, queries = _held_out(path, rows, nq)
    raw = np.load(path / "base_attrs.npy")[: len(base)]
    tags = np.load(path / "base_tags.npy")[: len(base)]
    codes = json.loads((path / "attr_codes.json").read_text())
    section = np.asarray(codes["sections"])[raw[:, 0]]
    size, team = raw[:, 2].astype(np.int64), raw[:, 5].astype(bool)
    program = tags[:, codes["tag_columns"].index("role::program")]
    huge = int(np.quantile(size, 0.999))
    attrs = {"section": section, "installed_size": size, "team": team, "program": program}
    filterings = [
        everyone(nq),
        shared("section = python", {"section": "python"}, section == "python", nq),
        shared("tag role::program", {"program": True}, program, nq),
        shared("installed_size > 10000", {"installed_size": {"$gt": 10000}}, size > 10000, nq),
        shared("section = science AND team", {"section": "science", "team": True}, (section == "science") & team, nq),
        shared(
            "role::program AND section = utils",
            {"program": True, "section": "utils"},
            program & (section == "utils"),
            nq,
        ),
        shared(f"installed_size > {huge}", {"installed_size": {"$gt": huge}}, size > huge, nq),
    ]
    return Case("debian-packages-e5small-384", base, queries, attrs, filterings)


def readme_case(n: int, nq: int) -> Case:
    """The README's example: i.i.d. normal vectors, a uniform price and three categories (its seeds)."""
    base = np.random.default_rng(0).normal(size=(n, 128)).astype(np.float32)
    price = np.random.default_rng(1).uniform(0, 100, n)
    category = np.random.default_rng(2).choice(["shoe", "bag", "hat"], n)
    queries = np.random.default_rng(3).normal(size=(nq, 128)).astype(np.float32)
    spec = {"price": {"$lt": 20}, "category": {"$in": ["bag", "hat"]}}
    mask = (price < 20) & np.isin(category, ["bag", "hat"])
    return Case(
        f"readme i.i.d. normal {n:,}x128",
        base,
        queries,
        {"price": price, "category": category},
        [everyone(nq), shared("price < 20 AND category in [bag, hat]", spec, mask, nq)],
    )


def anti_correlated_case(n: int, nq: int, seed: int) -> Case:
    """40 overlapping Gaussian clusters in 64-d, group = cluster % 10; each query is filtered to a group
    its own cluster is not in (10% of the rows, none near it)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, 64)) * 2.0
    cluster = rng.integers(0, 40, n)
    base = (centres[cluster] + rng.normal(size=(n, 64))).astype(np.float32)
    own = rng.integers(0, 40, nq)
    queries = (centres[own] + rng.normal(size=(nq, 64))).astype(np.float32)
    group = cluster % 10
    by_group = {g: group == g for g in range(10)}
    other = [(int(c) % 10 + 5) % 10 for c in own]
    filtering = Filtering("10% group of another cluster", [{"group": g} for g in other], [by_group[g] for g in other])
    return Case(f"anti-correlated {n:,}x64", base, queries, {"group": group}, [everyone(nq), filtering])


def far_cluster_case(n: int, nq: int, seed: int) -> Case:
    """Two far-apart clusters, queries near the first, a tag only (half of) the second has: 25%."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 32))
    base[n // 2 :, 0] += 40.0
    tag = np.zeros(n, dtype=np.int64)
    tag[n // 2 :] = rng.random(n - n // 2) < 0.5
    queries = rng.normal(size=(nq, 32)).astype(np.float32)
    filterings = [everyone(nq), shared("25% tag only the far cluster has", {"tag": 1}, tag == 1, nq)]
    return Case(f"far-cluster {n:,}x32", base.astype(np.float32), queries, {"tag": tag}, filterings)


def flat_spectrum_case(n: int, nq: int, seed: int) -> Case:
    """768-d, a random rotation of independent components whose variances decay slowly (i^-0.3), plus a
    uniform attribute for range filters: the near-isotropic geometry of text embeddings, without clusters."""
    dim = 768
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scale = np.arange(1, dim + 1) ** -0.15  # standard deviations: variances fall as i^-0.3

    def draw(count: int) -> NDArray[np.float32]:
        return ((rng.normal(size=(count, dim)) * scale) @ rotation.T).astype(np.float32)

    base, queries = draw(n), draw(nq)
    u = rng.random(n)
    filterings = [everyone(nq), *fractions("range on uniform u", "u", u, (0.1, 0.01, 0.001), nq, seed)]
    return Case(f"flat-spectrum {n:,}x768", base, queries, {"u": u}, filterings)


# Case name -> builder(quick, queries, seed); None when its data is absent.
CASES: dict[str, Callable[[bool, int, int], Case | None]] = {
    "sift": lambda quick, nq, seed: sift_case(None, nq, seed),
    "fashion": lambda quick, nq, seed: fashion_case(20_000 if quick else None, nq, seed),
    "debian": lambda quick, nq, seed: debian_case(20_000 if quick else None, nq, seed),
    "readme": lambda quick, nq, seed: readme_case(20_000 if quick else 100_000, nq),
    "anti-correlated": lambda quick, nq, seed: anti_correlated_case(30_000 if quick else 200_000, nq, seed),
    "far-cluster": lambda quick, nq, seed: far_cluster_case(20_000 if quick else 100_000, nq, seed),
    "flat-768": lambda quick, nq, seed: flat_spectrum_case(10_000 if quick else 50_000, nq, seed),
}
SHARED_CASES = {"sift": "sift-ngt-5k", "fashion": "fashion-mnist-784", "debian": "debian-packages-e5small-384"}


# ---------------------------------------------------------------- measuring


def truth(
    base: NDArray[np.float32], queries: NDArray[np.float32], masks: Sequence[Mask]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Exact top-k (ids, squared L2) of each query among the rows its mask admits, by numpy brute force
    (-1 and inf pad)."""
    out = np.full((len(queries), K), -1, dtype=np.int64)
    dists = np.full((len(queries), K), np.inf)
    groups: dict[int, list[int]] = {}
    for i, mask in enumerate(masks):
        groups.setdefault(id(mask), []).append(i)
    for members in groups.values():
        mask = masks[members[0]]
        rows = np.arange(len(base)) if mask is None else np.flatnonzero(mask)
        if len(rows):
            ids, dists[members] = exact_knn(base[rows], queries[members], K)
            out[members] = np.where(ids >= 0, rows[np.maximum(ids, 0)], -1)
    return out, dists


def false_exact(result: SearchResult, distances: NDArray[np.float64]) -> int:
    """Queries flagged ``exact`` whose distances differ from brute force's (ties may swap ids, not distances)."""
    found = result.distances.astype(np.float64)
    same = np.isclose(found, distances, rtol=1e-4, atol=1e-5) | (np.isinf(found) & np.isinf(distances))
    return int((result.exact & ~same.all(axis=1)).sum())


def _as_workload(filtering: Filtering, n: int) -> Workload:
    """The filtering in the form `squash.bench.workloads.check_results` checks."""
    if filtering.masks[0] is None:
        return Workload(1.0, filtering.label, filtering.filters)
    distinct = {id(m): m for m in filtering.masks}
    if len(distinct) == 1:
        masks = np.broadcast_to(filtering.masks[0], (len(filtering.masks), n))
    else:
        masks = np.stack(filtering.masks)  # type: ignore[arg-type]
    share = float(masks.mean())
    return Workload(share, filtering.label, filtering.filters, share=share, masks=masks)


def measure(
    index: Index,
    queries: NDArray[np.float32],
    filtering: Filtering,
    knobs: dict[str, Any],
    want: tuple[NDArray[np.int64], NDArray[np.float64]],
    work: Workload,
) -> Measured:
    """Search the batch at ``knobs`` on one thread: a warm-up whose answer is checked, then timed runs."""
    one = all(f is filtering.filters[0] for f in filtering.filters)
    flt: Any = filtering.filters[0] if one else filtering.filters
    result = index.search(queries, K, flt, **knobs)
    best = math.inf
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        index.search(queries, K, flt, **knobs)
        best = min(best, time.perf_counter() - start)
    estimates = result.recall_estimate
    estimate = math.nan if estimates is None or np.isnan(estimates).all() else float(np.nanmean(estimates))
    return Measured(
        recall_at_k(result.ids, want[0], K),
        estimate,
        float(result.exact.mean()),
        len(queries) / best,
        {**check_results(result.ids, work, index.meta.n_vectors), "false_exact": false_exact(result, want[1])},
    )


def bench_case(case: Case) -> CaseResult:
    """Build the case's index at default settings and measure every filtering in every mode."""
    start = time.perf_counter()
    index = Index.build(case.base, case.attributes)
    build_s = time.perf_counter() - start
    calibration_s = float(index.meta.params["calibration"]["seconds"])
    n = len(case.base)
    rows = []
    with threadpool_limits(1):
        for filtering in case.filterings:
            want = truth(case.base, case.queries, filtering.masks)
            work = _as_workload(filtering, n)
            modes = {mode: measure(index, case.queries, filtering, knobs, want, work) for mode, knobs in MODES}
            rows.append(Row(case.name, filtering.label, work.share, modes))
            print(f"  {format_row(rows[-1])}", flush=True)
    return CaseResult(case.name, case.base.shape, index.meta.n_partitions, build_s, calibration_s, rows)


# ---------------------------------------------------------------- reporting


def _checks(measured: Measured) -> str:
    c = measured.checks
    return "/".join(f"{c[name]:.0f}" for name in ("violations", "wrong_count", "duplicates", "false_exact"))


def format_row(row: Row) -> str:
    cal, old = row.modes["calibrated"], row.modes["old defaults"]
    return (
        f"{row.label} [{row.share:.2%}]: recall {cal.recall:.4f} (estimate {cal.estimate:.4f}, exact {cal.exact:.0%}) "
        f"QPS {cal.qps:,.0f}; old defaults recall {old.recall:.4f} QPS {old.qps:,.0f}; "
        f"checks {_checks(cal)} / {_checks(old)}"
    )


RECALL_HEADERS = [
    "case",
    "filter",
    "matches",
    "recall@10",
    "estimate",
    "exact",
    "QPS",
    "recall@10 (old)",
    "QPS (old)",
    "checks",
    "checks (old)",
]


def recall_table(results: Sequence[CaseResult]) -> str:
    rows = []
    for result in results:
        for row in result.rows:
            cal, old = row.modes["calibrated"], row.modes["old defaults"]
            rows.append(
                [
                    row.case,
                    row.label,
                    f"{row.share:.2%}",
                    f"{cal.recall:.4f}",
                    "—" if math.isnan(cal.estimate) else f"{cal.estimate:.4f}",
                    f"{cal.exact:.0%}",
                    f"{cal.qps:,.0f}",
                    f"{old.recall:.4f}",
                    f"{old.qps:,.0f}",
                    _checks(cal),
                    _checks(old),
                ]
            )
    return markdown_table(RECALL_HEADERS, rows)


def build_table(results: Sequence[CaseResult]) -> str:
    rows = [
        [
            r.name,
            f"{r.shape[0]:,} x {r.shape[1]}",
            r.partitions,
            f"{r.build_s:.1f}",
            f"{r.calibration_s:.1f}",
            f"{r.calibration_s / r.build_s:.0%}",
        ]
        for r in results
    ]
    return markdown_table(["case", "rows x dim", "partitions", "build s", "calibration s", "calibration share"], rows)


def findings(results: Sequence[CaseResult], target: float = TARGET) -> list[str]:
    """Every row where the calibrated defaults miss the target, the estimate is off, or a check failed."""
    out = []
    for result in results:
        for row in result.rows:
            cal = row.modes["calibrated"]
            where = f"{row.case} / {row.label} [{row.share:.2%}]"
            if cal.recall < target:
                out.append(f"{where}: recall@10 {cal.recall:.4f} below the target {target}")
            if not math.isnan(cal.estimate) and abs(cal.estimate - cal.recall) > ESTIMATE_TOLERANCE:
                out.append(
                    f"{where}: estimate {cal.estimate:.4f} is {cal.estimate - cal.recall:+.4f} "
                    f"off recall {cal.recall:.4f}"
                )
            for mode, measured in row.modes.items():
                if measured.failed_checks:
                    out.append(f"{where}, {mode}: checks failed {measured.checks}")
    return out


def report(results: Sequence[CaseResult], header: str, command: str, total_s: float, skipped: Sequence[str]) -> str:
    found = findings(results)
    old = ", ".join(f"{k}={v}" for k, v in OLD_DEFAULTS.items())
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# squash bench recall",
        "",
        "```",
        header,
        "```",
        "",
        f"Command: `{command}`; run {date}, total run time {total_s:.0f} s.",
        "",
        f"Recall@{K} against numpy brute force over the rows each filter admits (filters evaluated on the raw "
        "attribute arrays), on held-out queries. Calibrated = `Index.search` at default settings on an index "
        f"built with `Index.build(base, attributes)` (target_recall {TARGET}); old = the same index searched with "
        f"the effort knobs the defaults had before calibration ({old}), "
        "which bypass it. estimate = mean `recall_estimate`; exact = share of queries flagged `exact`; QPS on one "
        f"thread, the queries as one batch, fastest of {TIMED_RUNS} runs after a warm-up (the machine is shared, "
        "so timings are noisy); checks = filter violations / queries without exactly min(k, matches) results / "
        "duplicate ids / queries flagged exact whose distances differ from brute force.",
        "",
        recall_table(results),
        "",
        "## Build time and the calibration's share of it",
        "",
        build_table(results),
        "",
        "## Findings",
        "",
        *(
            [f"- {f}" for f in found]
            or ["None: every row reaches the target, within the estimate's tolerance, with all checks passed."]
        ),
    ]
    lines += ["", *[f"- skipped {name}: {SHARED_DATA} has no such dataset" for name in skipped]] if skipped else []
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squash bench recall", description=__doc__)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries per case (default 200)")
    parser.add_argument("--quick", action="store_true", help="smaller cases and 50 queries, for a smoke run")
    parser.add_argument("--out", default="docs/perf/recall.md", help="markdown report")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    nq = 50 if args.quick else args.queries
    header = environment_header({"k": K, "queries": nq, "quick": args.quick, "seed": args.seed, "search threads": 1})
    print(header)
    started = time.perf_counter()
    results, skipped = [], []
    for name in names:
        case = CASES[name](args.quick, nq, args.seed)
        if case is None:
            print(f"\nskipping {name}: {SHARED_DATA / SHARED_CASES[name]} is absent")
            skipped.append(SHARED_CASES[name])
            continue
        print(f"\n{case.name}: {len(case.base):,} x {case.base.shape[1]}, {len(case.queries)} queries", flush=True)
        results.append(bench_case(case))
        print(f"  built in {results[-1].build_s:.1f} s, calibration {results[-1].calibration_s:.1f} s", flush=True)
    command = "squash bench recall " + " ".join(argv if argv is not None else [])
    text = report(results, header, command.strip(), time.perf_counter() - started, skipped)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0
