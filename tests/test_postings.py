"""Value intervals of filters and the sorted posting lists they trim."""

from __future__ import annotations

import math

import numpy as np
import pytest

from squash.attributes import AttributeQuantizer, normalize_attributes
from squash.errors import CorruptObjectError
from squash.filter import compile_filter, parse_filter
from squash.filter.interval import EVERYTHING, Interval, conjunct_intervals
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

    assert intervals({"v": {"$gte": 1, "$lt": 5}}) == ({0: Interval(1.0, 5.0, False, True)}, 0)
    assert intervals({"v": {"$gt": 1, "$gte": 1, "$lte": 3, "$lt": 9}}) == ({0: Interval(1.0, 3.0, True, False)}, 0)
    assert intervals({"$and": [{"v": {"$gt": 2}}, {"v": {"$lte": 2}}]})[0][0] == Interval(2.0, 2.0, True, False)
    assert intervals({"v": 2.5}) == ({0: Interval(2.5, 2.5)}, 0)
    # Several attributes, or parts that are not intervals: bounds still hold, but the filter is not exactly one.
    assert intervals({"v": {"$lt": 4}, "n": 1}) == ({0: Interval(hi=4.0, hi_open=True), 1: Interval(1.0, 1.0)}, None)
    assert intervals({"v": {"$lt": 4, "$ne": 2}}) == ({0: Interval(hi=4.0, hi_open=True)}, None)
    assert intervals({"$or": [{"v": 1}, {"v": 2}]}) == ({}, None)
    assert intervals({"$not": {"v": {"$lt": 1}}}) == ({}, None)
    assert intervals({"n": {"$in": [1, 2]}}) == ({}, None)
    assert Interval(-math.inf, math.inf) == EVERYTHING


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
    assert bounds.exact.all()
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
