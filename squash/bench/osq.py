"""``squash bench osq``: OSQ recall against bits per dimension, next to faiss SQ and PQ.

For each dataset and bit budget: recall@10 of ranking by the OSQ lower bound, by distance to the
cell representatives, and of the lower-bound ranking followed by an exact re-rank of k*R
candidates; faiss ScalarQuantizer (4 and 8 bit) and PQ at the same bytes per vector; encode speed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from squash.bench.common import environment_header, markdown_table, recall_at_k
from squash.datasets import bundled_sift, shared_dataset
from squash.osq import OSQ, accumulate, l2_tables, representative_tables

K = 10
RERANK = (2, 4, 10)
# faiss trains on a sample: PQ with hundreds of sub-quantizers on all of Fashion-MNIST takes ~30 min.
_TRAIN_SAMPLE = 10_000


def _rank(scores: np.ndarray, exact: np.ndarray, k: int, rerank: int) -> np.ndarray:
    top = np.argpartition(scores, k * rerank - 1, axis=1)[:, : k * rerank]
    key = np.take_along_axis(exact if rerank > 1 else scores, top, 1)
    return np.take_along_axis(top, np.argsort(key, axis=1)[:, :k], 1)


def _osq_rows(base, queries, exact, truth, bits):
    start = time.perf_counter()
    osq = OSQ.fit(base, bits_per_dim=bits)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    enc = osq.encode(base)
    encode_s = time.perf_counter() - start
    q_rot = osq.rotation.apply(queries)
    lb = accumulate(l2_tables(q_rot, osq.cells)[0], enc.segments, osq.layout)
    rep = accumulate(representative_tables(q_rot, osq.cells), enc.segments, osq.layout)
    row = {
        "by LB": recall_at_k(_rank(lb, exact, K, 1), truth, K),
        "by rep": recall_at_k(_rank(rep, exact, K, 1), truth, K),
    }
    for r in RERANK:
        row[f"LB+rerank {K * r}"] = recall_at_k(_rank(lb, exact, K, r), truth, K)
    row["vec/s encode"] = base.shape[0] / encode_s
    row["fit s"] = fit_s
    return row


def _faiss_rows(base, queries, exact, truth, bits):
    import faiss

    d = base.shape[1]
    nbytes = round(bits * d / 8)
    rows = []
    candidates = []
    if bits in (4, 8):
        qtype = faiss.ScalarQuantizer.QT_4bit if bits == 4 else faiss.ScalarQuantizer.QT_8bit
        candidates.append((f"faiss SQ{bits}", faiss.IndexScalarQuantizer(d, qtype, faiss.METRIC_L2)))
    if nbytes >= 1 and d % nbytes == 0 and nbytes <= d:
        candidates.append((f"faiss PQ{nbytes}x8", faiss.IndexPQ(d, nbytes, 8)))
    rng = np.random.default_rng(0)
    sample = base[rng.choice(len(base), size=min(len(base), _TRAIN_SAMPLE), replace=False)]
    for name, index in candidates:
        start = time.perf_counter()
        index.train(sample)
        index.add(base)
        encode_s = time.perf_counter() - start
        _, found = index.search(queries, K * max(RERANK))
        row = {"method": name, "by LB": recall_at_k(found[:, :K], truth, K), "by rep": float("nan")}
        for r in RERANK:
            top = found[:, : K * r]
            order = np.argsort(np.take_along_axis(exact, top, 1), axis=1)[:, :K]
            row[f"LB+rerank {K * r}"] = recall_at_k(np.take_along_axis(top, order, 1), truth, K)
        row["vec/s encode"] = base.shape[0] / encode_s
        row["fit s"] = encode_s
        rows.append(row)
    return rows


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squash bench osq", description=__doc__)
    parser.add_argument("--bits", type=float, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries per dataset")
    parser.add_argument("--no-faiss", action="store_true", help="skip the faiss baselines")
    args = parser.parse_args(argv)
    print(environment_header({"k": K, "rerank": RERANK, "bits": args.bits, "queries": args.queries}))
    datasets = [shared_dataset("sift-ngt-5k"), shared_dataset("fashion-mnist-784")]
    if all(d is None for d in datasets):
        print("../shared/data is absent: running on the bundled SIFT sample only")
        datasets = [bundled_sift()]
    for data in datasets:
        if data is None:
            print("skipping a dataset: ../shared/data is absent")
            continue
        base = np.ascontiguousarray(data.base, dtype=np.float32)
        queries = np.ascontiguousarray(data.queries[: args.queries], dtype=np.float32)
        exact = (queries**2).sum(1)[:, None] - 2 * queries @ base.T + (base**2).sum(1)[None]
        truth = np.argsort(exact, axis=1)[:, :K]
        table = []
        for bits in args.bits:
            table.append({"method": "OSQ", **_osq_rows(base, queries, exact, truth, bits), "bits/dim": bits})
            if not args.no_faiss:
                table += [{**row, "bits/dim": bits} for row in _faiss_rows(base, queries, exact, truth, bits)]
        headers = [
            "bits/dim",
            "method",
            "by LB",
            "by rep",
            *[f"LB+rerank {K * r}" for r in RERANK],
            "vec/s encode",
            "fit s",
        ]
        print(f"\n### {data.name}: {base.shape[0]} x {base.shape[1]}, {len(queries)} queries, recall@{K}\n")
        print(markdown_table(headers, [[row[h] for h in headers] for row in table]))
        print("\n'by LB' for faiss is its own quantized-distance ranking; 'by rep' applies to OSQ only.")
    return 0
