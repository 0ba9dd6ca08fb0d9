"""Datasets: the bundled SIFT sample, the shared benchmark sets, and seeded synthetic data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

BUNDLED = Path(__file__).resolve().parent / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    """Base vectors, held-out queries and optional attributes (name -> column)."""

    name: str
    base: NDArray[np.generic]
    queries: NDArray[np.generic]
    attributes: dict[str, NDArray[np.generic]] = field(default_factory=dict)
    query_attributes: dict[str, NDArray[np.generic]] = field(default_factory=dict)


def bundled_sift() -> Dataset:
    """The 4,500 + 500 real SIFT vectors shipped with the package (uint8)."""
    return Dataset(
        "sift-5k (bundled)",
        np.load(BUNDLED / "sift5k_base.npy"),
        np.load(BUNDLED / "sift5k_queries.npy"),
    )


def shared_dataset(name: str) -> Dataset | None:
    """A dataset from ../shared/data, or None when it is absent (fresh clones have none)."""
    path = SHARED_DATA / name
    if not (path / "base.npy").exists():
        return None
    base, queries = np.load(path / "base.npy"), np.load(path / "queries.npy")
    if name.startswith("fashion-mnist"):
        names = ("label", "nonzero_pixels", "intensity_sum")
        ba, qa = np.load(path / "base_attrs.npy"), np.load(path / "query_attrs.npy")
        return Dataset(
            name,
            base,
            queries,
            {n: ba[:, i] for i, n in enumerate(names)},
            {n: qa[:, i] for i, n in enumerate(names)},
        )
    if name.startswith("debian-packages"):
        return Dataset(name, base, queries, *_debian_attributes(path))
    return Dataset(name, base, queries)


def _debian_attributes(path: Path) -> tuple[dict[str, NDArray[np.generic]], dict[str, NDArray[np.generic]]]:
    """Base and query attributes of the Debian package set: section name, installed size (KiB), number of
    dependencies, description length, team maintainer or not, and the role::program tag."""
    codes = json.loads((path / "attr_codes.json").read_text())
    sections = np.asarray(codes["sections"])
    program = codes["tag_columns"].index("role::program")

    def columns(rows: str) -> dict[str, NDArray[np.generic]]:
        raw, tags = np.load(path / f"{rows}_attrs.npy"), np.load(path / f"{rows}_tags.npy")
        return {
            "section": sections[raw[:, 0]],
            "installed_size": raw[:, 2].astype(np.int64),
            "n_depends": raw[:, 3].astype(np.int64),
            "description_chars": raw[:, 4].astype(np.int64),
            "team": raw[:, 5].astype(bool),
            "program": tags[:, program],
        }

    return columns("base"), columns("query")


def synthetic_clustered(
    n: int, dim: int = 128, *, n_queries: int = 1000, clusters: int = 100, attributes: int = 4, seed: int = 0
) -> Dataset:
    """SIFT-like clustered float32 data with ``attributes`` uniform [0, 1) attributes (SQUASH's workload).

    Cluster centres and per-cluster scales vary, and the clusters live in a lower-dimensional
    subspace plus noise, so the data has the correlated structure real embeddings have. Queries are
    drawn from the same distribution but are not base vectors.
    """
    rng = np.random.default_rng(seed)
    intrinsic = max(8, dim // 4)
    basis = rng.normal(size=(intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic)
    centres = rng.normal(scale=4.0, size=(clusters, intrinsic)).astype(np.float32)
    scales = rng.uniform(0.5, 1.5, size=clusters).astype(np.float32)

    def draw(count: int) -> NDArray[np.float32]:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 100_000):
            m = min(100_000, count - start)
            c = rng.integers(0, clusters, size=m)
            latent = centres[c] + rng.normal(size=(m, intrinsic)).astype(np.float32) * scales[c, None]
            out[start : start + m] = latent @ basis + rng.normal(scale=0.1, size=(m, dim)).astype(np.float32)
        return out

    base, queries = draw(n), draw(n_queries)
    attrs = {f"a{i}": rng.random(n) for i in range(attributes)}
    qattrs = {f"a{i}": rng.random(n_queries) for i in range(attributes)}
    return Dataset(f"synthetic-{n}x{dim}", base, queries, attrs, qattrs)


def synthetic_flat_spectrum(
    n: int,
    dim: int = 768,
    *,
    n_queries: int = 1000,
    clusters: int = 1000,
    decay: float = 0.5,
    spread: float = 0.6,
    attributes: int = 4,
    seed: int = 0,
) -> Dataset:
    """Unit vectors with a near-flat eigen-spectrum and cluster structure, like text embeddings.

    Along a random rotation, component variances fall slowly, as i^-``decay``. At the defaults, 20,000
    rows have the top 10 of 768 principal components hold 10% of the variance, 494 needed for 90% and a
    participation ratio of 325 (the Debian e5-small set: 17%, 230 of 384, 154). Points scatter around
    cluster centres drawn from the same anisotropic Gaussian, with ``spread`` times the centres' scale
    (varying 0.5-1.5x per cluster), so the spectrum of the whole stays flat while each point has nearer
    neighbours than a random pair. Rows are then normalised to unit length, and ``attributes`` uniform
    [0, 1) attributes are drawn as in `synthetic_clustered`. Queries come from the same distribution and
    are not base vectors. Deterministic given the arguments.
    """
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
    scale = (np.arange(1, dim + 1) ** (-decay / 2)).astype(np.float32)  # standard deviations
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) * scale
    spreads = (spread * rng.uniform(0.5, 1.5, size=clusters)).astype(np.float32)

    def draw(count: int) -> NDArray[np.float32]:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 50_000):
            m = min(50_000, count - start)
            c = rng.integers(0, clusters, size=m)
            noise = rng.normal(size=(m, dim)).astype(np.float32) * scale * spreads[c, None]
            block = (centres[c] + noise) @ rotation.T
            out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    base, queries = draw(n), draw(n_queries)
    attrs = {f"a{i}": rng.random(n) for i in range(attributes)}
    qattrs = {f"a{i}": rng.random(n_queries) for i in range(attributes)}
    return Dataset(f"flat-spectrum-{n}x{dim}", base, queries, attrs, qattrs)


def exact_knn(
    base: NDArray[np.generic], queries: NDArray[np.generic], k: int, mask: NDArray[np.bool_] | None = None
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Exact top-k by squared L2 (ties by lower id), optionally among rows where ``mask``; -1 pads."""
    x = np.asarray(base, dtype=np.float64)
    rows = np.arange(x.shape[0]) if mask is None else np.nonzero(mask)[0]
    x = x[rows]
    norms = (x * x).sum(axis=1)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    dists = np.full((len(queries), k), np.inf)
    kk = min(k, x.shape[0])
    pool = min(x.shape[0], 2 * k + 16)
    for start in range(0, len(queries), 256):
        q = np.asarray(queries[start : start + 256], dtype=np.float64)
        approx = norms[None, :] - 2 * q @ x.T + (q * q).sum(axis=1)[:, None]
        cand = np.argpartition(approx, pool - 1, axis=1)[:, :pool]
        # Recompute the candidates' distances directly: the expanded form loses precision.
        d = ((x[cand] - q[:, None, :]) ** 2).sum(axis=2)
        order = np.lexsort((rows[cand], d), axis=1)[:, :kk]
        ids[start : start + len(q), :kk] = rows[np.take_along_axis(cand, order, 1)]
        dists[start : start + len(q), :kk] = np.take_along_axis(d, order, 1)
    return ids, dists
