"""``squash bench partition``: balanced k-means build time, balance and neighbour locality.

For each dataset, partition count P and training sample size: the time of ``balanced_kmeans``, the
smallest and largest partition relative to N/P, and neighbour locality, the fraction of each query's true
top-10 neighbours that lie in the query's nearest 1, 2 or 3 partitions (by distance to the centroids,
as the allocator routes). Real datasets use their stored ground truth; the synthetic clustered set
(1000 clusters by default, so that partitions have to split and merge clusters) gets exact ground truth
for 200 queries.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np

from squash.bench.common import environment_header, markdown_table
from squash.datasets import SHARED_DATA, exact_knn, synthetic_clustered
from squash.partition import balanced_kmeans

K = 10
PROBES = (1, 2, 3)
HEADERS = [
    "dataset",
    "N x D",
    "P",
    "sample",
    "time s",
    "min/(N/P)",
    "max/(N/P)",
    *[f"loc@{m}" for m in PROBES],
]


def _sample_size(text: str) -> int | None:
    return None if text == "all" else int(text)


def locality(centroids: np.ndarray, assignment: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[float]:
    """For m in PROBES: mean fraction of the true neighbours in the query's m nearest partitions."""
    q = np.asarray(queries, dtype=np.float64)
    c = centroids.astype(np.float64)
    # |q|² is the same for every centroid, so it does not change the ranking.
    d2 = (c * c).sum(axis=1)[None, :] - 2 * q @ c.T
    ranked = np.argsort(d2, axis=1, kind="stable")
    home = assignment[truth]
    return [float((home[:, :, None] == ranked[:, None, :m]).any(axis=-1).mean()) for m in PROBES]


def _rows(
    name: str,
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    partitions: list[int],
    samples: list[int | None],
    seed: int,
) -> Iterator[list[object]]:
    """One table row per (P, effective sample size); sample sizes >= N collapse into 'all'."""
    n, d = base.shape
    done = set()
    for p in partitions:
        if p > n:
            print(f"skipping P={p} for {name}: only {n} vectors")
            continue
        for sample in samples:
            effective = n if sample is None or sample >= n else sample
            if (p, effective) in done:
                continue
            done.add((p, effective))
            start = time.perf_counter()
            part = balanced_kmeans(base, p, seed=seed, sample_size=sample)
            elapsed = time.perf_counter() - start
            label = "all" if effective == n else f"{effective:,}"
            balance = [part.sizes.min() * p / n, part.sizes.max() * p / n]
            loc = locality(part.centroids, part.assignment, queries, truth)
            yield [name, f"{n:,} x {d}", p, label, elapsed, *balance, *loc]


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squash bench partition", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the synthetic clustered set")
    parser.add_argument("--clusters", type=int, default=1000, help="clusters in the synthetic set")
    parser.add_argument("--partitions", type=int, nargs="+", default=[10, 100], help="partition counts P")
    parser.add_argument(
        "--samples",
        type=_sample_size,
        nargs="+",
        default=[20_000, 100_000, None],
        metavar="ROWS|all",
        help="training sample sizes ('all' trains on every row)",
    )
    parser.add_argument("--queries", type=int, default=1000, help="queries per real dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    samples = ["all" if s is None else s for s in args.samples]
    params = {"n": args.n, "clusters": args.clusters, "partitions": args.partitions, "samples": samples}
    print(environment_header({**params, "seed": args.seed}))

    table = []
    for name in ("fashion-mnist-784", "sift-ngt-5k"):
        path = SHARED_DATA / name
        if not (path / "gt_ids.npy").exists():
            print(f"skipping {name}: {path} is absent")
            continue
        queries = np.load(path / "queries.npy")[: args.queries]
        truth = np.load(path / "gt_ids.npy")[: args.queries, :K]
        table += _rows(name, np.load(path / "base.npy"), queries, truth, args.partitions, args.samples, args.seed)

    start = time.perf_counter()
    synthetic = synthetic_clustered(args.n, 128, n_queries=200, clusters=args.clusters, attributes=0, seed=args.seed)
    truth, _ = exact_knn(synthetic.base, synthetic.queries, K)
    print(f"synthetic set and its ground truth: {time.perf_counter() - start:.1f} s")
    table += _rows(synthetic.name, synthetic.base, synthetic.queries, truth, args.partitions, args.samples, args.seed)

    print(f"\n### Balanced k-means (tolerance ±10%), locality = true top-{K} in the nearest m partitions\n")
    print(markdown_table(HEADERS, table))
    return 0
