"""Small synthetic data and exact-equality checks shared by the format, pipeline and ingest tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.testing import assert_array_equal

from squash.model import IndexMeta, PartitionData


def clustered(n: int = 3000, d: int = 32, *, seed: int = 0, clusters: int = 8) -> np.ndarray:
    """``n`` float32 vectors around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(clusters, d))
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d))).astype(np.float32)


def attributes(n: int = 3000, *, seed: int = 0) -> dict[str, np.ndarray]:
    """An int, a float and a category column."""
    rng = np.random.default_rng(seed + 1)
    return {
        "year": rng.integers(1990, 2030, n),
        "price": rng.gamma(2.0, 10.0, n),
        "color": rng.choice(np.array(["red", "green", "blue", "cyan", "black"]), n),
    }


def assert_same_meta(a: IndexMeta, b: IndexMeta) -> None:
    assert (a.dim, a.metric, a.n_vectors) == (b.dim, b.metric, b.n_vectors)
    for name in ("centroids", "sizes", "attr_histograms"):
        assert_array_equal(getattr(a, name), getattr(b, name), strict=True, err_msg=name)
    assert a.schema == b.schema
    qa, qb = a.attr_quantizer, b.attr_quantizer
    assert qa.schema == qb.schema
    for name in ("cell_lo", "cell_hi", "boundaries"):
        _same_arrays(getattr(qa, name), getattr(qb, name), name)
    _same_arrays(a.attr_codes, b.attr_codes, "attr_codes")
    _same_arrays(a.list_centroids, b.list_centroids, "list_centroids")
    # The calibration is measured (its recall table stops climbing where a rung runs slower than the exact
    # search on this machine), so two builds agree on its target and on every rung both measured.
    plain_a, plain_b = dict(a.params), dict(b.params)
    cal_a, cal_b = plain_a.pop("calibration"), plain_b.pop("calibration")
    assert plain_a == plain_b
    assert cal_a["target"] == cal_b["target"] and set(cal_a["recall"]) == set(cal_b["recall"])
    for kind, rows in cal_a["recall"].items():
        for ra, rb in zip(rows, cal_b["recall"][kind], strict=False):
            assert ra == rb, kind


def assert_same_partition(a: PartitionData, b: PartitionData) -> None:
    assert a.partition == b.partition
    for name in ("ids", "attr_codes", "vectors", "vector_norms", "list_starts", "list_centroids"):
        assert_array_equal(getattr(a, name), getattr(b, name), strict=True, err_msg=name)
    assert list(a.attr_raw) == list(b.attr_raw)
    for name in a.attr_raw:
        assert_array_equal(a.attr_raw[name], b.attr_raw[name], strict=True, err_msg=name)
    for name in ("mean", "matrix", "eigenvalues"):
        assert_array_equal(getattr(a.rotation, name), getattr(b.rotation, name), strict=True, err_msg=name)
    for name in ("lo", "step", "codes", "norms", "error"):
        assert_array_equal(getattr(a.scalar, name), getattr(b.scalar, name), strict=True, err_msg=name)


def assert_same_index(
    meta_a: IndexMeta, parts_a: list[PartitionData], meta_b: IndexMeta, parts_b: list[PartitionData]
) -> None:
    assert_same_meta(meta_a, meta_b)
    assert len(parts_a) == len(parts_b)
    for a, b in zip(parts_a, parts_b, strict=True):
        assert_same_partition(a, b)


def _same_arrays(a: tuple[Any, ...], b: tuple[Any, ...], name: str) -> None:
    assert len(a) == len(b), name
    for x, y in zip(a, b, strict=True):
        assert_array_equal(x, y, strict=True, err_msg=name)
