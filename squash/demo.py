"""``squash demo``: quantize a real dataset and show compression and recall."""

from __future__ import annotations

import argparse
import time

import numpy as np

from squash.datasets import bundled_sift, exact_knn
from squash.osq import OSQ, accumulate, l2_tables


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="quantize the bundled real SIFT sample and report recall")
    p.add_argument("--bits-per-dim", type=float, default=4.0, help="average OSQ bits per dimension")
    p.add_argument("--k", type=int, default=10, help="neighbours per query")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    data = bundled_sift()
    k = args.k
    base = data.base.astype(np.float32)
    queries = data.queries.astype(np.float32)
    print(
        f"dataset: {data.name}, {base.shape[0]} base x {base.shape[1]} dims, {len(queries)} held-out queries"
    )
    start = time.perf_counter()
    osq = OSQ.fit(base, bits_per_dim=args.bits_per_dim)
    encoded = osq.encode(base)
    fit_s = time.perf_counter() - start
    truth, _ = exact_knn(base, queries, k)
    lower, _ = l2_tables(osq.rotation.apply(queries), osq.cells)
    lb = accumulate(lower, encoded.segments, osq.layout)
    exact = ((queries[:, None, :] - base[None]) ** 2).sum(-1)
    code_bytes = encoded.segments.shape[0] + encoded.signs.shape[1]
    print(
        f"OSQ fit + encode: {fit_s:.2f} s; bits per dimension: min {osq.cells.bits.min()}, "
        f"max {osq.cells.bits.max()}, total {osq.cells.bits.sum()} per vector"
    )
    print(
        f"compression: {code_bytes} bytes per vector (OSQ codes + sign codes) vs {base.shape[1] * 4} "
        f"bytes float32 = {base.shape[1] * 4 / code_bytes:.1f}x"
    )
    print(f"{'ranking':38s} recall@{k}")
    for rerank in (1, 2, 4, 10):
        top = np.argsort(lb, axis=1)[:, : k * rerank]
        if rerank > 1:
            order = np.argsort(np.take_along_axis(exact, top, 1), axis=1)[:, :k]
            top = np.take_along_axis(top, order, 1)
        recall = np.mean([len(set(t[:k]) & set(g)) / k for t, g in zip(top, truth, strict=True)])
        label = "OSQ lower bound only" if rerank == 1 else f"OSQ lower bound, exact re-rank of {k * rerank}"
        print(f"{label:38s} {recall:.4f}")
    return 0
