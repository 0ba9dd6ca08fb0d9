"""Reserved concurrency: the coordinator shapes or refuses a batch's tree before invoking anything.

The oracle for what a tree invokes is the invocations themselves, counted by a pass-through
`FaultInjectingInvoker`.
"""

from __future__ import annotations

import uuid

import pytest
from test_runtime import Built, _build, _same

import squash
from squash.config import RuntimeConfig
from squash.errors import InvalidInputError, LimitExceededError
from squash.runtime.concurrency import fit_shape, tree_nodes
from squash.runtime.faults import FaultInjectingInvoker
from squash.runtime.inprocess import InProcessInvoker
from squash.runtime.tree import TreeShape

K = 10


@pytest.fixture(scope="module")
def built() -> Built:
    return _build(f"memory://concurrency-{uuid.uuid4().hex}")  # 6 partitions over 10 slots


def _counting(built: Built, **config: object) -> tuple[squash.Client, FaultInjectingInvoker]:
    invoker = FaultInjectingInvoker(InProcessInvoker(RuntimeConfig(**config)), [])  # type: ignore[arg-type]
    return squash.Client(built.uri, invoker=invoker), invoker


@pytest.mark.parametrize(("branching", "depth", "nq"), [(2, 2, 12), (2, 2, 3), (3, 2, 40), (1, 3, 2), (1, 0, 5)])
def test_tree_nodes_counts_the_allocators_a_batch_invokes(built: Built, branching: int, depth: int, nq: int) -> None:
    client, invoker = _counting(built)
    client.query_batch(built.queries[:nq], K, branching=branching, depth=depth)
    invoked, working = tree_nodes(TreeShape(branching, depth), nq)
    assert invoked == invoker.calls["squash-allocator"]
    assert working == (1 if depth == 0 else min(nq, invoked))


@pytest.mark.parametrize(
    ("limits", "fix"),
    [({"processor_concurrency": 5}, "ProcessorConcurrency"), ({"allocator_concurrency": 5}, "AllocatorConcurrency")],
)
def test_a_tree_over_the_reserved_concurrency_fails_before_any_call(
    built: Built, limits: dict[str, int], fix: str
) -> None:
    client, invoker = _counting(built, **limits)
    with pytest.raises(LimitExceededError, match=f"reserved concurrency of 5; .*{fix}"):
        client.query_batch(built.queries[:12], K, branching=2, depth=2)  # 6 allocators, each calling a slot
    assert dict(invoker.calls) == {"squash-coordinator": 1}


def test_the_default_tree_shrinks_to_fit_the_reserved_concurrency(built: Built) -> None:
    queries = built.queries  # 60
    unlimited, _ = _counting(built, queries_per_allocator=5)
    assert unlimited.query_batch(queries, K).info["allocators"] == 12
    client, invoker = _counting(built, queries_per_allocator=5, allocator_concurrency=4, processor_concurrency=3)
    result = client.query_batch(queries, K)
    _same(result, built.index.search(queries, k=K))
    assert invoker.calls["squash-allocator"] == result.info["allocators"] == 3
    # Each processor slot (one partition each here) is called once per allocator: at most 3 at once.
    assert max(n for f, n in invoker.calls.items() if f.startswith("squash-processor")) <= 3


def test_a_fan_out_no_tree_can_fit_is_refused(built: Built) -> None:
    config = RuntimeConfig(processor_functions=("p0", "p1"), processor_concurrency=2)
    assert fit_shape(1000, 6, config) == TreeShape(1, 0)  # 3 partitions per slot: even one node needs 3
    client, invoker = _counting(built, processor_functions=("p0", "p1"), processor_concurrency=2)
    with pytest.raises(LimitExceededError, match="call one processor slot 3 times at once"):
        client.query_batch(built.queries[:4], K)
    assert dict(invoker.calls) == {"squash-coordinator": 1}


def test_limits_come_from_the_environment() -> None:
    config = RuntimeConfig.from_env({"SQUASH_ALLOCATOR_CONCURRENCY": "40", "SQUASH_PROCESSOR_CONCURRENCY": "25"})
    assert (config.allocator_concurrency, config.processor_concurrency) == (40, 25)
    assert RuntimeConfig().allocator_concurrency is None and RuntimeConfig().processor_concurrency is None
    with pytest.raises(InvalidInputError, match="processor_concurrency"):
        RuntimeConfig(processor_concurrency=0)
