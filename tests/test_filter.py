"""Filter language: parsing, validation and the no-false-negative / no-false-positive cell evaluation."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from squash.attributes import AttributeQuantizer, AttributeSchema, AttrType, normalize_attributes
from squash.errors import FilterError, InvalidInputError
from squash.filter import (
    FULL,
    MAX_DEPTH,
    MAX_LEAVES,
    NONE,
    PARTIAL,
    And,
    Compare,
    CompiledFilter,
    In,
    Not,
    Op,
    Or,
    compile_exprs,
    compile_filter,
    group_of,
    parse_filter,
)
from squash.filter.batch import drivers_many, estimates_many, matches_many, partition_bounds_many

N = 4000
NUMERIC_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
DISCRETE_OPS = ("$eq", "$ne", "$in", "$nin")


@functools.cache
def dataset() -> tuple[AttributeSchema, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1234)
    return normalize_attributes(
        {
            "few": rng.integers(-3, 4, N),  # exact at every bit width used here
            "many": rng.integers(0, 100_000, N),
            "normal": rng.normal(size=N),
            "ties": np.round(rng.normal(scale=60, size=N)) / 4,  # > 256 distinct, many duplicates
            "flag": rng.random(N) < 0.3,
            "cat": np.array(["red", "green", "blue", "Cyan", "ébène"])[rng.integers(0, 5, N)],
            "bigcat": np.char.add("c", rng.integers(0, 300, N).astype(str)),  # quantized categories
        },
        N,
    )


@functools.cache
def quantized(bits: int) -> tuple[AttributeQuantizer, np.ndarray]:
    schema, raw = dataset()
    q = AttributeQuantizer.fit(schema, raw, bits=bits)
    return q, q.encode(raw)


@dataclass
class Context:
    schema: AttributeSchema
    pools: list[np.ndarray]  # candidate operands per attribute, raw units


def make_context(schema: AttributeSchema, q: AttributeQuantizer, raw: dict[str, np.ndarray]) -> Context:
    """Operands on the edges that matter: data values, cell minima/maxima, boundaries, outside the range."""
    rng = np.random.default_rng(99)
    pools = []
    for a, spec in enumerate(schema.fields):
        col = raw[spec.name].astype(np.float64)
        if spec.type in (AttrType.BOOL, AttrType.CATEGORY):
            pools.append(np.arange(2 if spec.type is AttrType.BOOL else len(spec.categories), dtype=float))
            continue
        edges = np.concatenate((q.cell_lo[a], q.cell_hi[a], q.boundaries[a]))
        pool = np.concatenate((col[rng.integers(0, col.size, 16)], edges, [col.min() - 1, col.max() + 1]))
        if spec.type is AttrType.INT:
            pool = np.concatenate((np.floor(pool), np.ceil(pool), np.floor(pool) - 1, np.ceil(pool) + 1))
        else:
            pool = np.concatenate((pool, np.nextafter(pool, np.inf), np.nextafter(pool, -np.inf)))
        pools.append(np.unique(pool))
    return Context(schema, pools)


def user_value(rng: np.random.Generator, ctx: Context, a: int) -> Any:
    spec = ctx.schema.fields[a]
    v = float(rng.choice(ctx.pools[a]))
    if spec.type is AttrType.BOOL:
        return bool(v)
    if spec.type is AttrType.CATEGORY:
        return spec.categories[int(v)]
    if v.is_integer() and rng.random() < 0.5:
        return int(v) if spec.type is AttrType.FLOAT else float(v)  # the other accepted spelling
    return int(v) if spec.type is AttrType.INT else v


def random_leaf(rng: np.random.Generator, ctx: Context, a: int | None = None) -> dict[str, Any]:
    a = int(rng.integers(len(ctx.schema))) if a is None else a
    spec = ctx.schema.fields[a]
    if rng.random() < 0.15:
        return {spec.name: user_value(rng, ctx, a)}
    ops = DISCRETE_OPS if spec.type in (AttrType.BOOL, AttrType.CATEGORY) else NUMERIC_OPS
    term = {}
    for op in rng.choice(ops, size=int(rng.integers(1, 3)), replace=False):
        if op in ("$in", "$nin"):
            term[str(op)] = [user_value(rng, ctx, a) for _ in range(int(rng.integers(1, 6)))]
        else:
            term[str(op)] = user_value(rng, ctx, a)
    return {spec.name: term}


def random_filter(rng: np.random.Generator, ctx: Context, depth: int = 0, a: int | None = None) -> dict:
    if depth < 4 and rng.random() < 0.4:
        kind = rng.choice(["$and", "$or", "$not", "keys"])
        if kind == "$not":
            return {"$not": random_filter(rng, ctx, depth + 1, a)}
        if kind == "keys":
            expr: dict[str, Any] = {}
            for _ in range(int(rng.integers(1, 4))):
                expr.update(random_leaf(rng, ctx, a))
            return expr
        return {str(kind): [random_filter(rng, ctx, depth + 1, a) for _ in range(int(rng.integers(1, 4)))]}
    return random_leaf(rng, ctx, a)


def fields_of(predicate) -> set[str]:
    match predicate:
        case Compare() | In():
            return {predicate.field}
        case Not(child):
            return fields_of(child)
        case And(children) | Or(children):
            return set().union(*map(fields_of, children))
    raise AssertionError(predicate)


def histograms(codes: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(codes[:, a], minlength=256) for a in range(codes.shape[1])])


def bounds_of(f: CompiledFilter, h: np.ndarray) -> tuple[int, int]:
    """(certain, possible) of one filter in one partition with code histograms ``h`` (A, 256)."""
    certain, possible, _ = partition_bounds_many([f], h[None])
    return int(certain[0, 0]), int(possible[0, 0])


def check_guarantee(f: CompiledFilter, codes: np.ndarray, raw: dict[str, np.ndarray], seed: int) -> tuple:
    """Asserts certain ⊆ exact ⊆ possible, matches == exact (all rows and subsets) and histogram bounds."""
    states = f.cell_states(codes)
    assert states.dtype == np.uint8 and states.shape == (codes.shape[0],)
    assert np.isin(states, [NONE, PARTIAL, FULL]).all()
    exact = f.exact(raw)
    assert exact.dtype == bool and exact.shape == states.shape
    assert exact[states == FULL].all(), "false positive: a FULL row does not match"
    assert not exact[states == NONE].any(), "false negative: a NONE row matches"
    np.testing.assert_array_equal(f.matches(codes, raw), exact)
    rng = np.random.default_rng(seed)
    rows = rng.choice(codes.shape[0], size=codes.shape[0] // 3, replace=False)
    np.testing.assert_array_equal(f.matches(codes, raw, rows), exact[rows])
    np.testing.assert_array_equal(f.exact(raw, rows), exact[rows])
    mask = rng.random(codes.shape[0]) < 0.5
    np.testing.assert_array_equal(f.matches(codes, raw, mask), exact[mask])
    # Three "partitions" of the rows, each with its own code histograms; bounds for all three at once agree.
    parts = np.array_split(rng.permutation(codes.shape[0]), 3)
    stacked = np.stack([histograms(codes[part]) for part in parts])
    all_certain, all_possible, ceilings = (b[0] for b in partition_bounds_many([f], stacked))
    for i, part in enumerate(parts):
        certain, possible = bounds_of(f, stacked[i])
        assert (certain, possible) == (all_certain[i], all_possible[i])
        assert certain <= int(exact[part].sum()) <= possible
        assert certain <= int((states[part] == FULL).sum()) <= ceilings[i]
        if len(fields_of(f.predicate)) == 1:
            part_states = states[part]
            assert certain == int((part_states == FULL).sum())
            assert possible == int((part_states != NONE).sum())
    return states, exact


@pytest.mark.parametrize("bits", [8, 3])
def test_random_filters_have_no_false_negatives_or_positives(bits):
    schema, raw = dataset()
    q, codes = quantized(bits)
    ctx = make_context(schema, q, raw)
    rng = np.random.default_rng(bits)
    mixed = partial_rows = 0
    for i in range(150):
        expr = random_filter(rng, ctx)
        f = compile_filter(expr, schema, q)
        states, exact = check_guarantee(f, codes, raw, seed=i)
        mixed += bool(0 < exact.sum() < N)
        partial_rows += int((states == PARTIAL).sum())
    # The generator must produce informative filters, not all-or-nothing ones.
    assert mixed > 50 and partial_rows > 0


@pytest.mark.parametrize("bits", [8, 3])
def test_single_attribute_filters_bounds_are_exact(bits):
    schema, raw = dataset()
    q, codes = quantized(bits)
    ctx = make_context(schema, q, raw)
    rng = np.random.default_rng(100 + bits)
    for i in range(100):
        a = i % len(schema)
        check_guarantee(compile_filter(random_filter(rng, ctx, a=a), schema, q), codes, raw, seed=i)


@pytest.mark.parametrize("name", ["many", "normal", "ties"])
def test_every_edge_operand_with_every_comparison(name):
    schema, raw = dataset()
    q, codes = quantized(8)
    a = schema.index(name)
    operands = np.unique(np.concatenate((q.cell_lo[a], q.cell_hi[a], q.boundaries[a])))
    column = raw[name]
    for v in operands[:: max(1, operands.size // 150)]:
        v = int(v) if schema.fields[a].type is AttrType.INT else float(v)
        for op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
            f = compile_filter({name: {op: v}}, schema, q)
            states = f.cell_states(codes)
            exact = f.exact(raw)
            expected = {
                "$eq": column == v,
                "$ne": column != v,
                "$gt": column > v,
                "$gte": column >= v,
                "$lt": column < v,
                "$lte": column <= v,
            }[op]
            np.testing.assert_array_equal(exact, expected)
            assert exact[states == FULL].all() and not exact[states == NONE].any()
            np.testing.assert_array_equal(f.matches(codes, raw), expected)
            # Only the one cell straddling the operand can be PARTIAL.
            assert np.unique(codes[states == PARTIAL, a]).size <= 1


@pytest.mark.parametrize("bits", [8, 3])
def test_exact_attributes_never_partial(bits):
    schema, raw = dataset()
    q, codes = quantized(bits)
    ctx = make_context(schema, q, raw)
    rng = np.random.default_rng(7)
    exact_attrs = [a for a, name in enumerate(schema.names) if np.unique(raw[name]).size <= 2**bits]
    assert {schema.fields[a].name for a in exact_attrs} >= {"few", "flag", "cat"}
    for i in range(120):
        a = exact_attrs[i % len(exact_attrs)]
        f = compile_filter(random_filter(rng, ctx, a=a), schema, q)
        assert not (f.cell_states(codes) == PARTIAL).any()


def test_quantized_range_filter_is_mostly_decided_on_codes():
    schema, raw = dataset()
    q, codes = quantized(8)
    f = compile_filter({"normal": {"$gte": -0.3, "$lt": 0.8}, "many": {"$lt": 50_000}}, schema, q)
    states, exact = check_guarantee(f, codes, raw, seed=0)
    assert (states == PARTIAL).sum() < N // 20 and 0 < exact.sum() < N


def test_in_on_quantized_category_is_full_when_the_set_covers_the_cell():
    schema, raw = dataset()
    q, codes = quantized(3)
    a = schema.index("bigcat")
    categories = schema.fields[a].categories
    # Cell 2's codes are consecutive integers lo..hi: naming them all makes the cell FULL.
    lo, hi = int(q.cell_lo[a][2]), int(q.cell_hi[a][2])
    covered = [categories[c] for c in range(lo, hi + 1)]
    f = compile_filter({"bigcat": {"$in": covered}}, schema, q)
    states, _ = check_guarantee(f, codes, raw, seed=0)
    assert (states[codes[:, a] == 2] == FULL).all()
    g = compile_filter({"bigcat": {"$nin": covered[1:]}}, schema, q)
    states, _ = check_guarantee(g, codes, raw, seed=0)
    assert (states[codes[:, a] == 2] == PARTIAL).all()


@settings(max_examples=40, deadline=None)
@given(
    ints=hnp.arrays(np.int64, 50, elements=st.integers(-20, 20)),
    floats=hnp.arrays(
        np.float64,
        50,
        elements=st.one_of(st.sampled_from([0.0, -0.0, 1.0, 0.5]), st.floats(-1e6, 1e6, allow_nan=False)),
    ),
    bits=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_guarantee_property(ints, floats, bits, seed):
    schema, raw = normalize_attributes({"i": ints, "f": floats}, 50)
    q = AttributeQuantizer.fit(schema, raw, bits=bits)
    codes = q.encode(raw)
    ctx = make_context(schema, q, raw)
    rng = np.random.default_rng(seed)
    for i in range(5):
        check_guarantee(compile_filter(random_filter(rng, ctx), schema, q), codes, raw, seed=i)


def test_parse_structure_and_values():
    schema, _ = dataset()
    few, normal, flag, cat = (schema.index(x) for x in ("few", "normal", "flag", "cat"))
    assert parse_filter(None, schema) is None and parse_filter({}, schema) is None
    assert parse_filter({"few": 2, "normal": {"$gte": 0, "$lt": 1.5}}, schema) == And(
        (
            Compare("few", few, Op.EQ, 2.0),
            And((Compare("normal", normal, Op.GTE, 0.0), Compare("normal", normal, Op.LT, 1.5))),
        )
    )
    assert parse_filter({"cat": {"$nin": ["red", "blue", "red"]}}, schema) == Not(
        In(
            "cat",
            cat,
            (schema.fields[cat].categories.index("blue"), schema.fields[cat].categories.index("red")),
        )
    )
    assert parse_filter({"$or": [{"flag": True}, {"$not": {"few": 2.0}}]}, schema) == Or(
        (Compare("flag", flag, Op.EQ, 1.0), Not(Compare("few", few, Op.EQ, 2.0)))
    )
    assert parse_filter({"few": np.int64(3)}, schema) == Compare("few", few, Op.EQ, 3.0)
    assert parse_filter({"flag": np.bool_(False)}, schema) == Compare("flag", flag, Op.EQ, 0.0)


def test_int_operands_beyond_float_precision():
    schema, raw = dataset()
    q, codes = quantized(8)
    for expr, expected in [
        ({"many": {"$lt": 2**70}}, N),
        ({"many": {"$gt": -(2**70)}}, N),
        ({"many": 2**70}, 0),
        ({"many": {"$in": [2**53 + 1, -(2**64)]}}, 0),
        ({"many": {"$lte": 2**53 + 1}}, N),
    ]:
        f = compile_filter(expr, schema, q)
        assert int(f.matches(codes, raw).sum()) == expected, expr
    big, braw = normalize_attributes({"v": np.array([2**53, 2**53 - 1, 0])}, 3)
    bq = AttributeQuantizer.fit(big, braw)
    f = compile_filter({"v": {"$lt": 2**53 + 1}}, big, bq)
    assert f.matches(bq.encode(braw), braw).tolist() == [True, True, True]
    f = compile_filter({"v": {"$gte": 2**53 + 1}}, big, bq)
    assert f.matches(bq.encode(braw), braw).tolist() == [False, False, False]


def _deep(levels: int) -> dict:
    expr: dict = {"few": 1}
    for _ in range(levels):
        expr = {"$not": expr}
    return expr


def test_limits():
    schema, _ = dataset()
    assert parse_filter(_deep(MAX_DEPTH - 1), schema) is not None
    for levels in (MAX_DEPTH, 10_000):
        with pytest.raises(FilterError, match=f"limit of {MAX_DEPTH} levels"):
            parse_filter(_deep(levels), schema)
    assert parse_filter({"$or": [{"few": i % 3} for i in range(MAX_LEAVES)]}, schema) is not None
    with pytest.raises(FilterError, match=f"limit of {MAX_LEAVES} conditions"):
        parse_filter({"$or": [{"few": i % 3} for i in range(MAX_LEAVES + 1)]}, schema)


@pytest.mark.parametrize(
    ("expr", "culprits"),
    [
        ({"nope": 1}, ["unknown attribute 'nope'", "'few'", "'bigcat'"]),
        ({"$and": [{"few": 1}, {"nope": {"$gt": 1}}]}, ["filter.$and[1].nope", "'nope'"]),
        ({"few": "1"}, ["'few'", "number", "'1'"]),
        ({"few": 1.5}, ["'few'", "integers", "1.5"]),
        ({"few": True}, ["'few'", "number", "True"]),
        ({"normal": {"$gt": "0.5"}}, ["'normal'", "number"]),
        ({"normal": {"$gt": None}}, ["'normal'", "None"]),
        ({"flag": 1}, ["'flag'", "true or false"]),
        ({"cat": "purple"}, ["unknown category 'purple'", "'red'", "'Cyan'"]),
        ({"cat": {"$in": ["red", 3]}}, ["'cat'", "category names"]),
        ({"bigcat": "nope"}, ["unknown category 'nope'", "(300 in total)"]),
        ({"few": {"$in": []}}, ["$in", "non-empty list"]),
        ({"few": {"$nin": 3}}, ["$nin", "non-empty list"]),
        ({"few": {"$foo": 1}}, ["unknown operator '$foo'", "$gte", "$nin"]),
        ({"few": {"$and": [1]}}, ["unknown operator '$and'"]),
        ({"$foo": [{"few": 1}]}, ["unknown logical operator '$foo'", "$and", "$or", "$not"]),
        ({"$and": []}, ["$and", "non-empty list"]),
        ({"$or": {"few": 1}}, ["$or", "non-empty list"]),
        ({"$and": [{"few": 1}, 7]}, ["filter.$and[1]", "filter object", "int"]),
        ({"$not": [{"few": 1}]}, ["filter.$not", "filter object", "list"]),
        ({"$and": [{}]}, ["filter.$and[0]", "empty filter object"]),
        ({"few": {}}, ["filter.few", "empty operator object"]),
        ({"few": [1, 2]}, ["filter.few", "$in"]),
        ([{"few": 1}], ["filter object", "list"]),
        ("few = 1", ["filter object", "str"]),
        ({1: 2}, ["keys must be strings"]),
        ({"normal": float("nan")}, ["NaN", "'normal'"]),
        ({"few": {"$in": [1, float("nan")]}}, ["NaN", "'few'"]),
        ({"normal": {"$lt": float("inf")}}, ["non-finite", "'normal'"]),
        ({"normal": {"$lt": 10**400}}, ["too large"]),
        ({"cat": {"$gt": "blue"}}, ["range operator $gt", "category", "'cat'"]),
        ({"flag": {"$lte": True}}, ["range operator $lte", "bool", "'flag'"]),
    ],
)
def test_filter_errors_name_the_culprit(expr, culprits):
    schema, _ = dataset()
    with pytest.raises(FilterError) as info:
        parse_filter(expr, schema)
    for culprit in culprits:
        assert culprit in str(info.value)


def test_compile_and_evaluation_input_errors():
    schema, raw = dataset()
    q, codes = quantized(8)
    assert compile_filter(None, schema, q) is None
    other, _ = normalize_attributes({"x": [1]}, 1)
    with pytest.raises(InvalidInputError, match="different schema"):
        compile_filter({"few": 1}, other, q)
    f = compile_filter({"few": 1}, schema, q)
    with pytest.raises(InvalidInputError, match="uint8"):
        f.cell_states(codes.astype(np.int64))
    with pytest.raises(InvalidInputError, match="shape"):
        f.cell_states(codes[:, :2])
    with pytest.raises(InvalidInputError, match="histograms"):
        bounds_of(f, np.zeros((2, 256), dtype=np.int64))
    uneven = histograms(codes)
    uneven[0, 0] += 1
    with pytest.raises(InvalidInputError, match="same number of rows"):
        bounds_of(f, uneven)
    with pytest.raises(InvalidInputError, match="same number of rows"):
        estimates_many([f], uneven)
    with pytest.raises(InvalidInputError, match="'few' is missing"):
        f.exact({})
    with pytest.raises(InvalidInputError, match="'few' is missing"):
        f.matches(codes, {})  # a conjunction of intervals: compared on raw values alone
    with pytest.raises(InvalidInputError, match="conjunction of ranges and equalities"):
        compile_filter({"few": {"$in": [1, 2]}}, schema, q).inside(raw)


def test_histogram_bounds_combinations():
    schema, raw = normalize_attributes({"a": [0, 0, 1, 1], "b": [0, 1, 0, 1]}, 4)
    q = AttributeQuantizer.fit(schema, raw)
    h = histograms(q.encode(raw))
    cases = [
        ({"a": 1}, (2, 2)),
        ({"$not": {"a": 1}}, (2, 2)),
        ({"a": 1, "b": 1}, (0, 2)),
        ({"$or": [{"a": 1}, {"b": 1}]}, (2, 4)),
        ({"$or": [{"a": 1}, {"a": 0}]}, (4, 4)),
        ({"a": {"$in": [0, 1]}, "b": {"$nin": [0, 1]}}, (0, 0)),
        ({"$not": {"$or": [{"a": 1}, {"b": 1}]}}, (0, 2)),
    ]
    for expr, bounds in cases:
        assert bounds_of(compile_filter(expr, schema, q), h) == bounds, expr


def batch_setup(
    bits: int, seed: int
) -> tuple[AttributeSchema, dict[str, np.ndarray], AttributeQuantizer, np.ndarray, Context, np.random.Generator]:
    """The dataset quantized at ``bits``, its operand pools and a seeded generator, for the batch tests."""
    schema, raw = dataset()
    q, codes = quantized(bits)
    return schema, raw, q, codes, make_context(schema, q, raw), np.random.default_rng(seed)


def same_shape_filters(rng: np.random.Generator, ctx: Context, count: int) -> list[dict]:
    """``count`` filters of one shape (a range, a negated bound, an OR) with different operands."""
    out = []
    for _ in range(count):
        lo, hi = sorted(rng.choice(ctx.pools[2], 2))
        out.append(
            {
                "normal": {"$gte": float(lo), "$lt": float(hi)},
                "$not": {"many": {"$lte": int(rng.choice(ctx.pools[1]))}},
                "$or": [{"ties": {"$gt": float(rng.choice(ctx.pools[3]))}}, {"few": {"$ne": int(rng.integers(-3, 4))}}],
            }
        )
    return out


@pytest.mark.parametrize("bits", [3, 8])
def test_matches_many_equals_matches_filter_by_filter(bits):
    """Batched evaluation (stacked cell tables, per-row operands) gives each filter's own answer on its rows."""
    schema, raw, q, codes, ctx, rng = batch_setup(bits, bits)
    exprs = same_shape_filters(rng, ctx, 12) + [random_filter(rng, ctx) for _ in range(24)]
    exprs += same_shape_filters(rng, ctx, 12)
    filters = [compile_filter(e, schema, q) for e in exprs]
    rows = [np.sort(rng.choice(N, size=int(rng.integers(0, 300)), replace=False)) for _ in filters]
    owner = np.repeat(np.arange(len(filters)), [len(r) for r in rows])
    got = matches_many(filters, codes, raw, owner, np.concatenate(rows))
    want = np.concatenate([f.matches(codes, raw, r) for f, r in zip(filters, rows, strict=True)])
    np.testing.assert_array_equal(got, want)
    assert want.any() and not want.all()


def test_filter_groups_are_the_canonical_text_not_object_identity():
    """Queries share filter work by an explicit group key: equal expressions (whatever their key order) are
    one group even when compiled as separate objects; another operand is another group; None is no filter."""
    schema, _ = dataset()
    q, _ = quantized(8)
    exprs = [{"flag": True, "normal": {"$lt": 0.2}}, {"normal": {"$lt": 0.2}, "flag": True}, {"normal": {"$lt": 0.3}}]
    a, b, c, none = compile_exprs([*exprs, None], schema, q)
    assert a is not b and a.group == b.group and isinstance(a.group, str)
    assert c.group != a.group and group_of(none) is None and group_of(a) == a.group
    assert compile_filter(exprs[1], schema, q).group == a.group  # compiled in another call: the same group


def test_filter_keys_ignore_operands():
    """Filters differing only in operands share a key (and are evaluated together); operators matter."""
    schema, _ = dataset()
    q, _ = quantized(8)
    a, b, c, d = compile_exprs(
        [
            {"normal": {"$gte": 0.1, "$lt": 0.2}, "flag": True},
            {"normal": {"$gte": -3.0, "$lt": 5}, "flag": False},
            {"normal": {"$gte": 0.1, "$lte": 0.2}, "flag": True},
            {"few": {"$in": [1, 2]}, "flag": True},
        ],
        schema,
        q,
    )
    assert a.key == b.key != c.key and a.shape == b.shape
    assert d.key != a.key


def test_bounds_and_estimates_for_many_filters_equal_each_filters_own():
    """Grouped by tree shape, the batched histogram bounds and estimates equal the per-filter ones."""
    schema, raw, q, codes, ctx, rng = batch_setup(4, 3)
    exprs = same_shape_filters(rng, ctx, 8) + [random_filter(rng, ctx) for _ in range(30)]
    filters = [compile_filter(e, schema, q) for e in exprs]
    parts = np.array_split(rng.permutation(N), 3)
    stacked = np.stack([histograms(codes[rows]) for rows in parts])
    certain, possible, ceiling = partition_bounds_many(filters, stacked)
    for i, f in enumerate(filters):
        alone = partition_bounds_many([f], stacked)
        np.testing.assert_array_equal(certain[i], alone[0][0])
        np.testing.assert_array_equal(possible[i], alone[1][0])
        np.testing.assert_array_equal(ceiling[i], alone[2][0])
        matching = [int(f.exact(raw)[rows].sum()) for rows in parts]
        assert (certain[i] <= matching).all() and (matching <= possible[i]).all()
    assert (certain < possible).any()
    for h in stacked:
        estimate = estimates_many(filters, h)
        np.testing.assert_allclose(estimate, [estimates_many([f], h)[0] for f in filters])
        certain, possible, _ = partition_bounds_many(filters, h[None])
        assert (certain[:, 0] <= estimate).all() and (estimate <= possible[:, 0]).all()


@pytest.mark.parametrize("bits", [3, 8])
def test_filters_compiled_together_equal_filters_compiled_alone(bits):
    """Same-shaped filters compiled in one batch (stacked cell tables) get each filter's own states, and stay
    exact: FULL rows match, NONE rows do not."""
    schema, raw, q, codes, ctx, rng = batch_setup(bits, 11 + bits)
    exprs = same_shape_filters(rng, ctx, 10) + [random_filter(rng, ctx) for _ in range(20)] + [None, {}]
    exprs += [{"few": {"$eq": int(v)}, "cat": {"$ne": "red"}} for v in rng.integers(-4, 5, 8)]
    together = compile_exprs(exprs, schema, q)
    for expr, f in zip(exprs, together, strict=True):
        alone = compile_filter(expr, schema, q)
        if alone is None:
            assert f is None
            continue
        states = f.cell_states(codes)
        np.testing.assert_array_equal(states, alone.cell_states(codes), err_msg=str(expr))
        exact = f.exact(raw)
        assert exact[states == FULL].all() and not exact[states == NONE].any(), expr
        assert f.shape == alone.shape


def test_drivers_for_many_filters_equal_each_filters_driver():
    """Batched driver choice gives every filter the attribute and codes it gets alone, and they cover its matches."""
    schema, raw, q, codes, ctx, rng = batch_setup(6, 21)
    exprs = same_shape_filters(rng, ctx, 10) + [random_filter(rng, ctx) for _ in range(40)]
    filters = [f for f in compile_exprs(exprs, schema, q) if f is not None]
    half = np.arange(N // 2)
    h = histograms(codes[half])
    attribute, possible, pair_filter, pair_code = drivers_many(filters, h)
    assert (np.diff(pair_filter) >= 0).all()
    for i, f in enumerate(filters):
        alone = drivers_many([f], h)
        assert (attribute[i], possible[i]) == (alone[0][0], alone[1][0])
        np.testing.assert_array_equal(pair_code[pair_filter == i], alone[3])
        if attribute[i] < 0:
            assert not (pair_filter == i).any()
            continue
        # The driver's codes hold every matching row, and `possible` counts the rows under them.
        under = np.isin(codes[half, attribute[i]], pair_code[pair_filter == i])
        assert not (f.exact(raw)[half] & ~under).any()
        assert possible[i] == under.sum()
    assert (attribute >= 0).any() and (attribute == -1).any()
