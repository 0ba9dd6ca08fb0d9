"""Build an index in memory: attributes, balanced partitions, per-partition KLT and scalar codes.

This is the build-only path (it may use pyarrow through attribute normalisation); the storage
pipeline writes its output, and :class:`squash.Index` searches it directly.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from squash.attributes import AttributeQuantizer, normalize_attributes
from squash.calibration import DEFAULT_TARGET, calibrate, check_target
from squash.errors import InvalidInputError
from squash.model import IndexMeta, Metric, PartitionData
from squash.osq import fit_klt
from squash.osq.lead import leading_dims
from squash.osq.scalar import ScalarCodes
from squash.partition import balanced_kmeans, default_partitions, kmeans
from squash.validation import as_vectors

ATTRIBUTE_BITS = 8
_HISTOGRAM_CELLS = 256
# Rows per fine list inside a partition: small enough that a query scans a few percent of a partition,
# large enough that the per-list work of a scan is a matrix product, not Python overhead. A partition gets
# about LIST_TARGET lists, each of LIST_ROWS to LIST_ROWS_MAX rows. More lists are faster at equal recall on
# some data (512 per 100k-row partition, single thread, recall@10 ~0.95: a 100k x 768 clustered flat spectrum
# 5,177 QPS vs 2,108; debian-packages-e5small-384 2,384 vs 1,869) but leave the effort ladder's cheap rungs
# weaker on far-anchored filters than the calibration measures (squash bench recall, far-cluster 100k x 32,
# 25% tag: recall 0.912 at defaults against an estimate of 0.979), so they wait for a calibration that
# chooses the list size too.
LIST_ROWS = 256
LIST_ROWS_MAX = 768
LIST_TARGET = 128


def default_lists(rows: int) -> int:
    """Fine lists for a partition of ``rows`` rows: about LIST_TARGET of LIST_ROWS..LIST_ROWS_MAX rows, at least one."""
    per_list = min(LIST_ROWS_MAX, max(LIST_ROWS, rows // LIST_TARGET))
    return max(1, min(rows, round(rows / per_list)))


def fine_lists(
    vectors: NDArray[np.float32], seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    """Cluster a partition's rows into fine lists: (row order grouping the lists, list starts, centroids)."""
    n = vectors.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros((0, vectors.shape[1]), np.float32)
    centroids, labels = kmeans(vectors, default_lists(n), seed=seed)
    order = np.argsort(labels, kind="stable").astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(np.bincount(labels, minlength=len(centroids))))).astype(np.int64)
    return order, starts, centroids


def prepare_vectors(vectors: object, metric: Metric, *, dim: int | None = None) -> NDArray[np.float32]:
    """Validate vectors as float32 (n, d); unit-normalise them for cosine."""
    x = as_vectors(vectors, dim=dim)
    if metric is Metric.COSINE:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            row = int(np.nonzero(norms[:, 0] == 0)[0][0])
            raise InvalidInputError(
                f"vector at row {row} has zero length, which has no cosine similarity; drop it or use metric='l2'"
            )
        x = x / norms
    return x


def rerank_storage(vectors: object, x: NDArray[np.float32], metric: Metric) -> NDArray[Any]:
    """Values kept for the exact re-rank: uint8 data stays uint8 (4x smaller, still exact)."""
    raw = np.asarray(vectors)
    if metric is not Metric.COSINE and raw.dtype == np.uint8:
        return np.ascontiguousarray(raw.reshape(x.shape))  # a single 1-D vector is one row, as in x
    return x


def check_build_params(partitions: object, seed: object, workers: object) -> None:
    """Integer checks of the build parameters, before any work (the manifest stores the seed as int64)."""
    for name, value, minimum, maximum in (
        ("partitions", partitions, 1, None),
        ("workers", workers, 1, None),
        ("seed", seed, 0, 2**63 - 1),
    ):
        if value is None and name != "seed":
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | np.integer)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            raise InvalidInputError(f"{name} must be an integer {bounds}, got {value!r}")


def build_in_memory(
    vectors: object,
    attributes: object = None,
    *,
    metric: str | Metric = Metric.L2,
    partitions: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    target_recall: float = DEFAULT_TARGET,
) -> tuple[IndexMeta, list[PartitionData]]:
    """Build the routing data and every partition of an index from arrays in memory, then calibrate its
    search effort to reach ``target_recall`` (`squash.calibration`)."""
    check_build_params(partitions, seed, workers)
    metric = Metric.parse(metric)
    target_recall = check_target(target_recall)
    x = prepare_vectors(vectors, metric)
    stored = rerank_storage(vectors, x, metric)
    n, d = x.shape
    schema, raw = normalize_attributes(attributes, n)
    p = default_partitions(n) if partitions is None else partitions
    if isinstance(p, bool) or not isinstance(p, int | np.integer) or not 1 <= p <= n:
        raise InvalidInputError(f"partitions must be an integer in [1, {n}] for {n} vectors, got {partitions!r}")
    attr_quantizer = AttributeQuantizer.fit(schema, raw, bits=ATTRIBUTE_BITS)
    codes = attr_quantizer.encode(raw, n=n)
    split = balanced_kmeans(x, int(p), seed=seed)
    order = np.argsort(split.assignment, kind="stable")
    starts = np.concatenate(([0], np.cumsum(split.sizes)))

    def build_partition(pid: int) -> PartitionData:
        rows = order[starts[pid] : starts[pid + 1]]
        grouped, list_starts, list_centroids = fine_lists(x[rows], seed + pid)
        rows = rows[grouped]
        part = x[rows]
        rotation = fit_klt(part)
        rotated = rotation.apply(part)
        scalar = ScalarCodes.encode(rotated)
        kept = part if stored is x else np.ascontiguousarray(stored[rows])
        return PartitionData(
            partition=pid,
            ids=rows.astype(np.int64),
            rotation=rotation,
            scalar=scalar,
            attr_codes=np.ascontiguousarray(codes[rows]),
            attr_raw={name: np.ascontiguousarray(col[rows]) for name, col in raw.items()},
            vectors=kept,
            list_starts=list_starts,
            list_centroids=list_centroids,
            vector_norms=(kept.astype(np.float64) ** 2).sum(axis=1).astype(np.float32),
            lead=leading_dims(rotated, scalar, seed + pid) if metric is not Metric.IP else 0,
        )

    # Partitions run in parallel threads; BLAS threads on top of them oversubscribe the cores
    # (eigh of a 784 x 784 covariance went from 0.13 s to 6 s under contention), so BLAS gets one.
    # One partition per core bounds peak memory to that many partitions' working sets.
    pool_size = workers or os.cpu_count() or 1
    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=pool_size) as pool:
        parts = list(pool.map(build_partition, range(int(p))))
    histograms = np.zeros((int(p), len(schema), _HISTOGRAM_CELLS), dtype=np.int64)
    for part in parts:
        for a in range(len(schema)):
            histograms[part.partition, a] = np.bincount(part.attr_codes[:, a], minlength=_HISTOGRAM_CELLS)
    meta = IndexMeta(
        dim=d,
        metric=metric,
        n_vectors=n,
        centroids=split.centroids,
        sizes=split.sizes.astype(np.int64),
        schema=schema,
        attr_quantizer=attr_quantizer,
        attr_histograms=histograms,
        attr_codes=tuple(part.attr_codes for part in parts),
        list_centroids=tuple(part.list_centroids for part in parts),
        params={"seed": int(seed), "partitions": int(p)},
    )
    return calibrate(meta, parts, x, raw, target=target_recall, seed=seed), parts
