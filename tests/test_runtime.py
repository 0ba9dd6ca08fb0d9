"""The serverless query runtime: tree numbering, wire protocol, handlers, DRE, invokers and the Client.

Everything runs in process (`InProcessInvoker`) on small memory:// indexes; the Lambda invoker is tested
against a stubbed boto3 client (the Lambda apps themselves: tests/test_lambda_app.py).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import msgpack
import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

import squash
from squash.compute.aws_lambda import LambdaInvoker
from squash.config import MAX_PAYLOAD, RuntimeConfig
from squash.datasets import synthetic_clustered
from squash.errors import (
    IncompleteResultError,
    InvalidInputError,
    InvocationError,
    InvocationTimeoutError,
    LimitExceededError,
    StorageError,
    ThrottledInvocationError,
)
from squash.pipeline import build_index
from squash.runtime.dre import LruCache
from squash.runtime.inprocess import InProcessInvoker
from squash.runtime.protocol import (
    MAX_FUNCTIONS,
    AllocatorRequest,
    CoordinatorRequest,
    IndexRef,
    ProcessorRequest,
    ProcessorResponse,
    own_metrics,
    pack_arrays,
    split_request,
)
from squash.runtime.tree import TreeShape, allocator_count, choose_shape
from squash.search.params import SearchParams
from squash.search.queries import FilterSet
from squash.storage import open_store
from squash.storage.faults import Fault, FaultInjectingStore

REPO = Path(__file__).resolve().parents[1]
EVENTS = Path(__file__).parent / "events"
DIM = 32
N = 2400
PARTITIONS = 6
COLORS = np.array(["red", "green", "blue", "grey"])
BUILD = "20260101T000000Z-000000000000"  # a well-formed build id for hand-made requests


@dataclass(frozen=True)
class Built:
    uri: str
    queries: np.ndarray
    index: squash.Index


def _build(uri: str, n: int = N, seed: int = 0, partitions: int = PARTITIONS) -> Built:
    data = synthetic_clustered(n, DIM, n_queries=60, clusters=12, attributes=0, seed=seed)
    rng = np.random.default_rng(seed)
    attrs = {
        "price": rng.integers(0, 100, n),
        "score": rng.random(n),
        "color": COLORS[rng.integers(0, len(COLORS), n)],
    }
    build_index(uri, data.base, attrs, partitions=partitions, seed=seed)
    return Built(uri, data.queries, squash.Index.open(uri))


@pytest.fixture(scope="module")
def built() -> Built:
    return _build(f"memory://runtime-{uuid.uuid4().hex}")


def _same(result: squash.SearchResult, expected: squash.SearchResult) -> None:
    np.testing.assert_array_equal(result.ids, expected.ids)
    np.testing.assert_array_equal(result.distances, expected.distances)
    assert set(result.stats) == set(expected.stats)
    for name, values in expected.stats.items():
        np.testing.assert_array_equal(result.stats[name], values, err_msg=name)


# --- tree -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("branching", range(1, 7))
@pytest.mark.parametrize("depth", range(1, 5))
def test_tree_numbering_visits_every_allocator_once(branching: int, depth: int) -> None:
    shape = TreeShape(branching, depth)
    count = 1000 + branching * depth  # uneven on purpose
    seen: list[int] = []
    shares: list[int] = []

    def visit(node: int | None, level: int, queries: int) -> None:
        own, per_child = shape.shares(queries, level)
        children = shape.children(node, level)
        assert len(per_child) == len(children)
        assert own + sum(per_child) == queries
        if node is not None:
            seen.append(node)
            shares.append(own)
        for child, share in zip(children, per_child, strict=True):
            visit(child, level + 1, share)

    visit(None, 0, count)
    assert sorted(seen) == list(range(allocator_count(branching, depth)))
    assert sum(shares) == count and max(shares) - min(shares) <= 1
    # Pre-order: every subtree is one contiguous id range, so ids appear in ascending order.
    assert seen == sorted(seen)


def test_tree_matches_reference_jumps() -> None:
    shape = TreeShape(4, 3)
    assert shape.allocators == 84
    assert shape.children(None, 0) == [0, 21, 42, 63]
    assert shape.children(0, 1) == [1, 6, 11, 16]
    assert shape.children(1, 2) == [2, 3, 4, 5]
    assert shape.children(2, 3) == []
    assert [TreeShape(b, L).allocators for b, L in ((5, 3), (6, 3), (4, 4), (10, 1), (4, 2))] == [
        155,
        258,
        340,
        10,
        20,
    ]


def test_choose_shape() -> None:
    def pick(n: int) -> TreeShape:
        return choose_shape(n, per_allocator=50, max_branching=10, max_allocators=256)

    assert pick(1) == TreeShape(1, 0)
    assert pick(50) == TreeShape(1, 0)
    assert pick(51) == TreeShape(2, 1)
    assert pick(500) == TreeShape(10, 1)
    assert pick(1000) == TreeShape(4, 2)
    assert pick(100_000).allocators <= 258


def test_tree_shape_limits() -> None:
    with pytest.raises(LimitExceededError, match="allocators"):
        TreeShape(20, 4)
    with pytest.raises(InvalidInputError, match="depth"):
        TreeShape(2, -1)


# --- congruence: the tree returns exactly what Index.search returns --------------------------------------

SHAPES = {"direct": (None, 0), "single": (1, 1), "flat": (6, 1), "b4L2": (4, 2), "b2L3": (2, 3)}


def _filters(kind: str, nq: int) -> Any:
    if kind == "none":
        return None
    if kind == "shared":
        return {"price": {"$lt": 30}}
    if kind == "per_query":
        options = [{"price": {"$lt": 30}}, {"color": "red"}, None, {"score": {"$gte": 0.5}, "color": "blue"}]
        return [options[i % len(options)] for i in range(nq)]
    return {"$and": [{"price": {"$eq": 7}}, {"score": {"$lt": 0.2}}]}  # a few matches: fewer than k


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filters", ["none", "shared", "per_query", "few_matches"])
def test_tree_congruent_with_index_search(built: Built, shape: str, filters: str) -> None:
    branching, depth = SHAPES[shape]
    k = 50 if filters == "few_matches" else 10
    expr = _filters(filters, len(built.queries))
    result = squash.Client(built.uri).query_batch(built.queries, k, expr, branching=branching, depth=depth)
    expected = built.index.search(built.queries, k=k, filter=expr)
    _same(result, expected)
    assert result.info["depth"] == depth
    assert result.info["allocator.queries"] + result.info["coordinator.queries"] == len(built.queries)
    if filters == "few_matches":
        assert (result.ids == -1).any() and (result.ids[:, 0] >= 0).all()


def test_default_tree_and_single_query(built: Built) -> None:
    client = squash.Client(built.uri)
    many = np.repeat(built.queries, 2, axis=0)  # 120 queries: 3 allocators by default
    result = client.query_batch(many, 5, {"color": "green"}, rerank_depth=30)
    _same(result, built.index.search(many, k=5, filter={"color": "green"}, rerank_depth=30))
    assert (result.info["branching"], result.info["depth"]) == (3, 1)

    hits = client.query(built.queries[0], k=5)
    expected = built.index.search(built.queries[:1], k=5)
    np.testing.assert_array_equal(hits.ids, expected.ids[0])
    np.testing.assert_array_equal(hits.distances, expected.distances[0])
    assert hits.ids.shape == (5,) and len(hits) == 5
    assert hits.info["depth"] == 0 and hits.info["allocator.invocations"] == 0  # shortest path
    assert hits.stats["partitions"] == expected.stats["partitions"][0]


def test_rows_of_a_result_are_views_with_their_own_figures(built: Built) -> None:
    """``result[i]`` is query i's row (what `Client.query` returns), checked against the batch's arrays."""
    filters = [None if i % 3 else {"color": "green"} for i in range(12)]
    result = squash.Client(built.uri).query_batch(built.queries[:12], 5, filters, allow_partial=True)
    rows = list(result)
    assert len(rows) == len(result) == 12 and isinstance(rows[0], squash.Hits)
    for i, row in enumerate(rows):
        assert np.shares_memory(row.ids, result.ids) and np.shares_memory(row.distances, result.distances)
        np.testing.assert_array_equal(row.ids, result.ids[i])
        np.testing.assert_array_equal(row.distances, result.distances[i])
        assert row.stats == {name: int(values[i]) for name, values in result.stats.items()}
        assert row.exact == bool(result.exact[i]) and row.complete == bool(result.complete[i])
        assert row.recall_estimate == float(result.recall_estimate[i]) or np.isnan(row.recall_estimate)
        assert row.info is result.info and len(row) == int(result.counts[i])
    np.testing.assert_array_equal(result[-1].ids, result.ids[11])
    with pytest.raises(TypeError, match="indexed by an int"):
        result[1:3]


def test_knobs_reach_the_processors(built: Built) -> None:
    client = squash.Client(built.uri)
    exact = client.query_batch(built.queries[:8], 10, branching=2, depth=1, exact=True)
    _same(exact, built.index.brute_force(built.queries[:8], k=10))
    assert (exact.stats["partitions"] == PARTITIONS).all()


# --- DRE --------------------------------------------------------------------------------------------------


def test_warm_query_reads_nothing_from_storage(built: Built) -> None:
    client = squash.Client(built.uri)
    first = client.query_batch(built.queries, 10, branching=2, depth=1)
    second = client.query_batch(built.queries, 10, branching=2, depth=1)
    _same(second, first)
    assert first.info["processor.cache_misses"] > 0 and first.info["processor.bytes_read"] > 0
    assert first.info["processor.cold"] > 0 and first.info["coordinator.cold"] == 1
    for counter in ("gets", "bytes_read"):
        assert second.info[counter] == 0, counter
    assert second.info["processor.cache_hits"] == second.info["processor.invocations"] > 0
    assert second.info["processor.cache_misses"] == second.info["cold"] == 0
    assert second.info["lists"] == 1  # the latest manifest is looked up once per request...

    pinned = squash.Client(built.uri, version=1, invoker=client.invoker)
    third = pinned.query_batch(built.queries, 10, branching=2, depth=1)
    # ...and a pinned one is checked with one HEAD (no bytes): the version may have been rebuilt since.
    assert (third.info["gets"], third.info["lists"], third.info["bytes_read"]) == (1, 0, 0)


def test_processor_slots_route_partitions_by_modulo(built: Built) -> None:
    config = RuntimeConfig(processor_functions=("slot-a", "slot-b", "slot-c", "slot-d"))
    client = squash.Client(built.uri, config=config)
    client.query_batch(built.queries, 10, depth=0, exact=True)
    again = client.query_batch(built.queries, 10, depth=0, exact=True)
    assert again.info["processor.bytes_read"] == 0
    invoker = client.invoker
    assert isinstance(invoker, InProcessInvoker)
    for slot, name in enumerate(config.processor_functions):
        cached = {key[2] for key in invoker.context(name).partitions.lru_keys()}
        assert cached == {p for p in range(PARTITIONS) if p % 4 == slot}, name


def test_lru_evicts_under_a_tiny_budget(built: Built) -> None:
    sizes = [built.index.partition(p).nbytes for p in range(PARTITIONS)]
    budget = int(1.5 * max(sizes))  # room for one partition at a time
    # No hedges: on a loaded machine a hedged duplicate would find its partition loaded by the first call,
    # and whichever answers first reports its own cache outcome.
    config = RuntimeConfig(
        processor_functions=("only-slot",),
        memory_mb=128,
        cache_fraction=budget / (128 << 20),
        hedge_min_seconds=3600.0,
        rerank_vectors="memory",  # the sizes above hold the vectors; auto would not under this budget
    )
    client = squash.Client(built.uri, config=config)
    first = client.query_batch(built.queries, 10, depth=0, exact=True)
    second = client.query_batch(built.queries, 10, depth=0, exact=True)
    _same(second, first)
    assert first.info["processor.evictions"] >= PARTITIONS - 1
    assert second.info["processor.cache_misses"] >= PARTITIONS - 1 and second.info["processor.bytes_read"] > 0
    assert isinstance(client.invoker, InProcessInvoker)
    cache = client.invoker.context("only-slot").partitions
    assert len(cache.lru_keys()) == 1 and cache.used <= budget


def test_lru_cache_order_oversize_and_single_load() -> None:
    cache: LruCache[str] = LruCache(10, len)
    assert cache.get("a", lambda: "aaaa") == ("aaaa", False, 0)
    assert cache.get("b", lambda: "bbbb") == ("bbbb", False, 0)
    assert cache.get("a", lambda: "unused")[1] is True  # a is now the most recent
    assert cache.get("c", lambda: "cccc") == ("cccc", False, 1)  # evicts b
    assert cache.lru_keys() == ["a", "c"]
    assert cache.get("big", lambda: "x" * 11) == ("x" * 11, False, 0)  # served, not kept
    assert cache.lru_keys() == ["a", "c"]

    loads = []
    gate = threading.Event()

    def slow() -> str:
        loads.append(1)
        gate.wait(5)
        return "dd"

    threads = [threading.Thread(target=cache.get, args=("d", slow)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)  # let the others queue behind the first load
    gate.set()
    for t in threads:
        t.join()
    assert len(loads) == 1


def test_rebuilt_index_is_never_served_stale() -> None:
    uri = f"memory://runtime-rebuild-{uuid.uuid4().hex}"
    old = _build(uri, n=600, seed=1)
    client = squash.Client(uri)
    before = client.query_batch(old.queries[:5], 5, depth=0)
    data = synthetic_clustered(600, DIM, n_queries=1, clusters=12, attributes=0, seed=2)
    build_index(uri, data.base, {"price": np.arange(600) % 100}, partitions=3, overwrite=True)
    after = client.query_batch(old.queries[:5], 5, depth=0)
    assert (before.info["version"], after.info["version"]) == (1, 2)
    _same(after, squash.Index.open(uri).search(old.queries[:5], k=5))
    assert after.info["processor.cache_misses"] == after.info["processor.invocations"]


# --- payload limits ---------------------------------------------------------------------------------------


def test_payload_limit_default_is_lambdas() -> None:
    assert MAX_PAYLOAD == RuntimeConfig().payload_limit == 6_291_456


def test_batches_are_split_to_fit_the_payload_limit(built: Built) -> None:
    queries = np.repeat(built.queries, 5, axis=0)  # 300 queries: ~77 KB of request JSON
    config = RuntimeConfig(payload_limit=40_000)
    result = squash.Client(built.uri, config=config).query_batch(
        queries, 10, {"price": {"$lt": 50}}, branching=2, depth=1
    )
    _same(result, built.index.search(queries, k=10, filter={"price": {"$lt": 50}}))
    assert result.info["coordinator_calls"] > 1
    assert result.info["version"] == 1


def test_split_request_parts_fit_and_cover_the_batch(built: Built) -> None:
    nq = 500
    request = ProcessorRequest(
        IndexRef("memory://x", 1, BUILD),
        np.ones((nq, DIM), np.float32),
        FilterSet.from_user([{"price": i % 7} for i in range(nq)], nq),
        10,
        SearchParams(),
        partition=0,
        probes=np.arange(1, nq + 1, dtype=np.int32),
    )
    parts = split_request(request, 30_000, functions=4)
    assert len(parts) > 1
    assert sum(part.n_queries for part, _ in parts) == nq
    assert all(len(payload) <= 30_000 for _, payload in parts)
    assert [f for part, _ in parts for f in part.filters.per_query()] == request.filters.per_query()
    assert np.array_equal(np.concatenate([part.probes for part, _ in parts]), request.probes)
    with pytest.raises(LimitExceededError, match="6,291,456"):
        split_request(request.take(slice(0, 1)), 2_000, functions=4)


# --- failures surface at the client -----------------------------------------------------------------------


def _faulty_client(uri: str, fault: Fault) -> squash.Client:
    def opener(store_uri: str) -> FaultInjectingStore:
        return FaultInjectingStore(open_store(store_uri), [fault])

    return squash.Client(uri, invoker=InProcessInvoker(RuntimeConfig(), open_store=opener))


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (
            Fault(ops=frozenset({"get"}), keys=lambda key: key.endswith("part-00002.sqp"), error=StorageError),
            "injected",
        ),
        (
            Fault(ops=frozenset({"get"}), keys=lambda key: key.endswith("part-00002.sqp"), flip_byte=100),
            "Corrupt",
        ),
    ],
)
def test_processor_failure_surfaces_naming_the_partition(built: Built, fault: Fault, error: str) -> None:
    client = _faulty_client(built.uri, fault)
    with pytest.raises(IncompleteResultError, match="partition 2 ") as caught:
        client.query_batch(built.queries, 10, branching=2, depth=1, exact=True)
    assert error in str(caught.value) and "squash-processor-2" in str(caught.value)


def test_remote_invalid_input_keeps_its_type(built: Built) -> None:
    client = squash.Client(built.uri)
    with pytest.raises(InvalidInputError, match=f"squash-coordinator: .*{DIM}"):
        client.query_batch(np.ones((2, DIM + 1)), 5)
    with pytest.raises(squash.FilterError, match="squash-coordinator"):
        client.query_batch(built.queries[:2], 5, {"no_such_field": 1})
    with pytest.raises(squash.IndexNotFoundError):
        squash.Client(f"memory://runtime-empty-{uuid.uuid4().hex}").query(built.queries[0])


# --- protocol ---------------------------------------------------------------------------------------------


@pytest.fixture
def processor_event() -> dict[str, Any]:
    queries = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
    filters = FilterSet.from_user([{"price": 1}, None, {"price": 1}], 3)
    return ProcessorRequest(
        IndexRef("memory://x", 2, BUILD),
        queries,
        filters,
        10,
        SearchParams(probe=3),
        4,
        np.array([1, 5, 2], np.int32),
    ).to_event()


_DROP = object()


def _with(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**event, **changes}
    return {key: value for key, value in out.items() if value is not _DROP}


def _arrays(**arrays: np.ndarray) -> str:
    return pack_arrays(arrays)


def test_processor_request_round_trip(processor_event: dict[str, Any]) -> None:
    request = ProcessorRequest.from_event(json.loads(json.dumps(processor_event)))
    assert (request.index, request.partition, request.k, request.params) == (
        IndexRef("memory://x", 2, BUILD),
        4,
        10,
        SearchParams(probe=3),
    )
    assert request.filters.exprs == ({"price": 1}, None) and request.filters.of.tolist() == [0, 1, 0]
    assert request.queries.dtype == np.float32 and request.queries[2, 0] == 2 * DIM
    assert request.probes.tolist() == [1, 5, 2]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"extra": 1}, "unknown field"),
        ({"k": _DROP}, "missing field"),
        ({"k": "10"}, "'k'"),
        ({"k": 0}, "'k'"),
        ({"k": True}, "'k'"),
        ({"partition": -1}, "'partition'"),
        ({"squash": 2}, "'squash'"),
        ({"kind": "allocator_request"}, "'kind'"),
        ({"index": {"uri": "memory://x"}}, "'index'"),
        ({"index": {"uri": "memory://x", "version": None, "build": BUILD}}, "'index.version'"),
        ({"index": {"uri": "memory://x", "version": 1, "build": None}}, "'index.build'"),
        ({"index": {"uri": "memory://x", "version": 1, "build": "../etc"}}, "'index.build'"),
        ({"index": {"uri": "memory://x", "version": 2**70, "build": BUILD}}, "'index.version'"),
        ({"index": {"uri": "memory://x", "version": 1}}, "exactly the keys uri, version and build"),
        ({"knobs": {"no_such_knob": 1}}, "'knobs'"),
        ({"knobs": {"rerank_depth": "2"}}, "'knobs'"),
        ({"filters": []}, "'filters'"),
        ({"filters": [None]}, "'arrays.filter_of'"),
        ({"arrays": "not base64!"}, "'arrays'"),
        ({"arrays": _arrays(queries=np.ones((3, DIM)), filter_of=np.zeros(3, np.int32))}, "'arrays.queries'"),
        (
            {"arrays": _arrays(queries=np.ones(DIM, np.float32), filter_of=np.zeros(1, np.int32))},
            "'arrays.queries'",
        ),
        ({"arrays": _arrays(queries=np.ones((3, DIM), np.float32))}, "'arrays'"),
        (
            {"arrays": _arrays(queries=np.ones((3, DIM), np.float32), filter_of=np.zeros(2, np.int32))},
            "filter_of",
        ),
        (
            {"arrays": _arrays(queries=np.full((3, DIM), np.nan, np.float32), filter_of=np.zeros(3, np.int32))},
            "finite",
        ),
        ({"probes": _DROP}, "missing field"),
        ({"probes": _arrays(probes=np.ones(2, np.int32))}, "'probes' must be 3 int32"),
        ({"probes": _arrays(probes=np.array([1, 0, 2], np.int32))}, "each at least 1"),
        ({"probes": _arrays(probes=np.ones(3, np.int64))}, "'arrays.probes' must have dtype"),
        *(
            ({"budget_ms": bad}, "'budget_ms' must be an integer in 1..3600000")
            for bad in (0, -1, 1.5, float("inf"), float("nan"), 10**20, True, "100")
        ),
        ({"deadline_ms": 10**13}, r"unknown field\(s\) \['deadline_ms'\]"),  # absolute deadlines are gone
    ],
)
def test_protocol_rejects_malformed_events(
    processor_event: dict[str, Any], changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError, match=field):
        ProcessorRequest.from_event(_with(processor_event, **changes))


def test_protocol_rejects_bad_data_bytes_and_limits(processor_event: dict[str, Any]) -> None:
    raw = msgpack.unpackb(base64.b64decode(processor_event["arrays"]))
    raw["queries"]["data"] = raw["queries"]["data"][:-4]
    broken = base64.b64encode(msgpack.packb(raw)).decode()
    with pytest.raises(InvalidInputError, match=r"'arrays\.queries' must hold"):
        ProcessorRequest.from_event(_with(processor_event, arrays=broken))
    with pytest.raises(LimitExceededError, match="k=1001"):
        ProcessorRequest.from_event(_with(processor_event, k=1001))
    with pytest.raises(InvalidInputError, match="processor_request: the event must be a JSON object"):
        ProcessorRequest.from_event([processor_event])


def test_coordinator_and_allocator_requests_validate_tree_fields() -> None:
    base = CoordinatorRequest(IndexRef("memory://x"), np.ones((2, 4), np.float32), FilterSet.from_user(None, 2), 5, {})
    event = base.to_event()
    assert CoordinatorRequest.from_event(event).shape is None
    assert CoordinatorRequest.from_event({**event, "branching": 3, "depth": 2}).shape == TreeShape(3, 2)
    with pytest.raises(InvalidInputError, match="together"):
        CoordinatorRequest.from_event({**event, "branching": 3})
    with pytest.raises(LimitExceededError, match="allocators"):
        CoordinatorRequest.from_event({**event, "branching": 64, "depth": 3})
    alloc = AllocatorRequest(
        IndexRef("memory://x", 1, BUILD), base.queries, base.filters, 5, {}, shape=TreeShape(2, 2), node=3, level=2
    ).to_event()
    assert AllocatorRequest.from_event(alloc).node == 3
    with pytest.raises(InvalidInputError, match="'node'"):
        AllocatorRequest.from_event({**alloc, "node": 6})
    with pytest.raises(InvalidInputError, match="'level'"):
        AllocatorRequest.from_event({**alloc, "level": 3})


def test_response_validation() -> None:
    ids = np.zeros((2, 3), np.int64)
    stats = {name: np.zeros(2, np.int64) for name in squash.search.result.STAT_FIELDS}
    metrics = {"p": {"role": "processor", "invocations": 1}}
    event = ProcessorResponse(ids, np.zeros((2, 3), np.float32), stats, metrics).to_event()
    assert ProcessorResponse.from_event(event).metrics == metrics
    for bad in (
        {"p": {"role": "boss"}},
        {"p": {"role": "processor", "invocations": -1}},
        {"p": {"role": "processor", "x": 1}},
    ):
        with pytest.raises(InvalidInputError, match="metrics"):
            ProcessorResponse.from_event({**event, "metrics": bad})


def test_response_metrics_are_bounded_in_size() -> None:
    ids = np.zeros((2, 3), np.int64)
    stats = {name: np.zeros(2, np.int64) for name in squash.search.result.STAT_FIELDS}
    event = ProcessorResponse(ids, np.zeros((2, 3), np.float32), stats, {}).to_event()
    too_many = {f"p{i}": {"role": "processor", "invocations": 1} for i in range(MAX_FUNCTIONS + 1)}
    with pytest.raises(InvalidInputError, match=f"at most {MAX_FUNCTIONS} functions"):
        ProcessorResponse.from_event({**event, "metrics": too_many})
    with pytest.raises(InvalidInputError, match="characters"):
        ProcessorResponse.from_event({**event, "metrics": {"p" * 1000: {"role": "processor"}}})
    # An invocation reports only the counters that moved.
    assert own_metrics("p", "processor", {"invocations": 1, "hedges": 0}) == {
        "p": {"role": "processor", "invocations": 1}
    }


class _Recording(InProcessInvoker):
    """Keeps every event and response that crosses an invocation, nested ones included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.payloads: list[dict[str, Any]] = []

    def invoke(self, function: str, payload: bytes) -> dict[str, Any]:
        response = super().invoke(function, payload)
        self.payloads += [json.loads(payload), response]
        return response


def _float_lists(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_float_lists(v) for v in value.values())
    if isinstance(value, list):
        return any(isinstance(v, float) for v in value) + sum(_float_lists(v) for v in value)
    return 0


def test_each_event_is_encoded_once(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    invoker = _Recording()
    client = squash.Client(built.uri, invoker=invoker)
    client.query_batch(built.queries, 10, branching=2, depth=1)  # warm: nothing left to load
    invoker.payloads.clear()
    dumps, encoded = json.dumps, []

    def counting(value: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(value, dict) and "kind" in value:
            encoded.append(value["kind"])
        return dumps(value, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", counting)
    client.query_batch(built.queries, 10, {"color": {"$in": ["red", "blue"]}}, branching=2, depth=1)
    # One encoding per request and per response that crossed an invocation, none twice.
    assert sorted(encoded) == sorted(p["kind"] for p in invoker.payloads)


def test_each_response_is_validated_once_where_it_arrives(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    invoker = _Recording()
    client = squash.Client(built.uri, invoker=invoker)
    client.query_batch(built.queries, 10, branching=2, depth=1)
    invoker.payloads.clear()
    checked: list[str] = []
    check = squash.runtime.protocol.responses.check_metrics

    def counting(metrics: Any, kind: str) -> None:
        checked.append(kind)
        check(metrics, kind)

    monkeypatch.setattr(squash.runtime.protocol.responses, "check_metrics", counting)
    client.query_batch(built.queries, 10, {"color": {"$in": ["red", "blue"]}}, branching=2, depth=1)
    # Responses built, merged and concatenated by the functions themselves are not checked again.
    assert sorted(checked) == sorted(p["kind"] for p in invoker.payloads if p["kind"].endswith("_response"))


def test_payloads_carry_arrays_as_msgpack_not_json_lists(built: Built) -> None:
    invoker = _Recording()
    squash.Client(built.uri, invoker=invoker).query_batch(
        built.queries, 10, {"color": {"$in": ["red", "blue"]}}, branching=2, depth=1
    )
    kinds = {p["kind"] for p in invoker.payloads}
    assert kinds == {
        f"{role}_{what}" for role in ("coordinator", "allocator", "processor") for what in ("request", "response")
    }
    for payload in invoker.payloads:
        assert _float_lists(payload) == 0
        packed = msgpack.unpackb(base64.b64decode(payload["arrays"]))
        assert all(isinstance(item["data"], bytes) for item in packed.values())


def test_every_request_carries_a_budget_that_shrinks_down_the_tree(built: Built) -> None:
    invoker = _Recording()
    squash.Client(built.uri, invoker=invoker).query_batch(built.queries[:40], 10, branching=2, depth=2, timeout=20)
    requests = [p for p in invoker.payloads if p["kind"].endswith("_request")]
    assert all("deadline_ms" not in p and p["budget_ms"] >= 1 for p in requests)
    budgets = {kind: [p["budget_ms"] for p in requests if p["kind"] == kind] for kind in {p["kind"] for p in requests}}
    (coordinator,) = budgets["coordinator_request"]
    margin_ms = 1000 * RuntimeConfig().deadline_margin
    assert 20_000 - margin_ms - 1_000 < coordinator <= 20_000 - margin_ms
    # Each level keeps two margins: one to stop waiting, one to send its answer up.
    assert max(budgets["allocator_request"]) <= coordinator - 2 * margin_ms
    assert max(budgets["processor_request"]) <= coordinator - 4 * margin_ms


# --- invokers, configuration, client arguments -----------------------------------------------------------


def _stubbed_lambda() -> tuple[LambdaInvoker, Stubber]:
    client = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return LambdaInvoker(client), Stubber(client)


def _payload(value: Any) -> StreamingBody:
    body = json.dumps(value).encode()
    return StreamingBody(io.BytesIO(body), len(body))


def test_lambda_invoker_maps_errors() -> None:
    invoker, stub = _stubbed_lambda()
    expected = {"FunctionName": "fn", "InvocationType": "RequestResponse", "Payload": b'{"a": 1}'}
    stub.add_response("invoke", {"StatusCode": 200, "Payload": _payload({"ok": True})}, expected)
    for error_type, message in (
        ("IncompleteResultError", "partition 3 could not be searched"),
        ("KeyError", "'x'"),
        ("Sandbox.Timedout", "Task timed out after 3.00 seconds"),
    ):
        body = {"errorType": error_type, "errorMessage": message}
        stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": _payload(body)})
    stub.add_client_error("invoke", "TooManyRequestsException", "Rate exceeded", 429)
    stub.add_client_error("invoke", "ResourceNotFoundException", "Function not found", 404)
    with stub:
        assert invoker.invoke("fn", b'{"a": 1}') == {"ok": True}
        with pytest.raises(IncompleteResultError, match="fn: partition 3"):
            invoker.invoke("fn", b"{}")
        with pytest.raises(InvocationError, match="fn failed with KeyError"):
            invoker.invoke("fn", b"{}")
        with pytest.raises(InvocationTimeoutError, match="fn timed out"):
            invoker.invoke("fn", b"{}")
        with pytest.raises(ThrottledInvocationError, match="fn was throttled"):
            invoker.invoke("fn", b"{}")
        with pytest.raises(InvocationError, match="ResourceNotFoundException"):
            invoker.invoke("fn", b"{}")


def test_runtime_config_from_env() -> None:
    config = RuntimeConfig.from_env(
        {
            "SQUASH_PROCESSOR_PREFIX": "proc-",
            "SQUASH_PROCESSOR_COUNT": "3",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        }
    )
    assert config.processor_functions == ("proc-0", "proc-1", "proc-2")
    assert config.processor_for(7) == "proc-1"
    assert config.cache_budget == int(1024 * 2**20 * 0.6)
    listed = RuntimeConfig.from_env({"SQUASH_PROCESSOR_FUNCTIONS": "a, b", "SQUASH_ALLOCATOR_FUNCTION": "alloc"})
    assert (listed.processor_functions, listed.allocator_function) == (("a", "b"), "alloc")
    # Deployed functions open no index unless SQUASH_INDEX_ROOTS names its root (tests/test_deployed.py).
    assert RuntimeConfig.from_env({}) == RuntimeConfig(index_roots=())
    with pytest.raises(InvalidInputError, match="AWS_LAMBDA_FUNCTION_MEMORY_SIZE"):
        RuntimeConfig.from_env({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "lots"})
    with pytest.raises(InvalidInputError, match="not both"):
        RuntimeConfig.from_env({"SQUASH_PROCESSOR_FUNCTIONS": "a", "SQUASH_PROCESSOR_PREFIX": "p"})
    with pytest.raises(InvalidInputError, match="distinct"):
        RuntimeConfig(processor_functions=("squash-allocator",))


def test_client_rejects_conflicting_arguments() -> None:
    uri = "memory://unused"
    with pytest.raises(InvalidInputError, match="lambda_client"):
        squash.Client(uri, lambda_client=object())
    with pytest.raises(InvalidInputError, match="config"):
        squash.Client(uri, function="coordinator", config=RuntimeConfig())
    with pytest.raises(InvalidInputError, match="invoker or lambda_client"):
        squash.Client(uri, function="f", invoker=InProcessInvoker(), lambda_client=object())
    with pytest.raises(InvalidInputError, match="version"):
        squash.Client(uri, version=0)
    with pytest.raises(InvalidInputError, match="query_batch"):
        squash.Client(uri).query(np.ones((2, 4)))
    with pytest.raises(InvalidInputError, match="together"):
        squash.Client(uri).query_batch(np.ones((2, 4)), branching=2)
    deployed = squash.Client.deployed(uri, function="arn:aws:lambda:us-east-1:1:function:coordinator")
    assert isinstance(deployed.invoker, LambdaInvoker)


# --- canned events ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # a failed invocation emits none
def test_canned_events_parse() -> None:
    parsers = {
        "coordinator": CoordinatorRequest,
        "allocator": AllocatorRequest,
        "processor": ProcessorRequest,
    }
    for role, parser in parsers.items():
        request = parser.from_event(json.loads((EVENTS / f"{role}_request.json").read_text()))
        assert request.n_queries == 2


# --- deployed mode on the local Lambda service ------------------------------------------------------------


@pytest.mark.slow
def test_deployed_mode_end_to_end_on_the_local_stack(tmp_path: Path) -> None:
    from squash.local import FunctionSpec, LocalStack

    names = {"coordinator": "e2e-coordinator", "allocator": "e2e-allocator"}
    slots = ("e2e-processor-0", "e2e-processor-1")
    env = {
        "SQUASH_COORDINATOR_FUNCTION": names["coordinator"],
        "SQUASH_ALLOCATOR_FUNCTION": names["allocator"],
        "SQUASH_PROCESSOR_FUNCTIONS": ",".join(slots),
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    roles = [*names.items(), *(("processor", slot) for slot in slots)]
    specs = [
        FunctionSpec(name, REPO / "functions" / role, "app.lambda_handler", timeout=60, environment=env)
        for role, name in roles
    ]
    with LocalStack(functions=specs, workers=1, prewarm=True, scratch_dir=tmp_path):
        boto3.client("s3").create_bucket(Bucket="squash-e2e")
        # One partition per slot: each local function has one worker, and a second concurrent call would
        # be throttled (as on AWS at a reserved concurrency of 1).
        built = _build("s3://squash-e2e/index", n=600, seed=4, partitions=2)
        client = squash.Client.deployed(built.uri, function=names["coordinator"])
        expr = {"price": {"$lt": 50}}
        first = client.query_batch(built.queries[:20], 5, expr, branching=1, depth=1)
        _same(first, built.index.search(built.queries[:20], k=5, filter=expr))
        second = client.query_batch(built.queries[:20], 5, expr, branching=1, depth=1)
        assert first.info["processor.bytes_read"] > 0 and second.info["processor.bytes_read"] == 0
        assert second.info["processor.cache_hits"] == second.info["processor.invocations"] > 0
        assert second.info["cold"] == 0 and set(slots) <= {k.split(".")[1] for k in second.info if "function." in k}

        broken = _build("s3://squash-e2e/broken", n=300, seed=5, partitions=2)
        part = next(key for key in open_store(broken.uri).list("builds/") if key.endswith("part-00001.sqp"))
        open_store(broken.uri).delete(part)
        with pytest.raises(IncompleteResultError, match=r"partition 1 .*ObjectNotFoundError"):
            squash.Client.deployed(broken.uri, function=names["coordinator"]).query_batch(
                broken.queries[:4], 5, branching=1, depth=1, exact=True
            )


def test_modelled_durations_follow_the_critical_path(built: Built) -> None:
    from squash.costs import Prices, estimate, metrics_from_info
    from squash.runtime.context import MODEL_HOP_MS

    client = squash.Client(built.uri)
    result = client.query_batch(built.queries, 10, branching=2, depth=2)
    metrics = metrics_from_info(result.info, client.config)
    by_role = {role: [m for m in metrics.values() if m["role"] == role] for role in ("coordinator", "allocator")}
    processors = [m for m in metrics.values() if m["role"] == "processor"]
    for m in metrics.values():
        assert 0 < m["cpu_seconds"] <= m["seconds"] + 1e-3
        assert m["model_ms"] >= m["cpu_seconds"] * 1000
    slowest_processor = max(m["critical_ms"] for m in processors)
    (coordinator,) = by_role["coordinator"]
    # Coordinator -> allocators (2 levels) -> processors: at least three hops below the coordinator.
    assert coordinator["critical_ms"] >= slowest_processor + 3 * MODEL_HOP_MS
    assert by_role["allocator"][0]["critical_ms"] >= slowest_processor + MODEL_HOP_MS
    measured = estimate(metrics, Prices(), len(built.queries))
    modelled = estimate(metrics, Prices(), len(built.queries), billed="model_ms")
    assert modelled.item("requests") == measured.item("requests") and modelled.item("compute") > 0
