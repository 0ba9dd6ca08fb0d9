"""Hypothesis fuzzing of every input boundary: client queries, filters, wire events and index builds.

Every case must end in a correct result or a `SquashError` subclass (never a bare KeyError, TypeError,
IndexError...). Example counts stay small so the file runs in well under a minute.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import squash
from squash.config import RuntimeConfig
from squash.errors import InvalidInputError, LimitExceededError, SquashError
from squash.pipeline import build_index
from squash.protocol import (
    MAX_BUDGET_MS,
    MAX_DIM,
    AllocatorRequest,
    AllocatorResponse,
    CoordinatorRequest,
    CoordinatorResponse,
    FilterSet,
    IndexRef,
    ProcessorRequest,
    ProcessorResponse,
)
from squash.search.params import MAX_K
from squash.search.queries import MAX_BATCH, compile_filters
from squash.search.result import STAT_FIELDS
from squash.tree import TreeShape
from squash.validation import as_vectors

DIM = 8
N = 300
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module")
def index(request: pytest.FixtureRequest) -> Any:
    uri = f"memory://fuzz-{uuid.uuid4().hex}"
    rng = np.random.default_rng(0)
    attrs = {
        "price": rng.integers(0, 100, N),
        "score": rng.random(N),
        "color": np.array(["red", "green", "blue"])[rng.integers(0, 3, N)],
    }
    build_index(uri, rng.normal(size=(N, DIM)).astype(np.float32), attrs, partitions=3, seed=0)
    yield uri, squash.Index.open(uri), squash.Client(uri)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"test_fuzz cases: {dict(sorted(COUNTS.items()))}")


# --- strategies -------------------------------------------------------------------------------------------

FIELDS = ["price", "score", "color", "nope", ""]
OPERATORS = ["$and", "$or", "$not", "$in", "$nin", "$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$exists", "$x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["red", "green", "blue", "", "é"]),
)
json_trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS + OPERATORS), children, max_size=3),
    ),
    max_leaves=12,
)
leaf_filters = st.builds(
    lambda field, op, value: {field: {op: value}},
    st.sampled_from(["price", "score", "color"]),
    st.sampled_from(["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin"]),
    st.one_of(scalars, st.lists(scalars, max_size=3)),
)
filters = st.one_of(
    st.none(), leaf_filters, json_trees, st.builds(lambda a, b: {"$or": [a, b]}, leaf_filters, leaf_filters)
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
    st.sampled_from(["rerank_factor", "max_partitions", "exact", "centroid_factor", "hamming_keep", "bogus"]),
    st.one_of(scalars, st.integers(-3, 5)),
    max_size=2,
)


# --- the client -------------------------------------------------------------------------------------------


@FAST
@given(vectors=valid_vectors | vectors, k=ks, filter=st.none() | leaf_filters | filters, knobs=knobs)
def test_client_query_batch_inputs(index: Any, vectors: Any, k: Any, filter: Any, knobs: dict[str, Any]) -> None:
    _, local, client = index
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
        {}, optional={"timeout": st.floats(0.5, 100) | scalars, "allow_partial": st.booleans() | scalars}
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


@settings(max_examples=150, deadline=None)
@given(expr=filters)
def test_filter_parser_on_random_json(index: Any, expr: Any) -> None:
    local = index[1]
    try:
        compile_filters([expr], 1, local.meta)
    except SquashError:
        _count("filter.rejected")
        return
    _count("filter.accepted")
    query = np.zeros((1, DIM), np.float32)
    found = local.search(query, k=20, filter=expr, exact=True)
    truth = local.brute_force(query, k=20, filter=expr)
    np.testing.assert_array_equal(found.counts, truth.counts)
    np.testing.assert_allclose(found.distances, truth.distances, rtol=1e-5)


# --- wire events ------------------------------------------------------------------------------------------


def _events() -> dict[type, dict[str, Any]]:
    queries = np.ones((2, DIM), np.float32)
    fs = FilterSet.from_user([{"price": 1}, None], 2)
    ids, dists = np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32)
    stats = {name: np.zeros(2, np.int64) for name in STAT_FIELDS}
    metrics = {"p": {"role": "processor", "invocations": 1}}
    return {
        CoordinatorRequest: CoordinatorRequest(IndexRef("memory://x"), queries, fs, 3, {}, budget_ms=5).to_event(),
        AllocatorRequest: AllocatorRequest(
            IndexRef("memory://x", 1), queries, fs, 3, {}, TreeShape(2, 1), node=1, level=1
        ).to_event(),
        ProcessorRequest: ProcessorRequest(
            IndexRef("memory://x", 1), queries, fs, 3, {}, partition=0, probes=np.ones(len(queries), np.int32)
        ).to_event(),
        ProcessorResponse: ProcessorResponse(ids, dists, stats, metrics).to_event(),
        AllocatorResponse: AllocatorResponse(ids, dists, stats, metrics).to_event(),
        CoordinatorResponse: CoordinatorResponse(
            ids, dists, stats, metrics, version=1, shape=TreeShape(1, 0)
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
    except OverflowError:
        assume(False)  # an int msgpack cannot encode: no sender could produce it
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
