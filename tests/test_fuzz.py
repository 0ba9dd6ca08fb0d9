"""Hypothesis fuzzing of every input boundary: client queries, filters, wire events and index builds.

Every case must end in a correct result or a `SquashError` subclass (never a bare KeyError, TypeError,
IndexError...). Accepted filters are checked against a brute-force evaluation in numpy; the last section
throws the values of `hostile` (non-finite and huge numbers, lone surrogates, deep nesting, foreign types) at
`Index.search`, `Client`, `Index.open`, `Index.build` / `build_index` and the ``from_event`` and handler
of every message kind. Example counts stay small so the file runs in well under a minute.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hostile import HOSTILE_NUMBERS, deep, hostile, hostile_arrays, json_values, nested_filter, numbers, texts
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import squash
from squash.config import RuntimeConfig
from squash.errors import InvalidInputError, LimitExceededError, SquashError
from squash.pipeline import build_index
from squash.runtime.context import HandlerContext
from squash.runtime.dispatch import handle
from squash.runtime.protocol import (
    MAX_BUDGET_MS,
    MAX_DIM,
    MAX_TIMEOUT,
    AllocatorRequest,
    AllocatorResponse,
    CoordinatorRequest,
    CoordinatorResponse,
    IndexRef,
    ProcessorRequest,
    ProcessorResponse,
)
from squash.runtime.tree import TreeShape
from squash.search.params import MAX_K, SearchParams
from squash.search.queries import MAX_BATCH, FilterSet
from squash.search.result import STAT_FIELDS
from squash.validation import as_vectors

DIM = 8
N = 300
BUILD = "20260101T000000Z-000000000000"  # a well-formed build id for hand-made requests
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module")
def index(request: pytest.FixtureRequest) -> Any:
    """(uri, Index, Client, vectors, attributes) of one small stored index."""
    uri = f"memory://fuzz-{uuid.uuid4().hex}"
    rng = np.random.default_rng(0)
    attrs = {
        "price": rng.integers(0, 100, N),
        "score": rng.random(N),
        "color": np.array(["red", "green", "blue"])[rng.integers(0, 3, N)],
    }
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    build_index(uri, x, attrs, partitions=3, seed=0)
    yield uri, squash.Index.open(uri), squash.Client(uri), x, attrs
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"test_fuzz cases: {dict(sorted(COUNTS.items()))}")


def _queries() -> np.ndarray:
    return np.ones((2, DIM), np.float32)


# --- strategies -------------------------------------------------------------------------------------------

FIELDS = ["price", "score", "color", "nope", ""]
OPERATORS = ["$and", "$or", "$not", "$in", "$nin", "$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$exists", "$x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63, -(2**63) - 1, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["red", "green", "blue", "", "é", "\ud800", "re\udfffd", "\x00"]),
)
json_trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS + OPERATORS), children, max_size=3),
    ),
    max_leaves=12,
)


deep_filters = st.integers(1, 150).map(nested_filter)
# Operands in the range of the data too, so that boundaries (price == operand) are exercised.
operands = st.one_of(scalars, st.integers(-2, 101), st.floats(0, 1), st.sampled_from(["red", "green", "blue"]))
leaf_filters = st.builds(
    lambda field, op, value: {field: {op: value}},
    st.sampled_from(["price", "score", "color"]),
    st.sampled_from(["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin"]),
    st.one_of(operands, st.lists(operands, max_size=3)),
)
# Filters the schema accepts, so the oracle below sees many: typed operands, combined by $and, $or and $not.
COMPARISONS = ["$eq", "$ne", "$lt", "$lte", "$gt", "$gte"]
COLORS = ["red", "green", "blue"]
typed_leaves = st.one_of(
    st.builds(lambda op, v: {"price": {op: v}}, st.sampled_from(COMPARISONS), st.integers(-2, 101)),
    st.builds(lambda op, v: {"score": {op: v}}, st.sampled_from(COMPARISONS), st.floats(0, 1) | st.integers(0, 1)),
    st.builds(lambda v: {"color": v}, st.sampled_from(COLORS)),
    st.builds(
        lambda op, vs: {"price": {op: vs}},
        st.sampled_from(["$in", "$nin"]),
        st.lists(st.integers(-2, 101), min_size=1, max_size=3),
    ),
    st.builds(
        lambda op, vs: {"color": {op: vs}},
        st.sampled_from(["$in", "$nin"]),
        st.lists(st.sampled_from(COLORS), min_size=1, max_size=3),
    ),
)
typed_filters = st.recursive(
    typed_leaves,
    lambda children: st.one_of(
        st.builds(lambda a, b: {"$or": [a, b]}, children, children),
        st.builds(lambda a, b: {"$and": [a, b]}, children, children),
        st.builds(lambda a: {"$not": a}, children),
        st.builds(lambda a, b: {**a, **b}, children, children),
    ),
    max_leaves=5,
)
filters = st.one_of(
    st.none(),
    leaf_filters,
    json_trees,
    deep_filters,
    st.builds(lambda a, b: {"$or": [a, b]}, leaf_filters, leaf_filters),
)
dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int8, np.uint8, np.bool_, np.complex64])
valid_vectors = hnp.arrays(
    np.float32, st.tuples(st.integers(1, 3), st.just(DIM)), elements=st.floats(-10, 10, width=32)
)
vectors = st.one_of(
    valid_vectors,
    hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.just(DIM)), elements=st.floats(-10, 10, width=32)),
    st.lists(st.one_of(st.floats(), st.text(max_size=2), st.none()), max_size=DIM + 1),
)
ks = st.one_of(st.integers(1, 20), st.integers(-2, MAX_K + 2), st.sampled_from([1.5, "10", None, True, np.int64(3)]))
knobs = st.just({}) | st.dictionaries(
    st.sampled_from(["rerank_depth", "max_partitions", "exact", "centroid_factor", "probe_matches", "probe", "bogus"]),
    st.one_of(scalars, st.integers(-3, 5)),
    max_size=2,
)


# --- the client -------------------------------------------------------------------------------------------


@FAST
@given(vectors=valid_vectors | vectors, k=ks, filter=st.none() | leaf_filters | filters, knobs=knobs)
def test_client_query_batch_inputs(index: Any, vectors: Any, k: Any, filter: Any, knobs: dict[str, Any]) -> None:
    local, client = index[1], index[2]
    try:
        result = client.query_batch(vectors, k, filter, depth=0, **knobs)
    except SquashError:
        _count("client.rejected")
        return
    _count("client.answered")
    expected = local.search(vectors, k=k, filter=filter, **knobs)
    np.testing.assert_array_equal(result.ids, expected.ids)
    np.testing.assert_array_equal(result.distances, expected.distances)


@settings(max_examples=20, deadline=None)
@given(
    vector=hnp.arrays(np.float64, DIM, elements=st.floats(-5, 5)) | vectors,
    k=ks,
    options=st.fixed_dictionaries(
        {},
        optional={
            "timeout": st.floats(0.5, 100) | st.floats(MAX_TIMEOUT, 1e300) | scalars,
            "allow_partial": st.booleans() | scalars,
        },
    ),
)
def test_client_query_options(index: Any, vector: Any, k: Any, options: dict[str, Any]) -> None:
    client = index[2]
    try:
        hits = client.query(vector, k, **options)
    except SquashError:
        _count("query.rejected")
        return
    _count("query.answered")
    assert hits.ids.shape == hits.distances.shape == (k,)


def test_limits_are_enforced_naming_the_limit(index: Any) -> None:
    client = index[2]
    with pytest.raises(LimitExceededError, match=f"limit of {MAX_K}"):
        client.query_batch(np.zeros((1, DIM)), MAX_K + 1)
    with pytest.raises(LimitExceededError, match=f"1..{MAX_BATCH} queries"):
        client.query_batch(np.zeros((MAX_BATCH + 1, 1), np.float32), 1)
    with pytest.raises(LimitExceededError, match=f"1..{MAX_DIM} dimensions"):
        client.query_batch(np.zeros((1, MAX_DIM + 1), np.float32), 1)
    tiny = squash.Client(index[0], config=RuntimeConfig(payload_limit=2048))
    with pytest.raises(LimitExceededError, match="payload limit of 2,048 bytes"):
        tiny.query_batch(np.zeros((1, DIM)), 200)


# --- the filter parser ------------------------------------------------------------------------------------


def _oracle_mask(expr: Any, attrs: dict[str, np.ndarray]) -> np.ndarray:
    """Rows matching the JSON filter ``expr``, evaluated row by row in Python on the raw columns.

    Independent of squash.filter; only used on filters the parser accepted, so it needs no validation.
    Python compares ints and floats exactly, so huge operands need no special case.
    """
    if expr is None or expr == {}:
        return np.ones(N, bool)
    mask = np.ones(N, bool)
    for key, value in expr.items():
        if key == "$and":
            part = np.logical_and.reduce([_oracle_mask(c, attrs) for c in value])
        elif key == "$or":
            part = np.logical_or.reduce([_oracle_mask(c, attrs) for c in value])
        elif key == "$not":
            part = ~_oracle_mask(value, attrs)
        else:
            part = _oracle_field(attrs[key].tolist(), value if isinstance(value, dict) else {"$eq": value})
        mask &= part
    return mask


_ORACLE_OPS = {
    "$eq": lambda v, o: v == o,
    "$ne": lambda v, o: v != o,
    "$lt": lambda v, o: v < o,
    "$lte": lambda v, o: v <= o,
    "$gt": lambda v, o: v > o,
    "$gte": lambda v, o: v >= o,
    "$in": lambda v, o: any(v == x for x in o),
    "$nin": lambda v, o: not any(v == x for x in o),
}


def _oracle_field(column: list[Any], ops: dict[str, Any]) -> np.ndarray:
    return np.array([all(_ORACLE_OPS[op](v, operand) for op, operand in ops.items()) for v in column])


@settings(max_examples=150, deadline=None)
@given(
    expr=filters | typed_filters,
    query=hnp.arrays(np.float32, DIM, elements=st.floats(-3, 3, width=32)),
    k=st.integers(1, 25) | st.just(N),  # k = N returns every match, so a wrong match count shows
)
def test_filter_parser_on_random_json(index: Any, expr: Any, query: np.ndarray, k: int) -> None:
    local, x, attrs = index[1], index[3], index[4]
    try:
        FilterSet.from_user([expr], 1).compile(local.meta)
    except SquashError:
        _count("filter.rejected")
        return
    _count("filter.accepted")
    matching = np.flatnonzero(_oracle_mask(expr, attrs))
    distances = ((x[matching].astype(np.float64) - query.astype(np.float64)) ** 2).sum(1)
    truth = np.sort(distances)[:k]
    found = local.search(query, k=k, filter=expr, exact=True)
    count = int(found.counts[0])
    assert count == len(truth)
    ids = found.ids[0, :count]
    assert np.isin(ids, matching).all()
    np.testing.assert_allclose(found.distances[0, :count], truth, rtol=1e-4, atol=1e-4)
    exact = ((x[ids].astype(np.float64) - query.astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(found.distances[0, :count], exact, rtol=1e-4, atol=1e-4)


# --- wire events ------------------------------------------------------------------------------------------


def _events(uri: str = "memory://x", *, budget_ms: int | None = 5) -> dict[type, dict[str, Any]]:
    """A valid event of every kind, for an index at ``uri``."""
    queries = _queries()
    fs = FilterSet.from_user([{"price": 1}, None], 2)
    ids, dists = np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32)
    stats = {name: np.zeros(2, np.int64) for name in STAT_FIELDS}
    metrics = {"p": {"role": "processor", "invocations": 1}}
    return {
        CoordinatorRequest: CoordinatorRequest(IndexRef(uri), queries, fs, 3, {}, budget_ms=budget_ms).to_event(),
        AllocatorRequest: AllocatorRequest(
            IndexRef(uri, 1, BUILD), queries, fs, 3, {}, TreeShape(2, 1), node=1, level=1
        ).to_event(),
        ProcessorRequest: ProcessorRequest(
            IndexRef(uri, 1, BUILD), queries, fs, 3, SearchParams(), partition=0, probes=np.ones(len(queries), np.int32)
        ).to_event(),
        ProcessorResponse: ProcessorResponse(ids, dists, stats, metrics).to_event(),
        AllocatorResponse: AllocatorResponse(ids, dists, stats, metrics).to_event(),
        CoordinatorResponse: CoordinatorResponse(
            ids,
            dists,
            stats,
            metrics,
            version=1,
            build=BUILD,
            shape=TreeShape(1, 0),
            recall_estimate=np.ones(len(ids), np.float32),
        ).to_event(),
    }


EVENTS = _events()


def _mutated_arrays(text: str, data: st.DataObject) -> Any:
    packed = msgpack.unpackb(base64.b64decode(text))
    name = data.draw(st.sampled_from(sorted(packed)))
    part = data.draw(st.sampled_from(["dtype", "shape", "data", "drop", "whole"]))
    if part == "drop":
        del packed[name]
    elif part == "whole":
        packed[name] = data.draw(json_trees)
    elif part == "data":
        packed[name]["data"] = data.draw(st.binary(max_size=64))
    else:
        packed[name][part] = data.draw(st.one_of(json_trees, st.sampled_from(["<f8", "|O", "<i4", "S3"])))
    try:
        raw = msgpack.packb(packed, use_bin_type=True)
    except (OverflowError, UnicodeEncodeError):
        assume(False)  # an int or a lone surrogate msgpack cannot encode: no sender could produce it
    return base64.b64encode(raw).decode()


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(list(EVENTS)), data=st.data())
def test_event_validation_on_mutated_events(kind: type, data: st.DataObject) -> None:
    event = json.loads(json.dumps(EVENTS[kind]))
    how = data.draw(st.sampled_from(["drop", "replace", "add", "arrays", "not_a_dict"]))
    if how == "not_a_dict":
        event = data.draw(json_trees)
    elif how == "add":
        event[data.draw(st.text(max_size=5))] = data.draw(json_trees)
    elif how == "arrays":
        event["arrays"] = _mutated_arrays(event["arrays"], data)
    else:
        key = data.draw(st.sampled_from(sorted(event)))
        if how == "drop":
            del event[key]
        else:
            event[key] = data.draw(json_trees)
    try:
        kind.from_event(event)
        _count("event.accepted")
    except SquashError:
        _count("event.rejected")


@settings(max_examples=200, deadline=None)
@given(
    budget=st.one_of(
        st.integers(-(2**70), 2**70),
        st.integers(-2, MAX_BUDGET_MS + 2),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
    )
)
def test_budget_is_a_bounded_whole_number_of_milliseconds(budget: Any) -> None:
    event = {**EVENTS[ProcessorRequest], "budget_ms": budget}
    if budget is None or (type(budget) is int and 1 <= budget <= MAX_BUDGET_MS):
        assert ProcessorRequest.from_event(event).budget_ms == budget
        _count("budget.accepted")
    else:
        with pytest.raises(InvalidInputError, match=r"'budget_ms' must be an integer in 1\.\.3600000"):
            ProcessorRequest.from_event(event)
        _count("budget.rejected")


# --- index builds -----------------------------------------------------------------------------------------

columns = st.one_of(
    hnp.arrays(st.sampled_from([np.int64, np.float64, np.bool_, np.int8]), st.integers(0, 30)),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=2), st.none(), st.floats()), max_size=30),
    st.just(np.array(["a", "b"] * 15, dtype=object)),
    st.just(np.zeros((30, 2))),
)


@settings(max_examples=25, deadline=None)
@given(
    vectors=st.one_of(
        vectors,
        hnp.arrays(np.float32, st.tuples(st.integers(20, 40), st.integers(1, 4)), elements=st.floats(width=32)),
    ),
    attributes=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["a", "b", "", "$and"]), columns, max_size=2), scalars
    ),
    partitions=st.one_of(st.none(), st.integers(-1, 4)),
    metric=st.sampled_from(["l2", "ip", "cosine", "manhattan"]),
)
def test_build_inputs(vectors: Any, attributes: Any, partitions: Any, metric: str) -> None:
    try:
        index = squash.Index.build(vectors, attributes, partitions=partitions, metric=metric)
    except SquashError:
        _count("build.rejected")
        return
    _count("build.accepted")
    x = as_vectors(vectors)
    assert index.dim == x.shape[1]
    result = index.search(x[:2], k=3)
    assert result.ids.shape == (min(2, len(x)), 3)


# --- hostile values at every entry point ------------------------------------------------------------------

KEYS = [*FIELDS, *OPERATORS, "\ud800"]
hostile_filters = st.one_of(
    hostile,
    st.builds(lambda f, op, v: {f: {op: v}}, st.sampled_from(KEYS), st.sampled_from(KEYS), hostile),
    st.builds(lambda f, v: {f: v}, st.sampled_from(KEYS), hostile),
)
hostile_knobs = st.dictionaries(st.sampled_from([*SearchParams().to_dict(), "\ud800", "bogus"]), hostile, max_size=2)
HOSTILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _squash_error_or_answer(call: Callable[[], Any]) -> None:
    """Run ``call``: an answer or a `SquashError` passes; any other exception fails the test."""
    with contextlib.suppress(SquashError):
        call()


@HOSTILE
@given(
    queries=st.one_of(st.builds(_queries), hostile_arrays((2, DIM)), hostile),
    k=st.one_of(st.just(3), hostile),
    filter=hostile_filters,
    knobs=hostile_knobs,
)
def test_hostile_search_arguments(index: Any, queries: Any, k: Any, filter: Any, knobs: dict[str, Any]) -> None:
    local, client = index[1], index[2]
    _squash_error_or_answer(lambda: local.search(queries, k, filter, **knobs))
    _squash_error_or_answer(lambda: client.query_batch(queries, k, filter, depth=0, **knobs))


@HOSTILE
@given(
    options=st.dictionaries(
        st.sampled_from(["timeout", "allow_partial", "branching", "depth"]), st.one_of(st.just(1), hostile), max_size=3
    ),
    vector=st.one_of(st.just(np.ones(DIM)), hostile),
)
def test_hostile_client_options(index: Any, options: dict[str, Any], vector: Any) -> None:
    client = index[2]
    _squash_error_or_answer(lambda: client.query(vector, 3, **options))


@HOSTILE
@given(
    uri=st.one_of(st.just(None), hostile),
    version=st.one_of(st.none(), hostile),
    function=hostile,
    config=st.one_of(st.none(), hostile),
)
def test_hostile_opening(index: Any, uri: Any, version: Any, function: Any, config: Any) -> None:
    uri = index[0] if uri is None else uri
    _squash_error_or_answer(lambda: squash.Index.open(uri, version=version))
    _squash_error_or_answer(lambda: squash.Client(uri, version=version, config=config).query_batch(_queries(), 3))
    _squash_error_or_answer(lambda: squash.Client(uri, function=function, invoker=index[2].invoker))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.one_of(st.just("a"), texts, hostile),
    column=st.one_of(
        st.lists(st.one_of(numbers, texts), min_size=30, max_size=30),
        st.sampled_from(HOSTILE_NUMBERS).map(lambda v: np.full(30, v)),
        hostile,
    ),
    vectors=st.one_of(st.none(), hostile_arrays((30, 3)), hostile),
    options=st.dictionaries(
        st.sampled_from(["partitions", "metric", "target_recall", "seed"]), st.one_of(st.just(1), hostile), max_size=2
    ),
    pipeline_options=st.dictionaries(
        st.sampled_from(["overwrite", "workers", "progress"]), st.one_of(st.just(1), hostile), max_size=2
    ),
)
def test_hostile_builds(
    name: Any, column: Any, vectors: Any, options: dict[str, Any], pipeline_options: dict[str, Any]
) -> None:
    x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32) if vectors is None else vectors
    attributes = {name: column} if isinstance(name, str | int | float | bytes | type(None)) else None
    _squash_error_or_answer(lambda: squash.Index.build(x, attributes, **options))
    uri = f"memory://hostile-build-{uuid.uuid4().hex}"
    _squash_error_or_answer(lambda: build_index(uri, x, attributes, **options, **pipeline_options))


def _replace_somewhere(value: Any, data: st.DataObject, replacement: Any) -> Any:
    """``value`` with one node (itself, a field, a list item, at any depth) replaced by ``replacement``."""
    if not isinstance(value, dict | list) or not value or data.draw(st.booleans()):
        return replacement
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    key = data.draw(st.sampled_from(keys))
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[key] = _replace_somewhere(value[key], data, replacement)
    return copy


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(list(EVENTS)), data=st.data())
def test_hostile_events(index: Any, kind: type, data: st.DataObject) -> None:
    uri, client = index[0], index[2]
    event = _replace_somewhere(_events(uri, budget_ms=None)[kind], data, data.draw(json_values | deep))
    _squash_error_or_answer(lambda: kind.from_event(event))
    role = {CoordinatorRequest: "coordinator", AllocatorRequest: "allocator", ProcessorRequest: "processor"}
    if kind in role:
        ctx = HandlerContext(role[kind], f"squash-{role[kind]}", client.config, client.invoker)
        _squash_error_or_answer(lambda: handle(role[kind], event, ctx))
