"""Fault injection at every level of the query tree, in the embedded mode.

Invocation faults come from `FaultInjectingInvoker` (coordinator, allocator, processor), storage faults from
`FaultInjectingStore`. Every recoverable fault must leave the result bit-identical to the fault-free one; the
others must fail loudly, naming the partition or object. The module tallies faults injected and survived.
"""

from __future__ import annotations

import http.server
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from test_runtime import Built, _build, _payload, _same, _stubbed_lambda

import squash
from squash.compute.aws_lambda import LambdaInvoker
from squash.compute.base import remote_error
from squash.compute.retry import Deadline, RetryBudget, RetryPolicy, retryable, retrying
from squash.config import RuntimeConfig
from squash.errors import (
    CorruptObjectError,
    FilterError,
    IncompleteResultError,
    InvalidInputError,
    InvocationError,
    InvocationTimeoutError,
    SquashError,
    ThrottledError,
    ThrottledInvocationError,
    WorkerCrashedError,
)
from squash.runtime.faults import FaultInjectingInvoker, InvokeFault
from squash.runtime.inprocess import InProcessInvoker
from squash.runtime.tree import TreeShape
from squash.search.orchestrate import group_by_partition
from squash.search.params import SearchParams
from squash.search.plan import plan_queries
from squash.search.queries import FilterSet, prepare_queries
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
        self,
        uri: str,
        faults: Sequence[InvokeFault] = (),
        store_faults: Sequence[Fault] = (),
        seed: int = 0,
        **config: Any,
    ) -> None:
        self.stores: list[FaultInjectingStore] = []

        def opener(store_uri: str) -> FaultInjectingStore:
            store = FaultInjectingStore(open_store(store_uri), store_faults)
            self.stores.append(store)
            return store

        settings = {"retry_base_delay": 0.005, "retry_max_delay": 0.02, **config}
        self.invoker = FaultInjectingInvoker(
            InProcessInvoker(RuntimeConfig(**settings), open_store=opener), faults, seed=seed
        )
        self.client = squash.Client(uri, invoker=self.invoker)

    @property
    def injected(self) -> int:
        return self.invoker.injected + sum(store.injected for store in self.stores)

    def calls(self, role: str) -> int:
        """Invocations of the functions of ``role`` made so far (the client's included)."""
        return sum(n for function, n in self.invoker.calls.items() if function.startswith(f"squash-{role}"))

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


# --- time budgets: every node's deadline runs from its own arrival, on its own clock ---------------------


def _skew_caller_clock(monkeypatch: pytest.MonkeyPatch, skew: float) -> None:
    """Skew the wall clock of this (the caller's) thread only: the functions run on threads of their own,
    standing for machines whose clocks are right."""
    real, caller = time.time, threading.current_thread()
    monkeypatch.setattr(time, "time", lambda: real() + (skew if threading.current_thread() is caller else 0.0))


@pytest.mark.parametrize("skew", [-90.0, -1.0])
def test_a_client_clock_behind_keeps_its_full_timeout(
    built: Built, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    _skew_caller_clock(monkeypatch, skew)
    slow = InvokeFault(_named("squash-processor-1"), nth=1, delay=0.8)  # needs most of the 1.5 s timeout
    faulty = Faulty(built.uri, [slow])
    result = _query(faulty, built, exact=True, timeout=1.5)
    _same(result, built.index.search(built.queries[:NQ], k=K, exact=True))
    assert faulty.injected == 1
    faulty.tally(survived=True)


def test_a_budget_too_small_fails_before_anything_is_invoked(built: Built) -> None:
    faulty = Faulty(built.uri, [InvokeFault()])  # fires on every call, passing it through: counts them
    with pytest.raises(InvocationTimeoutError, match="no time left to start squash-coordinator"):
        _query(faulty, built, timeout=0.01)  # less than the client's 0.05 s margin
    assert faulty.injected == 0


# --- one retry layer, at the node that failed, under a budget; crashed workers retried --------------------


def test_botocore_makes_one_attempt_per_lambda_call(monkeypatch: pytest.MonkeyPatch) -> None:
    hits: list[str] = []

    class Throttling(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"Type": "User", "message": "Rate Exceeded."}'
            self.send_response(429)
            self.send_header("x-amzn-ErrorType", "TooManyRequestsException")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name, value in {
        "AWS_ENDPOINT_URL_LAMBDA": f"http://127.0.0.1:{server.server_port}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        with pytest.raises(ThrottledInvocationError):
            LambdaInvoker().invoke("fn", b"{}")
    finally:
        server.shutdown()
        server.server_close()
    assert len(hits) == 1, "botocore retried under Squash's own retries"


def test_a_crashed_lambda_worker_is_a_retryable_crash() -> None:
    invoker, stub = _stubbed_lambda()
    for error_type in ("Runtime.ExitError", "Runtime.Unknown"):
        body = {
            "errorType": error_type,
            "errorMessage": "RequestId: 1 Error: Runtime exited with error: signal: killed",
        }
        stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": _payload(body)})
    with stub:
        for _ in range(2):
            with pytest.raises(WorkerCrashedError, match=r"fn crashed .*signal: killed") as crashed:
                invoker.invoke("fn", b"{}")
            assert retryable(crashed.value)


def test_an_error_a_callee_raised_is_final() -> None:
    raised = remote_error(ALLOCATOR, "ThrottledInvocationError", "squash-processor-1 was throttled")
    assert isinstance(raised, ThrottledInvocationError) and raised.raised_by == ALLOCATOR
    assert not retryable(raised) and retryable(ThrottledInvocationError("throttled here"))


@pytest.mark.parametrize("function", [COORDINATOR, ALLOCATOR, "squash-processor-2"])
def test_a_worker_killed_mid_query_is_retried(built: Built, function: str) -> None:
    kill = InvokeFault(_named(function), nth=1, error=WorkerCrashedError, after=True)
    faulty = Faulty(built.uri, [kill])
    result = _query(faulty, built, exact=True)
    _same(result, built.index.search(built.queries[:NQ], k=K, exact=True))
    assert faulty.injected == 1 and result.info["retries"] >= 1
    faulty.tally(survived=True)


def test_a_failure_retried_below_is_not_retried_above(built: Built) -> None:
    faulty = Faulty(built.uri, [InvokeFault(_named(ALLOCATOR), error=ThrottledInvocationError)])
    with pytest.raises(ThrottledInvocationError, match=f"{COORDINATOR}: {ALLOCATOR}"):
        _query(faulty, built)  # (2, 1): both allocators are throttled on every call
    # The coordinator retried within its budget (its floor, and a fraction of its calls: two invocations
    # and a few storage reads) and gave up; the client does not run it again.
    assert faulty.calls("coordinator") == 1
    assert faulty.calls("allocator") <= 2 + RuntimeConfig().retry_budget_floor + 1
    faulty.tally(survived=False)


def test_amplification_under_throttling_is_bounded_by_the_retry_budget(built: Built) -> None:
    roles = ("coordinator", "allocator", "processor")
    plain = Faulty(built.uri)
    plain.client.query_batch(built.queries[:NQ], K, branching=2, depth=2)
    planned = sum(plain.calls(role) for role in roles)
    throttled = Faulty(built.uri, [InvokeFault(error=ThrottledInvocationError, rate=0.5)], seed=1)
    with pytest.raises(SquashError):  # half of all calls throttled: the budget gives up rather than storm
        throttled.client.query_batch(built.queries[:NQ], K, branching=2, depth=2)
    config = RuntimeConfig()
    # Every node (client, coordinator, 6 allocators) retries at most floor + ratio * its calls.
    nodes = 2 + TreeShape(2, 2).allocators
    bound = planned * (1 + config.retry_budget_ratio) + config.retry_budget_floor * nodes
    assert sum(throttled.calls(role) for role in roles) <= bound
    assert throttled.calls("coordinator") <= 1 + config.retry_budget_floor
    throttled.tally(survived=False)


def test_the_retry_budget_is_spent_and_reported(built: Built) -> None:
    processors = InvokeFault(lambda f: f.startswith("squash-processor"), error=ThrottledInvocationError, rate=0.8)
    faulty = Faulty(built.uri, [processors], seed=3)
    result = faulty.client.query_batch(built.queries[:NQ], K, depth=0, allow_partial=True)
    config = RuntimeConfig()
    first_attempts = faulty.calls("processor") - result.info["retries"]
    assert 1 <= result.info["retries"] <= config.retry_budget_floor + config.retry_budget_ratio * first_attempts
    assert result.info["retries_denied"] >= 1 and result.info["coordinator.retries_denied"] >= 1
    assert result.complete is not None and not result.complete.all()
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
        retrying(throttled, policy, Deadline.after(0.2), "test", RetryBudget(ratio=0.0, floor=1000))
    assert 1 < len(calls) < 100


def test_lambda_5xx_is_retryable_and_4xx_is_not() -> None:
    invoker, stub = _stubbed_lambda()
    stub.add_client_error("invoke", "ServiceException", "internal", 500)
    stub.add_client_error("invoke", "InvalidParameterValueException", "bad", 400)
    with stub:
        with pytest.raises(InvocationError) as server:
            invoker.invoke("fn", b"{}")
        with pytest.raises(InvocationError) as client:
            invoker.invoke("fn", b"{}")
    assert server.value.retryable and not client.value.retryable
