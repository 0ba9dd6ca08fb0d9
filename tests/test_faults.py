"""Fault injection at every level of the query tree, in the embedded mode.

Invocation faults come from `FaultInjectingInvoker` (coordinator, allocator, processor), storage faults from
`FaultInjectingStore`. Every recoverable fault must leave the result bit-identical to the fault-free one; the
others must fail loudly, naming the partition or object. The module tallies faults injected and survived.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from test_runtime import Built, _build, _same, _stubbed_lambda

import squash
from squash.compute.faults import FaultInjectingInvoker, InvokeFault
from squash.compute.inprocess import InProcessInvoker
from squash.compute.retry import Deadline, RetryPolicy, retrying
from squash.config import RuntimeConfig
from squash.errors import (
    CorruptObjectError,
    FilterError,
    IncompleteResultError,
    InvalidInputError,
    InvocationError,
    InvocationTimeoutError,
    ThrottledError,
    ThrottledInvocationError,
)
from squash.protocol import FilterSet
from squash.search.engine import group_by_partition
from squash.search.params import SearchParams
from squash.search.plan import plan_queries
from squash.search.queries import prepare_queries
from squash.storage import open_store
from squash.storage.faults import Fault, FaultInjectingStore

NQ = 12
K = 10
COORDINATOR, ALLOCATOR = "squash-coordinator", "squash-allocator"
NARROW = {
    "centroid_factor": 1.0,
    "max_partitions": 2,
    "exact_budget": 100,
    "probe": 2,
}  # so some queries skip any given partition
TALLY = {"injected": 0, "survived": 0}


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest) -> Iterator[Built]:
    yield _build(f"memory://faults-{uuid.uuid4().hex}")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"test_faults: {TALLY['injected']} faults injected, {TALLY['survived']} survived")


@pytest.fixture(scope="module")
def expected(built: Built) -> squash.SearchResult:
    return built.index.search(built.queries[:NQ], k=K)


class Faulty:
    """An embedded client whose invocations and storage reads go through fault injectors."""

    def __init__(
        self, uri: str, faults: Sequence[InvokeFault] = (), store_faults: Sequence[Fault] = (), **config: Any
    ) -> None:
        self.stores: list[FaultInjectingStore] = []

        def opener(store_uri: str) -> FaultInjectingStore:
            store = FaultInjectingStore(open_store(store_uri), store_faults)
            self.stores.append(store)
            return store

        settings = {"retry_base_delay": 0.005, "retry_max_delay": 0.02, **config}
        self.invoker = FaultInjectingInvoker(InProcessInvoker(RuntimeConfig(**settings), open_store=opener), faults)
        self.client = squash.Client(uri, invoker=self.invoker)

    @property
    def injected(self) -> int:
        return self.invoker.injected + sum(store.injected for store in self.stores)

    def tally(self, *, survived: bool) -> None:
        TALLY["injected"] += self.injected
        TALLY["survived"] += self.injected if survived else 0


def _named(name: str) -> Callable[[str], bool]:
    return lambda function: function == name


def _query(faulty: Faulty, built: Built, **options: Any) -> squash.SearchResult:
    return faulty.client.query_batch(built.queries[:NQ], K, branching=2, depth=1, **options)


# --- recovered faults: the result is exactly the fault-free one -------------------------------------------


@pytest.mark.parametrize(
    ("function", "error", "counter"),
    [
        (COORDINATOR, ThrottledInvocationError, None),  # retried by the client
        (ALLOCATOR, ThrottledInvocationError, "coordinator.retries"),
        ("squash-processor-2", ThrottledInvocationError, "retries"),
        ("squash-processor-3", InvocationTimeoutError, "retries"),
        (ALLOCATOR, InvocationTimeoutError, "coordinator.retries"),
    ],
)
def test_transient_invocation_faults_are_retried(
    built: Built, expected: squash.SearchResult, function: str, error: type, counter: str | None
) -> None:
    faults = [InvokeFault(_named(function), nth=1, error=error), InvokeFault(_named(function), nth=2, error=error)]
    faulty = Faulty(built.uri, faults)
    result = _query(faulty, built, exact=True)
    _same(result, built.index.search(built.queries[:NQ], k=K, exact=True))
    assert faulty.injected == 2 and result.complete is not None and result.complete.all()
    if counter is not None:
        assert result.info[counter] >= 2
    faulty.tally(survived=True)


def test_storage_slowdown_on_a_partition_read_is_retried(built: Built, expected: squash.SearchResult) -> None:
    slow = Fault(ops=frozenset({"get"}), keys=lambda key: key.endswith("part-00003.sqp"), nth=1, error=ThrottledError)
    faulty = Faulty(built.uri, store_faults=[slow])
    result = _query(faulty, built, exact=True)
    _same(result, built.index.search(built.queries[:NQ], k=K, exact=True))
    assert faulty.injected == 1 and result.info["retries"] >= 1
    faulty.tally(survived=True)


def test_storage_slowdown_at_the_coordinator_is_retried(built: Built, expected: squash.SearchResult) -> None:
    slow = Fault(ops=frozenset({"list"}), nth=1, error=ThrottledError)
    faulty = Faulty(built.uri, store_faults=[slow])
    _same(_query(faulty, built), expected)
    assert faulty.injected == 1
    faulty.tally(survived=True)


def test_a_straggler_is_hedged(built: Built) -> None:
    delay = 4.0
    straggler = InvokeFault(_named("squash-processor-1"), nth=1, delay=delay)
    faulty = Faulty(built.uri, [straggler], hedge_min_seconds=0.2)
    started = time.perf_counter()
    result = faulty.client.query_batch(built.queries[:NQ], K, depth=0, exact=True)
    elapsed = time.perf_counter() - started
    _same(result, built.index.search(built.queries[:NQ], k=K, exact=True))
    assert result.info["hedges"] == 1 and faulty.injected == 1
    assert elapsed < delay / 2, f"took {elapsed:.2f} s: the duplicate should have answered"
    faulty.tally(survived=True)


# --- unrecoverable faults: loud, named, never a wrong result ---------------------------------------------


def _routes(built: Built) -> dict[int, np.ndarray]:
    """For each partition, which of the first NQ queries the plan sends to it under NARROW."""
    meta = built.index.meta
    queries = prepare_queries(built.queries[:NQ], meta)
    filters = FilterSet.from_user(None, NQ).compile(meta)
    groups = group_by_partition(plan_queries(meta, queries, filters, K, SearchParams.from_knobs(NARROW)))
    routes = {}
    for pid, (rows, _) in groups.items():
        routes[pid] = np.zeros(NQ, dtype=bool)
        routes[pid][rows] = True
    return routes


def test_permanent_processor_failure_is_reported_or_flagged(built: Built) -> None:
    # A partition some queries need and others do not, so the flags have both values.
    pid, routed = next((p, r) for p, r in sorted(_routes(built).items()) if 0 < r.sum() < NQ)
    dead = InvokeFault(_named(f"squash-processor-{pid}"), error=InvocationError)
    faulty = Faulty(built.uri, [dead])
    with pytest.raises(IncompleteResultError, match=f"partition {pid} .*InvocationError") as caught:
        _query(faulty, built, **NARROW)
    assert caught.value.partitions == (pid,)

    partial = _query(faulty, built, allow_partial=True, **NARROW)
    expected = built.index.search(built.queries[:NQ], k=K, **NARROW)
    assert partial.complete is not None
    np.testing.assert_array_equal(partial.complete, ~routed)
    ok = partial.complete
    np.testing.assert_array_equal(partial.ids[ok], expected.ids[ok])
    np.testing.assert_array_equal(partial.distances[ok], expected.distances[ok])
    lost = set(built.index.partition(pid).data.ids.tolist())
    assert not lost & set(partial.ids[~ok].ravel().tolist())
    np.testing.assert_array_equal(partial.distances[~ok], np.sort(partial.distances[~ok], axis=1))
    faulty.tally(survived=False)


def test_corrupt_partition_is_reported_with_its_key(built: Built) -> None:
    flip = Fault(ops=frozenset({"get"}), keys=lambda key: key.endswith("part-00004.sqp"), flip_byte=100)
    faulty = Faulty(built.uri, store_faults=[flip])
    with pytest.raises(IncompleteResultError, match=r"partition 4 .*CorruptObjectError.*part-00004\.sqp"):
        _query(faulty, built, exact=True)
    faulty.tally(survived=False)


def test_corrupt_manifest_fails_at_the_coordinator_with_its_key(built: Built) -> None:
    flip = Fault(ops=frozenset({"get"}), keys=lambda key: key.startswith("manifests/"), flip_byte=7)
    faulty = Faulty(built.uri, store_faults=[flip])
    with pytest.raises(CorruptObjectError, match=r"manifests/v0000000001"):
        _query(faulty, built)
    assert faulty.invoker.injected == 0 and faulty.injected == 1  # corrupt objects are not retried
    faulty.tally(survived=False)


@pytest.mark.parametrize(
    ("function", "error"),
    [(COORDINATOR, InvalidInputError), (COORDINATOR, FilterError), ("squash-processor-0", CorruptObjectError)],
)
def test_non_retryable_errors_are_not_retried(built: Built, function: str, error: type) -> None:
    faulty = Faulty(built.uri, [InvokeFault(_named(function), error=error)])
    with pytest.raises((error, IncompleteResultError)):
        faulty.client.query_batch(built.queries[:NQ], K, depth=0, exact=True)  # one call per function
    assert faulty.injected == 1
    faulty.tally(survived=False)


def test_retries_are_bounded_by_attempts(built: Built) -> None:
    faulty = Faulty(built.uri, [InvokeFault(_named(COORDINATOR), error=ThrottledInvocationError)], retry_attempts=3)
    with pytest.raises(ThrottledInvocationError):
        _query(faulty, built)
    assert faulty.injected == 3
    faulty.tally(survived=False)


@pytest.mark.parametrize("function", ["squash-processor-5", ALLOCATOR, COORDINATOR])
def test_deadline_exceeded_fails_fast(built: Built, function: str) -> None:
    faulty = Faulty(built.uri, [InvokeFault(_named(function), delay=3.0)])
    started = time.perf_counter()
    with pytest.raises(InvocationTimeoutError):
        _query(faulty, built, exact=True, timeout=0.6)
    assert time.perf_counter() - started < 1.5
    faulty.tally(survived=False)


# --- the building blocks ----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(attempts=6, base_delay=0.1, max_delay=1.0)
    rng = random.Random(0)
    for attempt in range(6):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        cap = min(1.0, 0.1 * 2**attempt)
        assert min(delays) >= 0 and max(delays) <= cap and max(delays) > cap * 0.8


def test_retrying_stops_at_the_deadline() -> None:
    calls = []

    def throttled() -> None:
        calls.append(1)
        raise ThrottledError("slow down")

    policy = RetryPolicy(attempts=100, base_delay=0.05, max_delay=0.05)
    with pytest.raises(InvocationTimeoutError, match="no time left"):
        retrying(throttled, policy, Deadline.after(0.2), "test")
    assert 1 < len(calls) < 100


def test_lambda_5xx_is_retryable_and_4xx_is_not() -> None:
    invoker, stub = _stubbed_lambda()
    stub.add_client_error("invoke", "ServiceException", "internal", 500)
    stub.add_client_error("invoke", "InvalidParameterValueException", "bad", 400)
    with stub:
        with pytest.raises(InvocationError) as server:
            invoker.invoke("fn", {})
        with pytest.raises(InvocationError) as client:
            invoker.invoke("fn", {})
    assert server.value.retryable and not client.value.retryable
