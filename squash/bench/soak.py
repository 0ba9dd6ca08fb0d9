"""``squash bench soak``: N concurrent clients query the local stack for M seconds; nothing may be lost.

Runs on loopback only: `squash.local.LocalStack` with the repository's ``template.yaml`` (moto S3 and local
Lambda workers), or the embedded client with ``--embedded`` or when the template is absent. Each client
sends one query batch at a time; every batch sent must come back answered or failed (never lost). Reports
the error rate, latency percentiles, batches completed vs sent, and the workers' resident memory (VmRSS
from /proc) sampled over the run, so leaks show as a rising RSS.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from squash.bench.common import environment_header, markdown_table
from squash.client import Client
from squash.datasets import synthetic_clustered
from squash.errors import SquashError
from squash.index import Index
from squash.pipeline import build_index

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
BUCKET = "squash-soak"
FILTERS = [None, {"price": {"$lt": 30}}, {"color": {"$in": ["red", "blue"]}}]
COLORS = np.array(["red", "green", "blue", "grey"])


@dataclass
class Tally:
    """What every client saw, under one lock."""

    sent: int = 0
    answered: int = 0
    wrong: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _client_loop(
    make: Callable[[], Client],
    queries: np.ndarray,
    expected: list[np.ndarray],
    args: argparse.Namespace,
    stop: float,
    seed: int,
    tally: Tally,
) -> None:
    """Send batches until ``stop``; a batch whose ids differ from ``expected[filter][rows]`` counts as wrong."""
    client = make()
    rng = np.random.default_rng(seed)
    while time.monotonic() < stop:
        rows = rng.integers(0, len(queries), args.batch)
        which = int(rng.integers(0, len(FILTERS)))
        with tally.lock:
            tally.sent += 1
        started = time.perf_counter()
        try:
            ids = client.query_batch(queries[rows], args.k, FILTERS[which], timeout=args.timeout).ids
        except SquashError as exc:
            with tally.lock:
                tally.errors[type(exc).__name__] += 1
            continue
        with tally.lock:
            tally.answered += 1
            tally.wrong += int(not np.array_equal(ids, expected[which][rows]))
            tally.latencies.append(time.perf_counter() - started)


@contextmanager
def _target(
    args: argparse.Namespace,
) -> Iterator[tuple[Callable[[], Client], Callable[[], list[int]], str, np.ndarray, str]]:
    """A client factory, the pids whose RSS to sample, a description of the target, query vectors, the URI."""
    data = synthetic_clustered(args.n, args.dim, n_queries=200, clusters=16, attributes=0, seed=0)
    rng = np.random.default_rng(0)
    attrs = {"price": rng.integers(0, 100, args.n), "color": COLORS[rng.integers(0, len(COLORS), args.n)]}
    if args.embedded or not TEMPLATE.exists():
        uri = "memory://soak"
        build_index(uri, data.base, attrs, partitions=args.partitions, overwrite=True)
        shared = Client(uri)  # one runtime: warm caches shared by every client, as one deployment
        yield (lambda: Client(uri, invoker=shared.invoker)), (lambda: [os.getpid()]), "embedded", data.queries, uri
        return
    from squash.local import LocalStack

    with LocalStack(TEMPLATE, workers=args.workers) as stack:
        stack.client("s3").create_bucket(Bucket=BUCKET)
        uri = f"s3://{BUCKET}/soak"
        build_index(uri, data.base, attrs, partitions=args.partitions)
        (coordinator,) = (s.name for s in stack.functions.values() if s.logical_id == "Coordinator")
        target = f"local stack ({TEMPLATE.name})"
        yield (lambda: Client(uri, function=coordinator)), stack.worker_pids, target, data.queries, uri


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squash bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to send queries")
    parser.add_argument("--batch", type=int, default=4, help="queries per batch")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--n", type=int, default=4000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="warm workers per local function")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-batch deadline in seconds")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--embedded", action="store_true", help="use the embedded client, not the local stack")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients and --seconds must be positive")

    with _target(args) as (make, pids, target, queries, uri):
        print(environment_header({"target": target, **vars(args)}))
        # Every mode returns the in-process search's answer bit for bit, so it is the answer to expect.
        index = Index.open(uri)
        expected = [index.search(queries, args.k, expr).ids for expr in FILTERS]
        make().query_batch(np.zeros((1, args.dim), np.float32), args.k)  # warm-up: not counted
        tally = Tally()
        started = time.monotonic()
        stop = started + args.seconds
        threads = [
            threading.Thread(target=_client_loop, args=(make, queries, expected, args, stop, seed, tally), daemon=True)
            for seed in range(args.clients)
        ]
        for t in threads:
            t.start()
        samples: list[tuple[float, float, int]] = []
        while any(t.is_alive() for t in threads):
            live = pids()
            samples.append((time.monotonic() - started, sum(rss_mb(p) for p in live), len(live)))
            for t in threads:
                t.join(timeout=max(0.0, args.sample / len(threads)))
        live = pids()
        samples.append((time.monotonic() - started, sum(rss_mb(p) for p in live), len(live)))
        elapsed = time.monotonic() - started

    failed = sum(tally.errors.values())
    lat = np.array(tally.latencies) * 1000 if tally.latencies else np.zeros(1)
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    rows = [
        ["batches sent", tally.sent],
        ["batches answered", tally.answered],
        ["batches failed", failed],
        ["batches lost (sent - answered - failed)", tally.sent - tally.answered - failed],
        ["batches answered wrong (ids differ from in-process search)", tally.wrong],
        ["error rate", f"{failed / max(1, tally.sent):.2%}"],
        ["errors", ", ".join(f"{k}: {v}" for k, v in tally.errors.items()) or "-"],
        ["queries/s", f"{tally.answered * args.batch / elapsed:.1f}"],
        ["latency p50 / p95 / p99 ms", f"{p50:.1f} / {p95:.1f} / {p99:.1f}"],
    ]
    print(markdown_table(["measure", "value"], rows))
    print()
    print(
        markdown_table(["t s", "worker RSS MB (sum)", "workers"], [[f"{t:.1f}", f"{m:.1f}", w] for t, m, w in samples])
    )
    return 0 if tally.sent == tally.answered + failed and tally.wrong == 0 else 1
