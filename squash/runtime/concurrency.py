"""How many invocations of each function a batch's tree runs at once, against the functions' reserved concurrency.

Every allocator of a tree runs at the same time (a node waits for its children while they run), so a tree
needs one allocator instance per allocator it invokes (those whose subtree has queries). A node with
queries of its own calls one processor per partition they visit, all at once up to ``max_fan_out``, and
partition p always goes to slot p % S, so one node calls one slot at most min(ceil(P / S), max_fan_out)
times at once, and a tree at most that many times per working node. Hedges come on top, paid from the
retry budget (`squash.compute.retry.RetryBudget`), as do retries, which never overlap their failed call.

The coordinator checks these bounds before invoking anything (`check_plan`), so a plan over a limit fails
at once with a `LimitExceededError` naming the fix, instead of ending in a storm of throttled invocations;
and it shrinks the default tree to fit them (`fit_shape`).
"""

from __future__ import annotations

import math

from squash.config import RuntimeConfig
from squash.errors import LimitExceededError
from squash.runtime.tree import TreeShape, choose_shape


def tree_nodes(shape: TreeShape, n_queries: int) -> tuple[int, int]:
    """(allocators invoked, nodes with queries of their own) for a batch of ``n_queries`` over ``shape``.

    The coordinator counts as a working node only at depth 0, where it calls the processors itself.
    """

    def walk(node: int | None, level: int, count: int) -> tuple[int, int]:
        own, counts = shape.shares(count, level)
        invoked, working = 0, int(own > 0)
        for child, share in zip(shape.children(node, level), counts, strict=True):
            if share > 0:
                below, busy = walk(child, level + 1, share)
                invoked, working = invoked + 1 + below, working + busy
        return invoked, working

    return walk(None, 0, n_queries)


def slot_calls_per_node(n_partitions: int, config: RuntimeConfig) -> int:
    """Most concurrent calls one node makes to one processor slot."""
    return min(math.ceil(n_partitions / len(config.processor_functions)), config.max_fan_out)


def check_plan(shape: TreeShape, n_queries: int, n_partitions: int, config: RuntimeConfig) -> None:
    """Refuse a tree that could need more concurrent allocators or calls to one processor slot than the
    functions' reserved concurrency allows.

    Raises:
        LimitExceededError: naming the need, the limit and the ways to fit.
    """
    invoked, working = tree_nodes(shape, n_queries)
    tree = f"a tree of branching {shape.branching} and depth {shape.depth} for {n_queries} queries"
    limit = config.allocator_concurrency
    if limit is not None and invoked > limit:
        raise LimitExceededError(
            f"{tree} runs {invoked} allocators at once, over the allocator function's reserved concurrency "
            f"of {limit}; use a smaller tree (or let the coordinator choose one) or raise AllocatorConcurrency"
        )
    limit = config.processor_concurrency
    per_node = slot_calls_per_node(n_partitions, config)
    if limit is not None and working * per_node > limit:
        raise LimitExceededError(
            f"{tree} could call one processor slot {working * per_node} times at once (up to {per_node} "
            f"from each of {working} nodes), over each slot's reserved concurrency of {limit}; use "
            "a smaller tree (or let the coordinator choose one), more processor slots or a lower MaxFanOut, "
            "or raise ProcessorConcurrency"
        )


def fit_shape(n_queries: int, n_partitions: int, config: RuntimeConfig) -> TreeShape:
    """The default tree (`choose_shape`), shrunk until it fits the reserved concurrency, if it can.

    A tree that cannot fit even at depth 0 is returned as is, for `check_plan` to refuse.
    """
    limits = []
    if config.allocator_concurrency is not None:
        limits.append(config.allocator_concurrency)
    if config.processor_concurrency is not None:
        limits.append(config.processor_concurrency // slot_calls_per_node(n_partitions, config))
    cap = min([config.max_allocators, *limits])
    while True:
        shape = choose_shape(
            n_queries,
            per_allocator=config.queries_per_allocator,
            max_branching=config.max_branching,
            max_allocators=max(cap, 1),
        )
        invoked, _ = tree_nodes(shape, n_queries)
        # choose_shape may round a level up past the cap (b + b^2 >= target): shrink the target until not.
        if not limits or shape.depth == 0 or invoked <= cap:
            return shape
        cap -= 1
