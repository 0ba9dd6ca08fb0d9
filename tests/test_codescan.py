"""Scalar codes and the code scan, against numpy computed independently: estimates, their error bound, and a
selection that equals the exact top-depth whatever the float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest

from squash.build import build_in_memory
from squash.model import Metric
from squash.osq.scalar import ScalarCodes
from squash.search.codescan import estimate_table, pair_estimates, rounding_margin, select_depth
from squash.search.levels import QueryCodes
from squash.search.prepared import PreparedPartition


def test_codes_decode_within_their_stored_error_and_bound_the_distance() -> None:
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(3000, 24)) * np.geomspace(10, 0.01, 24)).astype(np.float32)
    z[:, 5] = 2.5  # a constant dimension decodes exactly
    sc = ScalarCodes.encode(z)
    decoded = sc.lo.astype(np.float64) + sc.step.astype(np.float64) * sc.codes
    np.testing.assert_allclose(np.sqrt(((z - decoded) ** 2).sum(axis=1)), sc.error, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((decoded**2).sum(axis=1), sc.norms, rtol=1e-5)
    assert np.abs(decoded[:, 5] - 2.5).max() < 1e-6
    assert (np.abs(z - decoded) <= sc.step / 2 * (1 + 1e-4) + 1e-7).all()  # half a cell per dimension
    q = rng.normal(size=(50, 24)) * 5
    true = np.sqrt(((q[:, None, :] - z[None].astype(np.float64)) ** 2).sum(axis=2))
    est = np.sqrt(((q[:, None, :] - decoded[None]) ** 2).sum(axis=2))
    assert (np.abs(est - true) <= sc.error[None, :] * (1 + 1e-5) + 1e-6).all()


@pytest.fixture(scope="module", params=["l2", "ip", "cosine"])
def part(request: pytest.FixtureRequest) -> tuple[PreparedPartition, Metric]:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(4000, 40)) + 3.0).astype(np.float32)
    _, parts = build_in_memory(x, None, metric=request.param, partitions=1)
    return PreparedPartition(parts[0]), Metric(request.param)


def test_pair_estimates_are_the_distance_to_the_decoded_rows(part: tuple[PreparedPartition, Metric]) -> None:
    prepared, metric = part
    rng = np.random.default_rng(2)
    queries = rng.normal(size=(7, 40)).astype(np.float32) + 3.0
    if metric is Metric.COSINE:
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    codes = QueryCodes(prepared, queries, metric)
    sc, rotation = prepared.data.scalar, prepared.data.rotation
    decoded = sc.lo.astype(np.float64) + sc.step.astype(np.float64) * sc.codes
    # Back to the original space: x̂ = mean + decoded @ V^T (the rotation is orthonormal).
    original = rotation.mean.astype(np.float64) + decoded @ rotation.matrix.astype(np.float64).T
    q = queries.astype(np.float64)
    want = -(q @ original.T) if metric is Metric.IP else ((q[:, None, :] - original[None]) ** 2).sum(axis=2)
    qi, rows = np.repeat(np.arange(7), 50), rng.integers(0, prepared.size, 350)
    got = pair_estimates(prepared, codes, qi, rows)
    np.testing.assert_allclose(got, want[qi, rows], rtol=1e-4, atol=1e-3)


def test_the_float32_table_is_within_its_margin_of_the_pair_estimates(part: tuple[PreparedPartition, Metric]) -> None:
    prepared, metric = part
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(9, 40)).astype(np.float32) + 3.0
    codes = QueryCodes(prepared, queries, metric)
    qs = np.arange(1, 9)  # a subset, as a list scan passes
    starts = prepared.data.list_starts
    lists = np.arange(min(4, prepared.data.n_lists))
    pair_q, pair_list = np.repeat(np.arange(len(qs)), len(lists)), np.tile(lists, len(qs))
    sizes = np.diff(starts)[lists]
    width = int(sizes.sum())
    pair_at = pair_q * width + np.tile(np.cumsum(sizes) - sizes, len(qs))
    table = estimate_table(prepared, codes, qs, pair_q, pair_list, pair_at, width)
    rows = np.concatenate([np.arange(starts[j], starts[j + 1]) for j in lists])
    q_all, r_all = np.repeat(qs, width), np.tile(rows, len(qs))
    exact = pair_estimates(prepared, codes, q_all, r_all).reshape(len(qs), width)
    margin = rounding_margin(prepared, codes, qs)
    assert (np.abs(table - exact) <= margin[:, None]).all()


@pytest.mark.parametrize("seed", range(6))
def test_select_depth_equals_the_exact_top_depth_under_any_rounding(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nq, width = 12, 500
    exact = rng.normal(size=(nq, width)).round(2)  # many ties
    margin = np.full(nq, 0.02)
    noisy = (exact + rng.uniform(-1, 1, size=exact.shape) * margin[:, None] * 0.99).astype(np.float32)
    noisy[rng.random(size=exact.shape) < 0.2] = np.inf  # padding and rows failing a filter
    noisy[0, 10:] = np.inf  # fewer finite entries than the depth
    depth = rng.integers(1, 60, size=nq)
    got = select_depth(noisy, depth, margin, lambda q, c: exact[q, c])
    for i in range(nq):
        finite = np.flatnonzero(np.isfinite(noisy[i]))
        want = finite[np.lexsort((finite, exact[i, finite]))][: depth[i]]
        chosen = got[i][got[i] >= 0]
        assert sorted(chosen.tolist()) == sorted(want.tolist()), i
        assert len(chosen) == min(depth[i], len(finite))


def test_spans_below_float32_resolution_still_encode() -> None:
    z = np.zeros((5, 3), dtype=np.float32)
    z[1, 0] = np.float32(1e-44)  # subnormal: span / 255 underflows float32
    sc = ScalarCodes.encode(z)
    assert (sc.step > 0).all() and np.isfinite(sc.error).all()
    assert sc.error.max() <= 1e-44


def test_leading_dims_are_kept_only_where_they_rank_the_neighbours() -> None:
    from squash.osq import fit_klt
    from squash.osq.lead import leading_dims

    rng = np.random.default_rng(5)
    n, d = 3000, 128
    # Variance in the head, neighbours decided by the head too: the lead suffices.
    head = rng.normal(size=(n, d)) * np.geomspace(10, 0.01, d)
    # Clusters far apart in 8 dimensions (most of the variance), neighbours within a cluster decided by
    # isotropic noise over all 128: ranking by a quarter of the dimensions would lose them.
    centres = np.zeros((20, d))
    centres[:, :8] = rng.normal(size=(20, 8)) * 100
    tail = centres[rng.integers(0, 20, n)] + rng.normal(size=(n, d))
    found = []
    for x in (head, tail):
        rotation = fit_klt(x.astype(np.float32))
        z = rotation.apply(x)
        found.append(leading_dims(z, ScalarCodes.encode(z)))
    assert 0 < found[0] <= d // 4
    assert found[1] == 0


def test_the_leading_dimensions_table_is_within_its_margin_of_the_pair_estimates() -> None:
    rng = np.random.default_rng(8)
    x = (rng.normal(size=(4000, 64)) * np.geomspace(30, 0.01, 64)).astype(np.float32)
    _, parts = build_in_memory(x, None, partitions=1)
    prepared = PreparedPartition(parts[0])
    assert prepared.lead > 0
    codes = QueryCodes(prepared, (rng.normal(size=(6, 64)) * np.geomspace(30, 0.01, 64)).astype(np.float32), Metric.L2)
    qs = np.arange(6)
    sizes = np.diff(prepared.data.list_starts)[:3]
    width = int(sizes.sum())
    pair_q, pair_list = np.repeat(qs, 3), np.tile(np.arange(3), 6)
    pair_at = pair_q * width + np.tile(np.cumsum(sizes) - sizes, 6)
    table = estimate_table(prepared, codes, qs, pair_q, pair_list, pair_at, width, lead=True)
    rows = np.arange(width)  # lists 0-2 are the first rows
    exact = pair_estimates(prepared, codes, np.repeat(qs, width), np.tile(rows, 6), lead=True).reshape(6, width)
    assert (np.abs(table - exact) <= rounding_margin(prepared, codes, qs, lead=True)[:, None]).all()
    full = pair_estimates(prepared, codes, np.repeat(qs, width), np.tile(rows, 6)).reshape(6, width)
    assert (exact <= full + 1e-6 * np.abs(full).max()).all()  # over fewer dimensions: a lower bound
