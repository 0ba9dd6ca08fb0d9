"""Cell state tables (design 3.3): a predicate compiled to three-valued states per attribute cell.

Each leaf gets a table of states, one per cell of its attribute, from the cell's closed interval
``[cell_lo, cell_hi]``: FULL if every value in it satisfies the leaf, NONE if none does, PARTIAL otherwise.
Rows take their state by table lookup on their codes, combined by Kleene logic (AND = min, OR = max,
NOT = 2 - s).

Predicates of one shape (same fields and operators, different operands) compile together: their tables are
(G, 256) arrays built by one binary search per leaf, split into per-filter trees at the end (`split_rows`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from squash.attributes import MAX_BITS, AttributeQuantizer, AttrType
from squash.filter.parse import And, Compare, In, Not, Op, Or, Predicate

NONE, PARTIAL, FULL = np.uint8(0), np.uint8(1), np.uint8(2)
CODES = 2**MAX_BITS


@dataclass(frozen=True)
class Table:
    """States of a subtree that reads one attribute, indexed by that attribute's code.

    ``states`` is (256,) uint8, or (G, 256) while G same-shaped filters are compiled together; codes
    beyond the attribute's cells are PARTIAL, the safe answer. ``full`` and ``maybe`` are 0/1 int64
    weights over codes (FULL, not NONE): a partition's counts are one dot product with its histogram.
    """

    attribute: int
    states: np.ndarray
    full: np.ndarray
    maybe: np.ndarray


def table(attribute: int, states: np.ndarray) -> Table:
    return Table(attribute, states, (states == FULL).astype(np.int64), (states != NONE).astype(np.int64))


@dataclass(frozen=True)
class Combine:
    is_and: bool
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Negate:
    child: Node


Node = Table | Combine | Negate


class CellCompiler:
    """Compiles same-shaped predicates together: every table of the result holds (G, 256) states."""

    def __init__(self, quantizer: AttributeQuantizer) -> None:
        self.quantizer = quantizer
        self.integral = tuple(spec.type is not AttrType.FLOAT for spec in quantizer.schema.fields)

    def compile(self, predicates: Sequence[Predicate]) -> Node:
        first = predicates[0]
        match first:
            case Compare(_, attribute, op, _):
                lo, hi = self.quantizer.cell_lo[attribute], self.quantizer.cell_hi[attribute]
                values = np.array([p.value for p in predicates if isinstance(p, Compare)])
                return table(attribute, compare_states(op, lo, hi, values))
            case In(_, attribute, _):
                return table(attribute, np.stack([self._in_states(p) for p in predicates if isinstance(p, In)]))
            case Not():
                node = self.compile([p.child for p in predicates if isinstance(p, Not)])
                return table(node.attribute, 2 - node.states) if isinstance(node, Table) else Negate(node)
            case And(children) | Or(children):
                parts = [[p.children[j] for p in predicates if isinstance(p, And | Or)] for j in range(len(children))]
                return combine(isinstance(first, And), [self.compile(c) for c in parts])
        raise TypeError(f"not a predicate: {first!r}")

    def _in_states(self, leaf: In) -> np.ndarray:
        lo, hi = self.quantizer.cell_lo[leaf.attribute], self.quantizer.cell_hi[leaf.attribute]
        values = np.asarray(leaf.values)
        inside = np.searchsorted(values, hi, side="right") - np.searchsorted(values, lo, side="left")
        # An integer-valued cell holds only integers in [lo, hi]: it is FULL when the set covers them all.
        covered = (lo == hi) | (self.integral[leaf.attribute] & (inside == hi - lo + 1))
        states = np.full(CODES, PARTIAL)
        states[: lo.size][inside == 0] = NONE
        states[: lo.size][(inside > 0) & covered] = FULL
        return states


def split_rows(node: Node, count: int) -> list[Node]:
    """Split a tree compiled for ``count`` filters into one tree per filter (views of its tables)."""
    if isinstance(node, Table):
        return [Table(node.attribute, node.states[g], node.full[g], node.maybe[g]) for g in range(count)]
    if isinstance(node, Negate):
        return [Negate(child) for child in split_rows(node.child, count)]
    children = [split_rows(child, count) for child in node.children]
    return [Combine(node.is_and, tuple(c[g] for c in children)) for g in range(count)]


def compare_states(op: Op, lo: np.ndarray, hi: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(G, 256) states of the cells [lo, hi] (ascending, disjoint) for ``value op v``, v in ``values`` (G,).

    Cells are ordered (lo[i] <= hi[i] < lo[i + 1]), so the FULL and NONE cells of a comparison are a prefix
    and a suffix found by binary search; the cell holding v, if any, is the only one an equality test can
    leave undecided.
    """
    n = lo.size
    codes = np.arange(CODES)
    if op in (Op.EQ, Op.NE):
        cell = np.searchsorted(lo, values, side="right") - 1
        at = np.maximum(cell, 0)
        holds = (cell >= 0) & (hi[at] >= values)
        single = holds & (lo[at] == values) & (hi[at] == values)
        states = np.full((len(values), CODES), PARTIAL)
        states[:, :n] = NONE if op is Op.EQ else FULL
        decided = FULL if op is Op.EQ else NONE
        rows = np.flatnonzero(holds)
        states[rows, cell[rows]] = np.where(single[rows], decided, PARTIAL)
        return states
    side = "right" if op in (Op.GT, Op.LTE) else "left"  # > v and <= v split at v itself the same way
    below = codes < np.searchsorted(hi, values, side=side)[:, None]  # cells entirely below v
    above = (codes >= np.searchsorted(lo, values, side=side)[:, None]) & (codes < n)  # entirely above v
    low, high = (NONE, FULL) if op in (Op.GT, Op.GTE) else (FULL, NONE)
    return np.where(below, low, np.where(above, high, PARTIAL)).astype(np.uint8)


def combine(is_and: bool, children: list[Node]) -> Node:
    # Lookups commute with min/max, so same-attribute tables merge into one table: one gather per attribute.
    merge = np.minimum if is_and else np.maximum
    tables: dict[int, np.ndarray] = {}
    others: list[Node] = []
    flat: list[Node] = []
    for child in children:
        same_kind = isinstance(child, Combine) and child.is_and == is_and
        flat.extend(child.children if same_kind else (child,))
    for child in flat:
        if isinstance(child, Table):
            known = tables.get(child.attribute)
            tables[child.attribute] = child.states if known is None else merge(known, child.states)
        else:
            others.append(child)
    merged = [table(attribute, states) for attribute, states in tables.items()] + others
    return merged[0] if len(merged) == 1 else Combine(is_and, tuple(merged))


def states_at(node: Node, codes: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """States of ``codes[rows]`` (all rows when None), reading only the attribute columns a node needs."""
    match node:
        case Table(attribute, states):
            return states[codes[:, attribute] if rows is None else codes[rows, attribute]]
        case Negate(child):
            return 2 - states_at(child, codes, rows)
        case Combine(is_and, children):
            merge = np.minimum if is_and else np.maximum
            result = states_at(children[0], codes, rows)
            for child in children[1:]:
                merge(result, states_at(child, codes, rows), out=result)
            return result
    raise TypeError(f"not a compiled node: {node!r}")


def tree_shape(node: Node) -> Hashable:
    """A compiled tree without its cell tables: trees of one shape are evaluated together."""
    match node:
        case Table(attribute):
            return attribute
        case Negate(child):
            return ("not", tree_shape(child))
        case Combine(is_and, children):
            return (is_and, tuple(tree_shape(c) for c in children))
    raise TypeError(f"not a compiled node: {node!r}")
