"""Value intervals of filters and the sorted posting lists they trim."""

from __future__ import annotations

import math

import numpy as np
import pytest

from squash.attributes import AttributeQuantizer, normalize_attributes
from squash.errors import CorruptObjectError
from squash.filter import compile_filter, parse_filter
from squash.filter.interval import EVERYTHING, Interval, conjunct_intervals
from squash.search.conjunctions import conjunction_matches
from squash.search.postings import DriverBounds, Postings

N = 6000


@pytest.fixture(scope="module")
def ties():
    """A float attribute with over 256 distinct values and many duplicates: cells hold several values."""
    rng = np.random.default_rng(3)
    schema, raw = normalize_attributes({"v": np.round(rng.normal(scale=60, size=N)) / 4, "n": rng.integers(0, 4, N)}, N)
    quantizer = AttributeQuantizer.fit(schema, raw, bits=8)
    return schema, raw, quantizer, quantizer.encode(raw)


def test_conjunct_intervals_meet_ranges_and_equalities(ties):
    schema, *_ = ties

    def intervals(expr):
        return conjunct_intervals(parse_filter(expr, schema))

    assert intervals({"v": {"$gte": 1, "$lt": 5}}) == ({0: Interval(1.0, 5.0, False, True)}, True)
    assert intervals({"v": {"$gt": 1, "$gte": 1, "$lte": 3, "$lt": 9}}) == ({0: Interval(1.0, 3.0, True, False)}, True)
    assert intervals({"$and": [{"v": {"$gt": 2}}, {"v": {"$lte": 2}}]})[0][0] == Interval(2.0, 2.0, True, False)
    assert intervals({"v": 2.5}) == ({0: Interval(2.5, 2.5)}, True)
    assert intervals({"v": {"$lt": 4}, "n": 1}) == ({0: Interval(hi=4.0, hi_open=True), 1: Interval(1.0, 1.0)}, True)
    # Parts that are not intervals: the intervals still bound the matches, but the filter is more than them.
    assert intervals({"v": {"$lt": 4, "$ne": 2}}) == ({0: Interval(hi=4.0, hi_open=True)}, False)
    assert intervals({"$or": [{"v": 1}, {"v": 2}]}) == ({}, False)
    assert intervals({"$not": {"v": {"$lt": 1}}}) == ({}, False)
    assert intervals({"n": {"$in": [1, 2]}}) == ({}, False)
    assert Interval(-math.inf, math.inf) == EVERYTHING


def test_closed_intervals_hold_exactly_the_values_of_open_ones():
    ints = np.arange(-5, 6)
    floats = np.array([-1.0, math.nextafter(-1.0, 0.0), -0.0, 0.0, 2.5, math.nextafter(2.5, 0.0), 2.5000001])
    for values in (ints, floats):
        for lo, hi in [(-1.0, 2.5), (0.0, 0.0), (2.0, 3.0), (-0.0, 2.5)]:
            for lo_open in (False, True):
                for hi_open in (False, True):
                    low, high = Interval(lo, hi, lo_open, hi_open).closed()
                    above = values > lo if lo_open else values >= lo
                    below = values < hi if hi_open else values <= hi
                    np.testing.assert_array_equal((values >= low) & (values <= high), above & below)


@pytest.mark.parametrize(("batched_lookup", "batch_rows"), [(0, 50), (300, 50), (N, 1 << 16)])
def test_conjunctions_of_intervals_match_exactly(ties, batched_lookup, batch_rows):
    schema, raw, quantizer, codes = ties
    v = raw["v"]
    rng = np.random.default_rng(11)
    exprs = [  # ties at open and closed bounds on both attributes; either attribute may drive
        {"v": {"$gt": float(rng.choice(v)), "$lte": float(rng.choice(v)) + width}, "n": {"$gt": 0, "$lt": 3}}
        for width in (0.5, 5.0, 50.0, 500.0)
        for _ in range(5)
    ]
    exprs += [
        {"n": 2, "v": float(v[4])},
        {"n": {"$lte": 1}, "v": {"$gte": float(v[9])}},
        {"n": 3},
        {"v": {"$gt": 3.0, "$lt": 3.0}},  # nothing
        {"$and": [{"v": {"$lt": 40.0}}, {"n": {"$gte": 1}}, {"v": {"$gte": -40.0}}]},
    ]
    filters = [compile_filter(e, schema, quantizer) for e in exprs]
    assert all(f.is_conjunction for f in filters)
    lists = {
        a: Postings.build(codes[:, a], raw[name], np.bincount(codes[:, a], minlength=256))
        for a, name in enumerate(schema.names)
    }
    owner, rows = conjunction_matches(
        filters, lists.__getitem__, raw, N, batched_lookup=batched_lookup, batch_rows=batch_rows
    )
    assert (np.diff(owner) >= 0).all()
    for i, compiled in enumerate(filters):
        np.testing.assert_array_equal(rows[owner == i], np.flatnonzero(compiled.exact(raw)), err_msg=str(exprs[i]))
    others = ({"v": {"$lt": 3, "$ne": 1}}, {"$or": [{"n": 1}, {"v": 2.0}]}, {"n": {"$in": [1, 2]}})
    assert not any(compile_filter(e, schema, quantizer).is_conjunction for e in others)


def test_runs_hold_exactly_the_rows_inside_each_interval(ties):
    schema, raw, quantizer, codes = ties
    values = raw["v"]
    postings = Postings.build(codes[:, 0], values, np.bincount(codes[:, 0], minlength=256))
    rng = np.random.default_rng(8)
    exprs = []
    for _ in range(40):  # operands on stored values (ties at the bounds) and between them
        lo, hi = np.sort(rng.choice(values, 2)) + rng.choice([0.0, 0.1], 2)
        exprs.append({"v": {rng.choice(["$gt", "$gte"]): float(lo), rng.choice(["$lt", "$lte"]): float(hi)}})
    exprs += [{"v": float(values[7])}, {"v": {"$gt": 3.0, "$lt": 3.0}}, {"v": {"$lte": float(values.min())}}]
    filters = [compile_filter(e, schema, quantizer) for e in exprs]
    bounds = DriverBounds.of(filters, np.zeros(len(filters), dtype=np.int64))
    at = np.repeat(np.arange(len(filters)), 256)
    starts, stops = postings.runs(np.tile(np.arange(256), len(filters)), bounds, at)
    for i, compiled in enumerate(filters):
        mine = at == i
        rows = np.concatenate([postings.order[s:e] for s, e in zip(starts[mine], stops[mine], strict=True)])
        np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(compiled.exact(raw)), err_msg=str(exprs[i]))


def test_postings_reject_codes_that_disagree_with_values(ties):
    _, raw, _, codes = ties
    column = codes[:, 0].copy()
    low, high = int(np.argmin(raw["v"])), int(np.argmax(raw["v"]))
    column[low], column[high] = column[high], column[low]
    with pytest.raises(CorruptObjectError, match="rebuild the index"):
        Postings.build(column, raw["v"], np.bincount(column, minlength=256))
