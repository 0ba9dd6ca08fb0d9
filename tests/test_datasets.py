"""Generated and shared benchmark datasets: shapes, determinism, and the geometry each one claims."""

from __future__ import annotations

import json

import numpy as np
import pytest

from squash.datasets import SHARED_DATA, shared_dataset, synthetic_clustered, synthetic_flat_spectrum


def _spectrum(x: np.ndarray) -> np.ndarray:
    """Eigenvalues of the covariance, descending, as shares of the total variance."""
    centred = x.astype(np.float64) - x.mean(axis=0)
    values = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    return values / values.sum()


@pytest.fixture(scope="module")
def flat():
    return synthetic_flat_spectrum(4000, n_queries=30, attributes=2, seed=5)


def test_flat_spectrum_shapes_and_unit_norms(flat):
    assert flat.base.shape == (4000, 768) and flat.base.dtype == np.float32
    assert flat.queries.shape == (30, 768)
    assert sorted(flat.attributes) == ["a0", "a1"] and all(len(v) == 4000 for v in flat.attributes.values())
    assert all(len(v) == 30 for v in flat.query_attributes.values())
    np.testing.assert_allclose(np.linalg.norm(flat.base, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(flat.queries, axis=1), 1.0, atol=1e-5)
    assert flat.name == "flat-spectrum-4000x768"


def test_flat_spectrum_is_deterministic_given_the_seed(flat):
    again = synthetic_flat_spectrum(4000, n_queries=30, attributes=2, seed=5)
    np.testing.assert_array_equal(again.base, flat.base)
    np.testing.assert_array_equal(again.queries, flat.queries)
    np.testing.assert_array_equal(again.attributes["a1"], flat.attributes["a1"])
    other = synthetic_flat_spectrum(4000, n_queries=30, attributes=2, seed=6)
    assert not np.allclose(other.base, flat.base)


def test_flat_spectrum_spreads_variance_over_most_dimensions(flat):
    shares = _spectrum(flat.base)
    participation = 1 / (shares**2).sum()
    needed = int(np.searchsorted(np.cumsum(shares), 0.9)) + 1
    assert shares[:10].sum() < 0.2 and needed > 768 / 3 and participation > 768 / 4
    # The contrast: the clustered SIFT-like generator in the same dimension keeps its variance in a few.
    sift_like = _spectrum(synthetic_clustered(4000, 768, n_queries=1, attributes=0, seed=5).base)
    assert sift_like[:10].sum() > 2 * shares[:10].sum()


def test_flat_spectrum_has_cluster_structure(flat):
    # 1,000 clusters of ~4 rows: a query's nearest row is usually in its own cluster.
    d2 = 2 - 2 * flat.queries @ flat.base.T
    assert np.median(d2.min(axis=1)) < 0.6 * np.median(d2)


@pytest.mark.skipif(
    not (SHARED_DATA / "debian-packages-e5small-384" / "base.npy").exists(), reason="shared dataset absent"
)
def test_debian_packages_loads_real_attributes_row_aligned():
    path = SHARED_DATA / "debian-packages-e5small-384"
    data = shared_dataset("debian-packages-e5small-384")
    assert data is not None
    assert data.base.shape == (53_697, 384) and data.queries.shape == (10_000, 384)
    cols, qcols = data.attributes, data.query_attributes
    assert all(len(v) == 53_697 for v in cols.values()) and all(len(v) == 10_000 for v in qcols.values())
    # The README's selectivities, counted on the loaded columns.
    assert int((cols["section"] == "python").sum()) == 3_863
    assert int(cols["program"].sum()) == 6_688
    assert int((cols["installed_size"] > 10_000).sum()) == 3_958
    assert int(((cols["section"] == "science") & cols["team"]).sum()) == 1_253
    codes = json.loads((path / "attr_codes.json").read_text())
    assert set(np.unique(qcols["section"])) <= set(codes["sections"])
