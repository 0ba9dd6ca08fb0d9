"""``squash bench cost``: throughput, recall and $ per query against the number of allocators (the paper's plot).

Runs the embedded client (every function a thread of this process, the same handler code as on Lambda) on a
SIFT-like synthetic set with the paper's workload (all 4 uniform attributes constrained, 8% selectivity) and on
Fashion-MNIST with each query's own label, for trees of 10, 20, 84, 155 and 258 allocators. Each tree runs the
batch twice on fresh containers: cold, then warm. Costs come from the durations and memory each function reports
(`squash.costs`). On 2 cores every invocation's wall time includes contention with hundreds of sibling threads, so
the headline prices ``model_ms``: each invocation's own CPU time plus, for a parent, its slowest child and one invoke
hop, which is what Lambda, with a core per container, would bill. The wall-time price is shown as an upper bound.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from squash.bench.common import environment_header, markdown_table, recall_at_k
from squash.bench.workloads import K, Workload, ground_truth
from squash.client import Client
from squash.costs import Prices, ec2_per_million, estimate, load_prices, metrics_from_info
from squash.datasets import Dataset, shared_dataset, synthetic_clustered
from squash.pipeline import build_index
from squash.runtime.context import MODEL_HOP_MS
from squash.runtime.protocol import ROLES
from squash.runtime.tree import allocator_count

SHAPES = ((10, 1), (4, 2), (4, 3), (5, 3), (6, 3))
QUICK_SHAPES = ((10, 1), (4, 2), (4, 3))
PROJECTED = (10, 20, 84, 155, 258, 340, 500, 1000)
# design/algorithm.md section 8: SIFT1M $ per query and amortised ms per query against allocators.
PAPER_SIFT1M = {
    10: (9.5e-6, 7.91),
    20: (1.07e-5, 5.02),
    84: (1.86e-5, 1.94),
    155: (2.58e-5, 1.44),
    258: (4.33e-5, 1.43),
}
S3_VECTORS_NOTE = "+ data processed (not modelled)"
README = Path(__file__).resolve().parents[2] / "README.md"
DOCS = README.parent / "docs" / "perf"
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def conjunctive_filters(names: list[str], nq: int, selectivity: float, seed: int) -> list[dict[str, Any]]:
    """Ranges of width s^(1/A) at random offsets on every attribute: about ``selectivity`` of the rows pass."""
    w = selectivity ** (1 / len(names))
    rng = np.random.default_rng(seed)
    return [
        {"$and": [{a: {"$gte": float(lo), "$lt": float(lo + w)}} for a, lo in zip(names, row, strict=True)]}
        for row in rng.uniform(0, 1 - w, size=(nq, len(names)))
    ]


def exact_truth(data: Dataset, queries: NDArray[np.float32], filters: list[Any]) -> tuple[NDArray[np.int64], float]:
    """Exact filtered top-k and the mean selectivity, a chunk of queries at a time (masks would not fit)."""
    base = np.ascontiguousarray(data.base, dtype=np.float32)
    norms = (base * base).sum(axis=1)
    truth, shares = [], []
    for start in range(0, len(queries), 64):
        work = Workload(0.0, "", filters[start : start + 64])
        ground_truth(base, norms, queries[start : start + 64], data.attributes, work)
        truth.append(work.truth)
        shares.append(work.share * len(work.filters))
    return np.concatenate(truth), sum(shares) / len(queries)


def run_tree(
    uri: str, queries: NDArray[np.float32], filters: list[Any], truth: NDArray[np.int64], shape: tuple[int, int]
) -> list[dict[str, Any]]:
    """The batch on fresh containers twice (cold, warm): wall time, recall and per-function metrics."""
    client = Client(uri)
    rows = []
    for phase in ("cold", "warm"):
        started = time.perf_counter()
        # One BLAS thread per function, as in a Lambda container, so each handler's CPU time is its own.
        with threadpool_limits(1):
            result = client.query_batch(queries, k=K, filter=filters, branching=shape[0], depth=shape[1])
        wall = time.perf_counter() - started
        rows.append(
            {
                "phase": phase,
                "shape": shape,
                "allocators": allocator_count(*shape),
                "wall": wall,
                "qps": len(queries) / wall,
                "recall": recall_at_k(result.ids, truth, K),
                "info": result.info,
                "metrics": metrics_from_info(result.info, client.config),
            }
        )
    return rows


def latencies(uri: str, queries: NDArray[np.float32], filters: list[Any], cold: int, warm: int) -> dict[str, Any]:
    """Single-query latency in ms: each cold query on fresh containers, warm ones on one warmed client."""
    cold_ms = []
    for i in range(cold):
        started = time.perf_counter()
        Client(uri).query(queries[i], k=K, filter=filters[i])
        cold_ms.append((time.perf_counter() - started) * 1000)
    client = Client(uri)
    client.query_batch(queries[:warm], k=K, filter=filters[:warm], depth=0)  # loads every partition
    warm_ms = []
    for i in range(warm):
        started = time.perf_counter()
        client.query(queries[i], k=K, filter=filters[i])
        warm_ms.append((time.perf_counter() - started) * 1000)
    return {"cold": np.array(cold_ms), "warm": np.array(warm_ms)}


def time_split(info: dict[str, float]) -> dict[str, float]:
    """Modelled function-seconds by activity, summed over every invocation (they add up to the modelled bill).

    The activities are timed inside the handlers around their compute; the rest of each handler's own CPU is
    request decoding, response encoding and merging; waiting is the modelled wait for the slowest child.
    """
    split = {
        "plan (allocators)": info["allocator.plan_seconds"] + info["coordinator.plan_seconds"],
        "storage reads + decode": sum(info[f"{r}.load_seconds"] for r in ROLES),
        "filter (codes, posting lists, exact checks)": info["processor.filter_seconds"],
        "scalar-code estimates": info["processor.estimate_seconds"],
        "exact re-rank + top-k": info["processor.rerank_seconds"],
    }
    cpu = sum(info[f"{r}.cpu_seconds"] for r in ROLES)
    modelled = sum(info[f"{r}.model_ms"] for r in ROLES) / 1000
    timed = sum(split.values())
    if timed > cpu:
        # Timed by wall clock, so waiting for one of 2 busy cores inflates them: scale them to the CPU spent.
        split = {name: seconds * cpu / timed for name, seconds in split.items()}
    split["other own CPU (decode, encode, merge)"] = max(0.0, cpu - sum(split.values()))
    split[f"waiting for children (slowest child + {MODEL_HOP_MS:.0f} ms hop)"] = max(0.0, modelled - cpu)
    return split


def project(rows: list[dict[str, Any]], prices: Prices, nq: int, partitions: int) -> list[tuple[int, float, float]]:
    """(allocators, modelled $ per query, processor invocations) for `PROJECTED` from the warm measurements.

    Fits modelled billed ms = fixed × invocations + per-query × queries for allocators and for processors (least squares
    over the measured trees), and predicts processor calls per allocator as the expected distinct partitions its
    q = nq / N_A queries visit: P·(1 − (1 − v/P)^q) with v the measured partitions per query.
    """
    warm = [r for r in rows if r["phase"] == "warm"]
    mem = warm[0]["info"]["function.squash-coordinator.memory_mb"] / 1024

    def fit(role: str) -> NDArray[np.float64]:
        a = np.array([[r["info"][f"{role}.invocations"], r["info"][f"{role}.queries"]] for r in warm], dtype=float)
        b = np.array([r["info"][f"{role}.model_ms"] for r in warm], dtype=float)
        return np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 0, None)

    alloc, proc = fit("allocator"), fit("processor")
    visits = np.mean([r["info"]["processor.queries"] / nq for r in warm])
    coord_ms = np.mean([r["info"]["coordinator.model_ms"] for r in warm])
    out = []
    for n_a in PROJECTED:
        q = nq / n_a
        calls = n_a * partitions * (1 - (1 - visits / partitions) ** q)
        ms = coord_ms + alloc[0] * n_a + alloc[1] * nq + proc[0] * calls + proc[1] * visits * nq
        dollars = mem * ms / 1000 * prices.gb_second + (1 + n_a + calls) * prices.lambda_request
        out.append((n_a, dollars / nq, calls))
    return out


def peer_qps(path: Path) -> tuple[str, float] | None:
    """Best single-thread peer QPS@0.95 on the synthetic 4-attribute conjunction at 10% from the search report."""
    if not path.exists():
        return None
    text = path.read_text()
    section = re.search(r"### synthetic[^\n]*selectivity 10\.0%.*?(?=\n### |\Z)", text, re.S)
    if section is None:
        return None
    best = None
    for line in section.group(0).splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        # Skip Squash's own rows (its curve, its default point) and the ratio rows (bold).
        if len(cells) >= 5 and cells[0].startswith("4-attribute") and not cells[1].startswith(("Squash", "**")):
            value = cells[3].replace(",", "")
            if re.fullmatch(r"[0-9.]+", value) and (best is None or float(value) > best[1]):
                best = (cells[1], float(value))
    return best


def plot(out: Path, name: str, rows: list[dict[str, Any]], costs: list[float], projection: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for phase, marker in (("cold", "o"), ("warm", "s")):
        pts = [(r["allocators"], r["qps"], c) for r, c in zip(rows, costs, strict=True) if r["phase"] == phase]
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"Squash {phase} (embedded)")
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker=marker, label=f"Squash {phase} (measured)")
    ax2.plot([p[0] for p in projection], [p[1] for p in projection], "--", label="Squash model (warm)")
    if name.startswith("synthetic"):
        ax1.plot(list(PAPER_SIFT1M), [1000 / v[1] for v in PAPER_SIFT1M.values()], "k:", label="paper SIFT1M")
        ax2.plot(list(PAPER_SIFT1M), [v[0] for v in PAPER_SIFT1M.values()], "k:", label="paper SIFT1M")
    ax1.set(xlabel="allocators", ylabel="QPS (all queries / wall time)", xscale="log", yscale="log", title=name)
    ax2.set(xlabel="allocators", ylabel="US$ per query", xscale="log", yscale="log", title=name)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{name}-allocators.png", dpi=110)
    plt.close(fig)


def plot_latency_and_split(out: Path, name: str, lat: dict[str, Any], split: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    pcts = (50, 95, 99)
    for i, phase in enumerate(("cold", "warm")):
        ax1.bar([p + i * 0.4 for p in range(3)], [np.percentile(lat[phase], p) for p in pcts], 0.4, label=phase)
    ax1.set(xticks=[0.2, 1.2, 2.2], xticklabels=[f"p{p}" for p in pcts], ylabel="ms", yscale="log")
    ax1.set_title(f"{name}: single-query latency (embedded)")
    ax1.legend()
    labels = list(next(iter(split.values())))
    for i, (phase, values) in enumerate(split.items()):
        ax2.barh([y + i * 0.4 for y in range(len(labels))], [values[k] for k in labels], 0.4, label=phase)
    ax2.set(yticks=[y + 0.2 for y in range(len(labels))], yticklabels=labels, xlabel="function-seconds per batch")
    ax2.set_title("where the modelled bill goes")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}-latency-time.png", dpi=110)
    plt.close(fig)


def bench_dataset(
    data: Dataset, filters: list[Any], args: argparse.Namespace, prices: Prices, partitions: int, report: list[str]
) -> list[tuple[int, float, float]]:
    """Build, sweep the trees, then latency and the time split; append markdown to ``report``."""
    nq = min(args.queries, len(data.queries))
    queries = np.ascontiguousarray(data.queries[:nq], dtype=np.float32)
    filters = filters[:nq]
    started = time.perf_counter()
    truth, share = exact_truth(data, queries, filters)
    truth_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="squash-cost-") as tmp:
        uri = f"file://{tmp}/index"
        started = time.perf_counter()
        build_index(uri, data.base, data.attributes, partitions=partitions, seed=args.seed)
        build_s = time.perf_counter() - started
        print(f"{data.name}: ground truth {truth_s:.0f} s, build {build_s:.0f} s, selectivity {share:.2%}", flush=True)
        rows = []
        for shape in QUICK_SHAPES if args.quick else SHAPES:
            rows += run_tree(uri, queries, filters, truth, shape)
            for r in rows[-2:]:
                print(f"  {shape} {r['phase']}: {r['qps']:.0f} QPS, recall {r['recall']:.4f}", flush=True)
        lat = latencies(uri, queries, filters, args.cold_latency, args.warm_latency)
    costs = [estimate(r["metrics"], prices, nq, billed="model_ms") for r in rows]
    measured = [estimate(r["metrics"], prices, nq) for r in rows]
    projection = project(rows, prices, nq, partitions)
    mem = rows[0]["info"]["function.squash-coordinator.memory_mb"]
    report.append(f"## {data.name}: {len(data.base):,} x {data.base.shape[1]}, {nq} queries, P={partitions}\n")
    report.append(
        f"Filter: {args.workload_note(data)}; measured selectivity {share:.2%}. Build {build_s:.0f} s. "
        f"Every function {mem} MB, {prices.architecture}. QPS = all queries / wall time of the batch. "
        "$ are modelled as Lambda would bill with a core per container: each invocation's own CPU time plus, "
        f'for a parent, its slowest child and a {MODEL_HOP_MS:.0f} ms invoke hop. "$/1M measured" prices the '
        "handler wall times of this run instead: every function shares 2 cores here, so it is an upper bound.\n"
    )
    table = []
    for r, c, wall in zip(rows, costs, measured, strict=True):
        i = r["info"]
        table.append(
            [
                f"({r['shape'][0]},{r['shape'][1]})",
                r["allocators"],
                r["phase"],
                f"{r['recall']:.4f}",
                r["qps"],
                1000 / r["qps"],
                int(i["invocations"]),
                int(i["cold"]),
                int(i["gets"]),
                f"{c.role('coordinator'):.2e}",
                f"{c.role('allocator'):.2e}",
                f"{c.role('processor'):.2e}",
                f"{c.item('compute'):.2e}",
                f"{c.item('requests') + c.item('gets') + c.item('lists'):.2e}",
                f"{c.item('logs'):.2e}",
                f"{c.per_query:.2e}",
                f"{c.per_million:.2f}",
                f"{wall.per_million:.2f}",
            ]
        )
    headers = ["(b,L)", "allocators", "run", "recall@10", "QPS", "ms/query", "invocations", "cold", "GETs"]
    headers += ["$ coord", "$ alloc", "$ proc", "$ compute", "$ req+S3", "$ logs", "$/query", "$/1M", "$/1M measured"]
    report.append(markdown_table(headers, table) + "\n")
    paper = name_is_sift(data)
    proj_rows = [
        [
            n,
            f"{c:.2e}",
            f"{c * 1e6:.2f}",
            f"{calls:.0f}",
            f"{PAPER_SIFT1M[n][0]:.2e}" if paper and n in PAPER_SIFT1M else "",
        ]
        for n, c, calls in projection
    ]
    report.append("Model projection from the warm runs (fitted per-invocation and per-query modelled ms):\n")
    report.append(
        markdown_table(["allocators", "$/query", "$/1M", "processor calls", "paper SIFT1M $/query"], proj_rows) + "\n"
    )
    lat_rows = [
        [phase, len(v), *(f"{np.percentile(v, p):.1f}" for p in (50, 95, 99))] for phase, v in lat.items() if len(v)
    ]
    report.append("Single-query latency through the embedded client (ms; cold = fresh containers each query):\n")
    report.append(markdown_table(["run", "queries", "p50", "p95", "p99"], lat_rows) + "\n")
    mid = [r for r in rows if r["shape"] == SHAPES[2]] or rows[-2:]
    split = {r["phase"]: time_split(r["info"]) for r in mid}
    total = {p: sum(v.values()) for p, v in split.items()}
    split_rows = [[k, *(f"{split[p][k]:.2f} ({split[p][k] / total[p]:.0%})" for p in split)] for k in split["cold"]]
    report.append(f"Where the modelled bill goes at {mid[0]['allocators']} allocators (function-seconds per batch):\n")
    report.append(markdown_table(["activity", *split], split_rows) + "\n")
    report.append(f"![{data.name} allocators]({data.name}-allocators.png)\n")
    report.append(f"![{data.name} latency and time]({data.name}-latency-time.png)\n")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out, data.name, rows, [c.per_query for c in costs], projection)
    plot_latency_and_split(args.out, data.name, lat, split)
    args.summary.append((data.name, rows, costs, projection))
    return projection


def name_is_sift(data: Dataset) -> bool:
    return data.name.startswith("synthetic")


def comparison(args: argparse.Namespace, prices: Prices, report: list[str]) -> None:
    """Modelled Squash $ per 1M queries next to EC2, S3 Vectors, turbopuffer and the paper."""
    rows: list[list[object]] = []
    for name, measured, costs, projection in args.summary:
        warm = [(r, c) for r, c in zip(measured, costs, strict=True) if r["phase"] == "warm"]
        best = min(warm, key=lambda rc: rc[1].per_query)
        rows.append(
            [
                f"Squash, {name}, warm, cheapest measured ({best[0]['allocators']} allocators)",
                f"{best[1].per_million:.2f}",
            ]
        )
        rows.append([f"Squash, {name}, model at 10 allocators", f"{projection[0][1] * 1e6:.2f}"])
    rows.append(["paper SIFT1M, 10 allocators", f"{PAPER_SIFT1M[10][0] * 1e6:.2f}"])
    rows.append(["paper SIFT1M, 84 allocators", f"{PAPER_SIFT1M[84][0] * 1e6:.2f}"])
    rows.append([f"S3 Vectors list price {S3_VECTORS_NOTE}", f"{prices.s3_vectors_per_query * 1e6:.2f}"])
    rows.append(["turbopuffer floor (1.28 GB min per query at $1/PB)", f"{prices.turbopuffer_per_query * 1e6:.2f}"])
    peer = peer_qps(args.search_report)
    if peer is None:
        report.append("No bench-results/search/search.md with a synthetic 10% conjunction row: EC2 baseline omitted.\n")
    else:
        for instance, one, every in ec2_per_million(prices, peer[1]):
            rows.append([f"EC2 {instance} running {peer[0]} at {peer[1]:.0f} QPS/thread (1 thread)", f"{one:.2f}"])
            rows.append([f"EC2 {instance}, every vCPU busy (linear scaling assumed)", f"{every:.2f}"])
    report.append("## $ per million queries, side by side\n")
    report.append(
        "EC2 uses the best single-thread peer QPS@0.95 of `squash bench search` (synthetic 1M, 4-attribute "
        "conjunction at 10%, the closest to 8%) and assumes a fully used instance; prices approximate, "
        f"{prices.date}. Commercial prices are list prices without storage.\n"
    )
    report.append(markdown_table(["system", "$ per 1M queries"], rows) + "\n")


def update_readme(cost_md: str, search_dir: Path, cost_dir: Path, readme: Path = README, docs: Path = DOCS) -> None:
    """Publish the reports and plots under ``docs`` and rewrite README.md between the perf markers.

    The README gets the search headline table (``summary.md`` of ``squash bench search``) and the cost report;
    the full search report and every plot go to ``docs`` (committed, unlike bench-results/).
    """
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} lacks the markers {START} and {END}")
    docs.mkdir(parents=True, exist_ok=True)
    for png in [*search_dir.glob("*.png"), *cost_dir.glob("*.png")]:
        shutil.copy2(png, docs / png.name)
    link = docs.relative_to(readme.parent).as_posix() if docs.is_relative_to(readme.parent) else docs.as_posix()
    (docs / "cost.md").write_text(cost_md)
    body = [
        "Regenerate with `squash bench search` (about 30 min on 2 cores), then `squash bench cost --readme` "
        f"(about 8 min), which rewrites this part and publishes the reports and plots to `{link}/`.\n"
    ]
    summary = search_dir / "summary.md"
    if (search_dir / "search.md").exists():
        shutil.copy2(search_dir / "search.md", docs / "search.md")
    if summary.exists():
        body.append("### Filtered search against peers (`squash bench search`)\n")
        full = f"full report with recall-QPS curves and time profiles: [{link}/search.md]({link}/search.md)"
        body.append(summary.read_text().replace("full report: search.md", full))
    cost = re.sub(r"^## ", "#### ", cost_md, flags=re.M)
    cost = re.sub(r"\]\(([^)/]+\.png)\)", rf"]({link}/\1)", cost)
    body.append("### Serverless throughput and cost (`squash bench cost`)\n")
    body.append(cost)
    head, rest = text.split(START, 1)
    readme.write_text(head + START + "\n" + "\n".join(body) + "\n" + END + rest.split(END, 1)[1])


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squash bench cost", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic base vectors")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--selectivity", type=float, default=0.08)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--prices", type=Path, help="JSON file overriding squash.costs.Prices fields")
    parser.add_argument("--quick", action="store_true", help="100k vectors, 200 queries, trees up to 84")
    parser.add_argument("--no-fashion", action="store_true")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's performance section")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/cost"))
    parser.add_argument("--search-report", type=Path, default=Path("bench-results/search/search.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries = min(args.n, 100_000), min(args.queries, 200)
    args.cold_latency, args.warm_latency = (5, 50) if args.quick else (20, 200)
    args.summary = []
    prices = load_prices(args.prices) if args.prices else Prices()
    params = {k: v for k, v in vars(args).items() if k not in ("summary",)} | {"prices_date": prices.date}
    header = environment_header(params)
    print(header, flush=True)
    report = ["# squash bench cost\n", "```\n" + header + "\n```\n"]
    report.append(f"Prices ({prices.date}): " + ", ".join(prices.sources) + "\n")

    data = synthetic_clustered(args.n, 128, n_queries=args.queries, attributes=4, seed=args.seed)
    names = sorted(data.attributes)
    args.workload_note = lambda d: (
        f"conjunction of ranges on all {len(names)} attributes, {args.selectivity:.0%} selectivity "
        f"({args.selectivity ** (1 / len(names)):.3f} wide each, random offsets)"
        if name_is_sift(d)
        else "label = the query's own label"
    )
    bench_dataset(
        data,
        conjunctive_filters(names, args.queries, args.selectivity, args.seed),
        args,
        prices,
        args.partitions,
        report,
    )
    fashion = None if args.no_fashion else shared_dataset("fashion-mnist-784")
    if fashion is not None:
        own = [{"label": int(v)} for v in fashion.query_attributes["label"][: args.queries]]
        bench_dataset(fashion, own, args, prices, max(1, math.ceil(len(fashion.base) / 10_000)), report)
    comparison(args, prices, report)
    text = "\n".join(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost.md").write_text(text)
    if args.readme:
        update_readme(text.replace("# squash bench cost\n", "", 1), args.search_report.parent, args.out)
    return 0
