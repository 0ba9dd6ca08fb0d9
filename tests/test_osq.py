"""OSQ: rotation, bit allocation, Lloyd-Max cells, packing, sign codes and distance bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squash.errors import InvalidInputError
from squash.osq import (
    OSQ,
    SegmentLayout,
    accumulate,
    allocate_bits,
    fit_klt,
    hamming,
    ip_tables,
    l2_tables,
    lloyd_max,
    sign_codes,
    total_bit_budget,
)

SLACK = 1e-5


def correlated(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * rng.uniform(0.05, 3.0, size=d)
    return (rng.normal(size=(n, d)) @ mix + rng.normal(scale=20, size=d)).astype(np.float32)


def off_diagonal_mass(z: np.ndarray) -> float:
    cov = np.cov(z.astype(np.float64), rowvar=False, bias=True)
    off = cov - np.diag(np.diag(cov))
    return float((off**2).sum() / (cov**2).sum())


# --- rotation -------------------------------------------------------------------------------


def test_klt_decorrelates_and_orders_energy():
    x = correlated(4000, 16, seed=1)
    rot = fit_klt(x)
    z = (x.astype(np.float64) - rot.mean) @ rot.matrix.astype(np.float64)
    assert off_diagonal_mass(z) <= 1e-8
    variances = z.var(axis=0)
    assert np.all(np.diff(rot.eigenvalues) <= 0)
    np.testing.assert_allclose(variances, rot.eigenvalues, rtol=1e-4, atol=1e-6 * variances.max())
    np.testing.assert_allclose(rot.matrix.T @ rot.matrix, np.eye(16), atol=1e-5)


def test_transposed_rotation_of_the_reference_fails_decorrelation():
    """The reference multiplies by the eigenvector-rows matrix; that must not pass our test."""
    x = correlated(4000, 16, seed=2)
    rot = fit_klt(x)
    wrong = (x.astype(np.float64) - rot.mean) @ rot.matrix.T.astype(np.float64)
    assert off_diagonal_mass(wrong) > 1e-2


def test_rotation_preserves_distances_and_build_equals_query_path():
    x = correlated(500, 24, seed=3)
    rot = fit_klt(x)
    z = rot.apply(x)
    d_orig = ((x[:50, None] - x[None, :50]) ** 2).sum(-1)
    d_rot = ((z[:50, None] - z[None, :50]) ** 2).sum(-1)
    np.testing.assert_allclose(d_rot, d_orig, rtol=1e-3, atol=1e-2)
    np.testing.assert_array_equal(rot.apply(x[7:8]), z[7:8])


def test_rotation_is_deterministic_and_rank_deficient_data_gets_zero_bits():
    x = correlated(300, 8, seed=4)
    x = np.concatenate([x, x[:, :2]], axis=1)  # two duplicated dimensions: rank 8 of 10
    a, b = OSQ.fit(x), OSQ.fit(x.copy())
    np.testing.assert_array_equal(a.rotation.matrix, b.rotation.matrix)
    assert a.cells.bits[-2:].tolist() == [0, 0]
    assert a.cells.bits.sum() == 40


# --- bit allocation -------------------------------------------------------------------------


@given(
    energies=st.lists(st.floats(0.01, 1e6), min_size=1, max_size=64),
    per_dim=st.floats(0.1, 8.0),
)
def test_allocation_spends_budget_within_limits_and_follows_energy(energies, per_dim):
    e = np.array(sorted(energies, reverse=True))
    budget = max(1, round(per_dim * len(e)))
    alloc = allocate_bits(e, budget)
    assert alloc.total == budget and alloc.unspent == 0
    assert alloc.bits.min() >= 0 and alloc.bits.max() <= 8
    assert np.all(np.diff(alloc.bits.astype(int)) <= 0)


def test_allocation_skips_saturated_dimensions_and_reports_unspent_bits():
    alloc = allocate_bits(np.array([10.0, 5.0, 1.0]), 12, capacity=np.array([2, 8, 0]))
    assert alloc.bits.tolist() == [2, 8, 0]
    assert alloc.unspent == 2
    assert allocate_bits(np.array([4.0, 1.0]), 16).bits.tolist() == [8, 8]


def test_constant_dimension_gets_no_bits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    x[:, 3] = 7.0
    osq = OSQ.fit(x, bits_per_dim=4)
    assert osq.cells.bits.sum() == 24
    assert (osq.rotation.eigenvalues[osq.cells.bits == 0] < 1e-6).all()


@pytest.mark.parametrize("per_dim", [0.0, -1.0, 8.5, float("nan"), 0.01])
def test_budget_out_of_range_is_a_clear_error(per_dim):
    with pytest.raises(InvalidInputError, match="bits_per_dim"):
        total_bit_budget(per_dim, 16)


# --- Lloyd-Max cells ------------------------------------------------------------------------


@pytest.mark.parametrize("cells", [2, 4, 16, 256])
def test_lloyd_max_reduces_distortion_from_equi_depth(cells):
    rng = np.random.default_rng(cells)
    column = np.sort(np.concatenate([rng.normal(size=3000), rng.exponential(4, size=1000)]))

    def distortion(edges):
        codes = np.searchsorted(edges, column, side="right")
        means = np.bincount(codes, column, minlength=len(edges) + 1) / np.maximum(
            np.bincount(codes, minlength=len(edges) + 1), 1
        )
        return float(((column - means[codes]) ** 2).sum())

    edges, iterations = lloyd_max(column, cells)
    equi = np.unique(column[np.ceil(np.arange(1, cells) * len(column) / cells).astype(int)])
    assert np.all(np.diff(edges) >= 0)
    assert len(edges) <= cells - 1
    assert iterations >= 1
    assert distortion(edges) <= distortion(equi) * (1 + 1e-9)


def test_every_training_value_lies_in_its_cell():
    x = correlated(3000, 12, seed=5)
    osq = OSQ.fit(x, bits_per_dim=3)
    z = osq.rotation.apply(x)
    codes = osq.cells.encode(z)
    d = np.arange(12)
    assert (osq.cells.lo[d, codes] <= z).all() and (z <= osq.cells.hi[d, codes]).all()
    assert (codes < (1 << osq.cells.bits.astype(int))).all()


# --- packing --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    bits=st.lists(st.integers(0, 8), min_size=1, max_size=40),
    n=st.integers(1, 70),
    seed=st.integers(0, 2**31),
)
def test_pack_extract_round_trip_with_straddling_codes(bits, n, seed):
    rng = np.random.default_rng(seed)
    b = np.array(bits, dtype=np.uint8)
    codes = (rng.integers(0, 256, size=(n, len(bits))) % (1 << b.astype(int))).astype(np.uint8)
    layout = SegmentLayout.from_bits(b)
    segments = layout.pack(codes)
    assert segments.shape == (-(-int(b.sum()) // 8), n)
    np.testing.assert_array_equal(layout.unpack(segments), codes)
    rows = rng.choice(n, size=rng.integers(1, n + 1), replace=True)
    np.testing.assert_array_equal(layout.unpack(segments, rows), codes[rows])
    for dim in range(len(bits)):
        np.testing.assert_array_equal(layout.extract(segments, dim, rows), codes[rows, dim])


def test_packing_is_msb_first_and_segment_major():
    layout = SegmentLayout.from_bits(np.array([3, 7, 6], dtype=np.uint8))
    codes = np.array([[0b101, 0b1100110, 0b111111], [0, 0, 1]], dtype=np.uint8)
    segments = layout.pack(codes)
    # row 0 bits: 101 1100110 111111 -> 10111001 10111111 (16 bits, no padding)
    assert segments[:, 0].tolist() == [0b10111001, 0b10111111]
    assert segments[:, 1].tolist() == [0, 1]


# --- sign codes -----------------------------------------------------------------------------


def test_hamming_matches_bitwise_definition():
    rng = np.random.default_rng(9)
    z = rng.normal(size=(50, 77))
    q = rng.normal(size=(4, 77))
    got = hamming(sign_codes(z), sign_codes(q))
    want = ((q[:, None, :] > 0) != (z[None, :, :] > 0)).sum(-1)
    np.testing.assert_array_equal(got, want)


# --- distance bounds ------------------------------------------------------------------------


def bounds_for(osq: OSQ, x: np.ndarray, q: np.ndarray, metric: str):
    enc = osq.encode(x)
    if metric == "l2":
        lo_t, hi_t = l2_tables(osq.rotation.apply(q), osq.cells)
        exact = ((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
        offset = 0.0
    else:
        lo_t, hi_t = ip_tables(osq.rotation.apply_direction(q), osq.cells)
        exact = -(q.astype(np.float64) @ x.astype(np.float64).T)
        offset = -(q.astype(np.float64) @ osq.rotation.mean.astype(np.float64))[:, None]
    lb = accumulate(lo_t, enc.segments, osq.layout) + offset
    ub = accumulate(hi_t, enc.segments, osq.layout) + offset
    return lb, exact, ub


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 300),
    d=st.integers(1, 24),
    per_dim=st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0]),
    metric=st.sampled_from(["l2", "ip"]),
    seed=st.integers(0, 2**31),
)
def test_lower_bound_exact_upper_bound_on_random_data(n, d, per_dim, metric, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)).astype(np.float32)
    q = (rng.normal(size=(5, d)) * 20).astype(np.float32)  # many queries fall outside the data range
    lb, exact, ub = bounds_for(OSQ.fit(x, bits_per_dim=max(per_dim, 1.0 / d)), x, q, metric)
    scale = np.abs(exact).max() + 1.0
    assert (lb <= exact + SLACK * scale).all()
    assert (exact <= ub + SLACK * scale).all()


def test_bounds_hold_on_real_sift(sift5k):
    x, q = sift5k["base"], sift5k["queries"][:50]
    lb, exact, ub = bounds_for(OSQ.fit(x), x, q, "l2")
    assert (lb <= exact * (1 + SLACK) + 1e-3).all()
    assert (exact <= ub * (1 + SLACK) + 1e-3).all()
    top = np.argsort(lb, axis=1)[:, :20]
    reranked = np.take_along_axis(top, np.argsort(np.take_along_axis(exact, top, 1), 1)[:, :10], 1)
    recall = np.mean([len(set(r) & set(g[:10])) / 10 for r, g in zip(reranked, sift5k["gt_ids"][:50], strict=True)])
    assert recall >= 0.95


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
        (np.array([["a", "b"]]), "numbers"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros((2, 2, 2)), "2-D"),
    ],
)
def test_fit_rejects_bad_input_with_clear_errors(data, match):
    with pytest.raises(InvalidInputError, match=match):
        OSQ.fit(data)
