"""``squash demo``: filtered search of real SIFT vectors through a local serverless stack, end to end.

Builds an index of the bundled SIFT sample with uniform attributes a0..a3 (SQUASH's workload) straight into
the local S3 (moto), runs the functions of ``template.yaml`` as local Lambda workers, and answers three
batches (SQUASH's 8 % conjunctive filter on all four attributes, a 1 % range filter, no filter) and single
queries through `squash.Client` -> coordinator -> allocators -> processors. Prints recall@10 against exact
filtered ground truth, latency, throughput, invocations, bytes read and a modelled cost per query.

Needs a source checkout (``template.yaml`` and ``functions/`` beside the package) and the ``dev`` or
``local`` extra. Everything runs on loopback and is removed at exit.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from squash.config import RuntimeConfig
from squash.costs import Prices, estimate, metrics_from_info
from squash.datasets import bundled_sift, exact_knn
from squash.errors import InvalidInputError

if TYPE_CHECKING:
    from squash.client import Client

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "template.yaml"
BUCKET = "squash-demo"
K = 10
ATTRIBUTES = 4
SEED = 0
# Two local workers per function (each is a process on a small machine), and batches use a tree of 2
# allocators (b = 2, L = 1), so a function gets more concurrent calls than it has workers only when the runtime
# hedges a slow processor call; the local service then throttles, as Lambda would, and the runtime retries.
WORKERS = 2
TREE = {"branching": 2, "depth": 1}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="filtered search of real SIFT vectors through a local serverless stack (no Docker, no AWS)",
    )
    p.add_argument("--quick", action="store_true", help="fewer queries (about a third of the time)")
    p.add_argument(
        "--partitions", type=int, default=8, help="index partitions (default 8; at most the template's processor slots)"
    )
    p.set_defaults(handler=run)


@dataclass(frozen=True)
class Workload:
    name: str
    filters: list[Any]  # one per query
    masks: NDArray[np.bool_]  # (nq, n): the rows each query's filter matches


def demo_attributes(n: int) -> dict[str, NDArray[np.float64]]:
    """SQUASH-style attributes: a0..a3 uniform in [0, 1), fixed seed."""
    rng = np.random.default_rng(SEED)
    return {f"a{i}": rng.random(n) for i in range(ATTRIBUTES)}


def _workloads(attrs: dict[str, NDArray[np.float64]], nq: int) -> list[Workload]:
    rng = np.random.default_rng(SEED + 1)
    n = len(attrs["a0"])
    # Each attribute keeps a random window of width 0.08^(1/4), so a query keeps 8 % of rows on average.
    width = 0.08 ** (1 / ATTRIBUTES)
    conj_filters, conj_masks = [], np.ones((nq, n), dtype=bool)
    for q in range(nq):
        expr = {}
        for name, column in attrs.items():
            lo = float(rng.uniform(0, 1 - width))
            expr[name] = {"$gte": lo, "$lt": lo + width}
            conj_masks[q] &= (column >= lo) & (column < lo + width)
        conj_filters.append(expr)
    range_filters, range_masks = [], np.zeros((nq, n), dtype=bool)
    for q in range(nq):
        lo = float(rng.uniform(0, 0.99))
        range_filters.append({"a0": {"$gte": lo, "$lt": lo + 0.01}})
        range_masks[q] = (attrs["a0"] >= lo) & (attrs["a0"] < lo + 0.01)
    return [
        Workload("a0..a3 ranges (8%)", conj_filters, conj_masks),
        Workload("a0 range (1%)", range_filters, range_masks),
        Workload("no filter", [None] * nq, np.ones((nq, n), dtype=bool)),
    ]


def _recall(found: NDArray[np.int64], base: NDArray[Any], queries: NDArray[Any], masks: NDArray[np.bool_]) -> float:
    hits = total = 0
    for q in range(len(queries)):
        truth, _ = exact_knn(base, queries[q : q + 1], K, masks[q])
        valid = truth[0][truth[0] >= 0]
        hits += len(set(found[q].tolist()) & set(valid.tolist()))
        total += len(valid)
    return hits / max(total, 1)


def _copy_index(s3: Any, src_prefix: str, dst_prefix: str) -> None:
    """Copy an index to another prefix: a new URI, so every cache misses on it (a cold-cache query)."""
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=src_prefix)
        for o in page.get("Contents", [])
    ]
    # Manifests last: a manifest is what makes a version visible.
    for key in sorted(keys, key=lambda k: "/manifests/" in k):
        s3.copy_object(
            Bucket=BUCKET, Key=dst_prefix + key[len(src_prefix) :], CopySource={"Bucket": BUCKET, "Key": key}
        )


def _cost_per_million(infos: list[dict[str, float]], config: RuntimeConfig, queries: int) -> float:
    """Modelled AWS $ per million queries (`squash.costs`) of runs answering ``queries`` queries in all."""
    prices = Prices()
    dollars = sum(estimate(metrics_from_info(info, config), prices, queries).total for info in infos)
    return dollars / queries * 1e6


def _ms(values: list[float]) -> str:
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return f"{p50:8.1f} {p95:8.1f}"


@dataclass(frozen=True)
class _Session:
    """What every measurement needs: the deployed client, the data and the roles' memory sizes."""

    client: Client
    base: NDArray[Any]
    queries: NDArray[Any]
    config: RuntimeConfig  # the deployed functions' names, which tell their roles apart in the metrics


def _batches(session: _Session, workloads: list[Workload]) -> None:
    nq = len(session.queries)
    print(f"batches of {nq} queries, tree b={TREE['branching']} L={TREE['depth']} through the coordinator:")
    print(
        f"{'workload':22s} {'matches':>8s} {'recall@10':>9s} {'seconds':>8s} {'queries/s':>9s} "
        f"{'invocations':>11s} {'GETs':>5s} {'KB read':>8s} {'$/1M queries':>12s}"
    )
    for workload in workloads:  # start and fill every worker a batch uses
        session.client.query_batch(session.queries, k=K, filter=workload.filters, **TREE)
    for workload in workloads:
        result = session.client.query_batch(session.queries, k=K, filter=workload.filters, **TREE)
        info = result.info
        recall = _recall(result.ids, session.base, session.queries, workload.masks)
        print(
            f"{workload.name:22s} {workload.masks.mean():8.1%} {recall:9.4f} {info['seconds']:8.2f} "
            f"{nq / info['seconds']:9.0f} {int(info['invocations']):11d} {int(info['gets']):5d} "
            f"{info['bytes_read'] / 1e3:8.1f} {_cost_per_million([info], session.config, nq):12.2f}"
        )


def _singles(session: _Session, workload: Workload, s3: Any, n_warm: int, n_cold: int) -> None:
    from squash.client import Client

    client, queries = session.client, session.queries
    # Warm first: the cold copies below push the main index out of the containers' small metadata caches.
    warm = [client.query(queries[i], k=K, filter=workload.filters[i]).info for i in range(n_warm)]
    cold = []
    for i in range(n_cold):
        copy = f"indexes/sift-cold-{i}"
        _copy_index(s3, "indexes/sift/", copy + "/")
        cold_client = Client(f"s3://{BUCKET}/{copy}", function=client.function)
        cold.append(cold_client.query(queries[i], k=K, filter=workload.filters[i]).info)
    print(f"\nsingle queries, {workload.name} filter (depth 0: coordinator -> processors):")
    print(f"{'':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'GETs/query':>10s} {'KB/query':>9s} {'$/1M queries':>12s}")
    for label, infos in ((f"warm ({n_warm} queries)", warm), (f"cold cache ({n_cold} fresh index copies)", cold)):
        gets, kb = (sum(info[key] for info in infos) / len(infos) for key in ("gets", "bytes_read"))
        cost = _cost_per_million(infos, session.config, len(infos))
        print(f"{label:34s} {_ms([info['seconds'] for info in infos])} {gets:10.1f} {kb / 1e3:9.1f} {cost:12.2f}")


def run(args: argparse.Namespace) -> int:
    if not TEMPLATE.is_file():
        raise InvalidInputError(
            f"squash demo runs from a source checkout: {TEMPLATE} not found (clone the repository and "
            "`pip install -e '.[dev]'` there)"
        )
    try:
        from squash.local import LocalStack
    except ImportError as exc:
        raise InvalidInputError(f"squash demo needs the local stack: pip install -e '.[dev]' ({exc})") from None
    import squash
    from squash.pipeline import build_index

    started = time.perf_counter()
    nq, n_cold, n_warm = (100, 8, 20) if args.quick else (500, 20, 50)
    data = bundled_sift()
    base, queries = data.base, data.queries[:nq]
    attrs = demo_attributes(len(base))
    print(
        f"data: {data.name}: {len(base):,} real SIFT descriptors x {base.shape[1]} dims (uint8), {nq} held-out "
        f"queries; attributes a0..a3 uniform [0, 1) (seed {SEED})"
    )
    workloads = _workloads(attrs, nq)
    stack = LocalStack(TEMPLATE, workers=WORKERS)
    roles = {spec.logical_id: spec for spec in stack.functions.values()}
    slots = sum(name.startswith("Processor") for name in roles)
    # One partition per slot: a slot never gets more concurrent calls than the 2 local workers it may run.
    if not 1 <= args.partitions <= slots:
        raise InvalidInputError(f"--partitions must be in 1..{slots} (the template's processor slots)")
    with stack:
        print(
            f"local stack: S3 (moto) {stack.s3_endpoint_url}, Lambda {stack.lambda_endpoint_url}; "
            f"{len(stack.functions)} functions from {TEMPLATE.name}, started on first use"
        )
        s3 = stack.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        uri = f"s3://{BUCKET}/indexes/sift"
        report = build_index(uri, base, attrs, partitions=args.partitions, seed=SEED)
        print(
            f"index: {uri}: {report.n_partitions} partitions, {report.total_bytes / 1e6:.2f} MB "
            f"({report.bytes_per_vector:.0f} B/vector), built in {report.seconds['total']:.1f} s"
        )
        config = RuntimeConfig.from_env(roles["Coordinator"].environment)
        session = _Session(squash.Client(uri, function=config.coordinator_function), base, queries, config)
        first = session.client.query(queries[0], k=K, filter=workloads[0].filters[0])
        print(
            f"first query (containers start): {first.info['seconds'] * 1000:.0f} ms, "
            f"{int(first.info['cold'])} cold starts\n"
        )
        _batches(session, workloads)
        _singles(session, workloads[0], s3, n_warm, n_cold)
        stack.wait_idle()  # abandoned calls (hedges, deadlines) finish and are counted
        print("\ninvocations per function (local Lambda service; cold starts, workers):")
        for name, counters in stack.stats().items():
            if counters["invocations"]:
                print(
                    f"  {name:24s} {counters['invocations']:6d}  ({counters['cold_starts']} cold, "
                    f"{counters['workers_started']} workers, {counters['throttles']} throttled)"
                )
    prices = Prices()
    memory = ", ".join(
        f"{roles[name].name} {roles[name].memory_size} MB" for name in ("Coordinator", "Allocator", "Processor0")
    )
    print(
        f"\ncost model (squash.costs, design/algorithm.md 5.6): {memory}; Lambda ${prices.gb_second:.10f}/GB-s "
        f"({prices.architecture}), ${prices.lambda_request * 1e6:.2f} per 1M requests, S3 GET "
        f"${prices.s3_get * 1e3:.4f} per 1,000 (list prices of {prices.date}). Billed time is the handler time "
        "measured here, on a shared 2-core machine: read the dollars as an upper bound."
    )
    print(f"demo finished in {time.perf_counter() - started:.0f} s; local stack stopped")
    return 0
