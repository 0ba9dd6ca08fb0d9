"""The allocator tree: shape, pre-order numbering and how a batch of queries is split over it.

A b-ary tree of depth L below the coordinator has N_A = b + b^2 + ... + b^L allocators, numbered in pre-order
(design/algorithm.md 5.1): a subtree rooted at level m has S_m = 1 + b + ... + b^(L-m) nodes, the
coordinator's children are j * S_1 and node i at level l < L has children i + 1 + j * S_(l+1), j = 0..b-1.
Every subtree is therefore a contiguous id range, and it receives one contiguous slice of the batch: its
nodes' shares in pre-order, so a node keeps the first part and passes each child exactly its subtree's part.

Depth 0 means no allocators: the coordinator plans and calls the processors itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from squash.errors import InvalidInputError, LimitExceededError

MAX_DEPTH = 8
MAX_BRANCHING = 64
MAX_ALLOCATORS = 4096


def allocator_count(branching: int, depth: int) -> int:
    """N_A = b + b^2 + ... + b^L."""
    return sum(branching**level for level in range(1, depth + 1))


def subtree_size(level: int, branching: int, depth: int) -> int:
    """Nodes in a subtree whose root is at ``level`` (1..depth): 1 + b + ... + b^(depth - level)."""
    return sum(branching**i for i in range(depth - level + 1))


@dataclass(frozen=True)
class TreeShape:
    """Branching factor b and depth L of the allocator tree."""

    branching: int
    depth: int

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or not 0 <= self.depth <= MAX_DEPTH:
            raise InvalidInputError(f"tree depth must be an integer in 0..{MAX_DEPTH}, got {self.depth!r}")
        b = self.branching
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BRANCHING:
            raise InvalidInputError(f"tree branching must be an integer in 1..{MAX_BRANCHING}, got {b!r}")
        if self.allocators > MAX_ALLOCATORS:
            raise LimitExceededError(
                f"a tree of branching {b} and depth {self.depth} has {self.allocators} allocators, over the "
                f"limit of {MAX_ALLOCATORS}; use a smaller branching or depth"
            )

    @property
    def allocators(self) -> int:
        return allocator_count(self.branching, self.depth)

    def children(self, node: int | None, level: int) -> list[int]:
        """Ids of the children of ``node`` at ``level`` (the coordinator is node None at level 0)."""
        if level >= self.depth:
            return []
        jump = subtree_size(level + 1, self.branching, self.depth)
        first = 0 if node is None else node + 1
        return [first + j * jump for j in range(self.branching)]

    def shares(self, count: int, level: int) -> tuple[int, list[int]]:
        """Split ``count`` queries of a subtree rooted at ``level``: (own share, one share per child).

        Every node of the subtree gets an equal share (the first ones one more); the root keeps the first
        share, except the coordinator (level 0), which keeps none unless there are no allocators (depth 0).
        """
        if level >= self.depth:
            return count, []
        nodes = self.allocators if level == 0 else subtree_size(level, self.branching, self.depth)
        base, extra = divmod(count, nodes)
        sizes = [base + (i < extra) for i in range(nodes)]
        own = 0 if level == 0 else sizes[0]
        first = 0 if level == 0 else 1
        jump = subtree_size(level + 1, self.branching, self.depth)
        return own, [sum(sizes[first + j * jump : first + (j + 1) * jump]) for j in range(self.branching)]


def choose_shape(n_queries: int, *, per_allocator: int, max_branching: int, max_allocators: int) -> TreeShape:
    """The default tree for a batch: about one allocator per ``per_allocator`` queries.

    A batch one allocator could handle (a single query above all) gets depth 0, the shortest path: the
    coordinator plans and calls processors itself, saving a whole invocation latency. Otherwise the
    shallowest tree with at most ``max_branching`` children per node that reaches the target, e.g.
    1,000 queries at 50 per allocator -> 20 allocators -> b = 4, L = 2.
    """
    target = min(math.ceil(n_queries / per_allocator), max_allocators)
    if target <= 1:
        return TreeShape(1, 0)
    depth = 1
    while True:
        branching = 1
        while allocator_count(branching, depth) < target:
            branching += 1
        if branching <= max_branching or depth == MAX_DEPTH:
            return TreeShape(min(branching, MAX_BRANCHING), depth)
        depth += 1
