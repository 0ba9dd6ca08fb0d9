"""Conservative cell-level evaluation of predicates and exact evaluation on raw values (design 3.3).

Each leaf gets a table of three-valued states, one per cell of its attribute, from the cell's closed interval
``[cell_lo, cell_hi]``: FULL if every value in it satisfies the leaf, NONE if none does, PARTIAL otherwise.
Rows take their state by table lookup on their codes, combined by Kleene logic (AND = min, OR = max,
NOT = 2 - s). Because every encoded value lies in its cell's interval, FULL rows match and NONE rows do not;
only PARTIAL rows need the exact check, so :meth:`CompiledFilter.matches` equals :meth:`CompiledFilter.exact`.

Predicates of one shape (same fields and operators, different operands) compile together: their tables are
(G, 256) arrays built by one binary search per leaf, split into per-filter trees at the end, and the bound
recursions take lists of same-shaped trees (:mod:`squash.filter.batch` groups filters for them).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, reduce
from typing import Any

import numpy as np

from squash.attributes import MAX_BITS, AttributeQuantizer, AttributeSchema, AttrType
from squash.errors import InvalidInputError
from squash.filter.interval import Conjuncts, conjunct_intervals
from squash.filter.parse import And, Compare, In, Not, Op, Or, Predicate, canonical_filter, parse_filter

NONE, PARTIAL, FULL = np.uint8(0), np.uint8(1), np.uint8(2)
_CODES = 2**MAX_BITS
_COMPARE = {
    Op.EQ: np.equal,
    Op.NE: np.not_equal,
    Op.GT: np.greater,
    Op.GTE: np.greater_equal,
    Op.LT: np.less,
    Op.LTE: np.less_equal,
}


@dataclass(frozen=True)
class _Table:
    """States of a subtree that reads one attribute, indexed by that attribute's code.

    ``states`` is (256,) uint8, or (G, 256) while G same-shaped filters are compiled together; codes
    beyond the attribute's cells are PARTIAL, the safe answer. ``full`` and ``maybe`` are 0/1 int64
    weights over codes (FULL, not NONE): a partition's counts are one dot product with its histogram.
    """

    attribute: int
    states: np.ndarray
    full: np.ndarray
    maybe: np.ndarray


def _table(attribute: int, states: np.ndarray) -> _Table:
    return _Table(attribute, states, (states == FULL).astype(np.int64), (states != NONE).astype(np.int64))


@dataclass(frozen=True)
class _Combine:
    is_and: bool
    children: tuple[_Node, ...]


@dataclass(frozen=True)
class _Negate:
    child: _Node


_Node = _Table | _Combine | _Negate


class CompiledFilter:
    """A predicate with its per-cell state tables, built once per (predicate, quantizer)."""

    def __init__(
        self,
        predicate: Predicate,
        quantizer: AttributeQuantizer,
        root: _Node | None = None,
        key: Hashable | None = None,
        shape: Hashable | None = None,
        group: Hashable | None = None,
    ) -> None:
        """``root``, ``key``, ``shape``: the compiled tree and shapes when :func:`compile_many` built them.

        ``key`` is the predicate's shape (:func:`predicate_shape`) and ``shape`` its tree's
        (:func:`tree_shape`): filters with equal keys are evaluated together, equal shapes counted together.
        ``group`` says which filters are the same filter, so a batch's queries share their work (matches,
        estimates, bounds): the canonical JSON text when compiled from an expression (:func:`compile_exprs`),
        else the predicate itself. Never None, which stands for "no filter" (:func:`group_of`).
        """
        self.predicate = predicate
        self.quantizer = quantizer
        self._root = _rows(_Compiler(quantizer).compile([predicate]), 1)[0] if root is None else root
        self.key = predicate_shape(predicate) if key is None else key
        self.shape = tree_shape(self._root) if shape is None else shape
        self.group: Hashable = predicate if group is None else group

    @cached_property
    def intervals(self) -> Conjuncts:
        """:func:`~squash.filter.interval.conjunct_intervals` of the predicate, for sorted-value lookups."""
        return conjunct_intervals(self.predicate)

    @cached_property
    def _conjunction(self) -> tuple[tuple[str, float, float], ...] | None:
        """(column, lo, hi) per bounded attribute when the predicate is exactly a conjunction of closed
        intervals (:meth:`~squash.filter.interval.Interval.closed`), else None."""
        intervals, pure = self.intervals
        if not pure or not intervals:
            return None
        names = self.quantizer.schema.names
        return tuple((names[a], *interval.closed()) for a, interval in intervals.items())

    @property
    def is_conjunction(self) -> bool:
        """Whether the predicate is exactly a conjunction of (at least one) ranges and equalities."""
        return self._conjunction is not None

    def cell_states(self, codes: np.ndarray) -> np.ndarray:
        """Three-valued state per row: (n, A) uint8 codes -> (n,) uint8 of NONE, PARTIAL or FULL."""
        self._check_codes(codes)
        return _states(self._root, codes)

    def _check_codes(self, codes: np.ndarray) -> None:
        a = len(self.quantizer.schema)
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != a:
            raise InvalidInputError(f"attribute codes must be a uint8 array of shape (n, {a})")

    def exact(self, raw: Mapping[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
        """Exact bool mask over ``rows`` (int indices or bool mask; None: all rows) of the raw columns."""
        columns: dict[int, np.ndarray] = {}
        names = self.quantizer.schema.names

        def column(attribute: int) -> np.ndarray:
            if attribute not in columns:
                if names[attribute] not in raw:
                    raise InvalidInputError(f"raw attribute column {names[attribute]!r} is missing")
                values = np.asarray(raw[names[attribute]])
                columns[attribute] = values if rows is None else values[rows]
            return columns[attribute]

        return _exact(self.predicate, column)

    def matches(self, codes: np.ndarray, raw: Mapping[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
        """Exact bool mask over ``rows`` (as in :meth:`exact`).

        A conjunction of intervals compares raw values with its bounds: contiguous columns cost less than the
        strided reads of row-major codes (2x on 1M x 4 attributes). Other predicates read raw values only for
        the rows their codes leave PARTIAL.
        """
        if rows is not None:
            rows = np.asarray(rows)
            rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        self._check_codes(codes)
        if self._conjunction is not None:
            return self.inside(raw, rows)
        states = _states_at(self._root, codes, rows)
        result = states == FULL
        partial = np.flatnonzero(states == PARTIAL)
        if partial.size:
            result[partial] = self.exact(raw, partial if rows is None else rows[partial])
        return result

    def inside(self, raw: Mapping[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
        """:meth:`matches` of a conjunction of intervals (:attr:`intervals` pure): raw values against bounds."""
        if self._conjunction is None:
            raise InvalidInputError("inside() needs a filter that is a conjunction of ranges and equalities")
        mask: np.ndarray | None = None
        for name, lo, hi in self._conjunction:
            if name not in raw:
                raise InvalidInputError(f"raw attribute column {name!r} is missing")
            values = np.asarray(raw[name]) if rows is None else np.asarray(raw[name])[rows]
            inside = (values >= lo) & (values <= hi)
            mask = inside if mask is None else np.logical_and(mask, inside, out=mask)
        assert mask is not None
        return mask


class _Compiler:
    """Compiles same-shaped predicates together: every table of the result holds (G, 256) states."""

    def __init__(self, quantizer: AttributeQuantizer) -> None:
        self.quantizer = quantizer
        self.integral = tuple(spec.type is not AttrType.FLOAT for spec in quantizer.schema.fields)

    def compile(self, predicates: Sequence[Predicate]) -> _Node:
        first = predicates[0]
        match first:
            case Compare(_, attribute, op, _):
                lo, hi = self.quantizer.cell_lo[attribute], self.quantizer.cell_hi[attribute]
                values = np.array([p.value for p in predicates if isinstance(p, Compare)])
                return _table(attribute, _compare_states(op, lo, hi, values))
            case In(_, attribute, _):
                return _table(attribute, np.stack([self._in_states(p) for p in predicates if isinstance(p, In)]))
            case Not():
                node = self.compile([p.child for p in predicates if isinstance(p, Not)])
                return _table(node.attribute, 2 - node.states) if isinstance(node, _Table) else _Negate(node)
            case And(children) | Or(children):
                parts = [[p.children[j] for p in predicates if isinstance(p, And | Or)] for j in range(len(children))]
                return _combine(isinstance(first, And), [self.compile(c) for c in parts])
        raise TypeError(f"not a predicate: {first!r}")

    def _in_states(self, leaf: In) -> np.ndarray:
        lo, hi = self.quantizer.cell_lo[leaf.attribute], self.quantizer.cell_hi[leaf.attribute]
        values = np.asarray(leaf.values)
        inside = np.searchsorted(values, hi, side="right") - np.searchsorted(values, lo, side="left")
        # An integer-valued cell holds only integers in [lo, hi]: it is FULL when the set covers them all.
        covered = (lo == hi) | (self.integral[leaf.attribute] & (inside == hi - lo + 1))
        states = np.full(_CODES, PARTIAL)
        states[: lo.size][inside == 0] = NONE
        states[: lo.size][(inside > 0) & covered] = FULL
        return states


def _rows(node: _Node, count: int) -> list[_Node]:
    """Split a tree compiled for ``count`` filters into one tree per filter (views of its tables)."""
    if isinstance(node, _Table):
        return [_Table(node.attribute, node.states[g], node.full[g], node.maybe[g]) for g in range(count)]
    if isinstance(node, _Negate):
        return [_Negate(child) for child in _rows(node.child, count)]
    children = [_rows(child, count) for child in node.children]
    return [_Combine(node.is_and, tuple(c[g] for c in children)) for g in range(count)]


def predicate_shape(predicate: Predicate) -> Hashable:
    """A predicate without its operands: predicates of one shape compile to trees of one shape."""
    # Dispatch on the exact type: this runs for every per-query filter, and class patterns cost 3x more.
    kind = type(predicate)
    if kind is Compare:
        return (predicate.attribute, predicate.op)
    if kind is In:
        return (predicate.attribute, "$in")
    if kind is Not:
        return ("$not", predicate_shape(predicate.child))
    if kind is And or kind is Or:
        return (kind is And, tuple(predicate_shape(c) for c in predicate.children))
    raise TypeError(f"not a predicate: {predicate!r}")


def compile_many(predicates: Sequence[Predicate], quantizer: AttributeQuantizer) -> list[CompiledFilter]:
    """A :class:`CompiledFilter` per predicate; same-shaped predicates compile together, one numpy call per
    leaf for the whole group (a batch of per-query filters costs about as much as one)."""
    out: list[CompiledFilter | None] = [None] * len(predicates)
    groups: dict[Hashable, list[int]] = {}
    for i, predicate in enumerate(predicates):
        groups.setdefault(predicate_shape(predicate), []).append(i)
    compiler = _Compiler(quantizer)
    for key, members in groups.items():
        roots = _rows(compiler.compile([predicates[i] for i in members]), len(members))
        shape = tree_shape(roots[0])
        for i, root in zip(members, roots, strict=True):
            out[i] = CompiledFilter(predicates[i], quantizer, root, key, shape)
    return [f for f in out if f is not None]


def _compare_states(op: Op, lo: np.ndarray, hi: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(G, 256) states of the cells [lo, hi] (ascending, disjoint) for ``value op v``, v in ``values`` (G,).

    Cells are ordered (lo[i] <= hi[i] < lo[i + 1]), so the FULL and NONE cells of a comparison are a prefix
    and a suffix found by binary search; the cell holding v, if any, is the only one an equality test can
    leave undecided.
    """
    n = lo.size
    codes = np.arange(_CODES)
    if op in (Op.EQ, Op.NE):
        cell = np.searchsorted(lo, values, side="right") - 1
        at = np.maximum(cell, 0)
        holds = (cell >= 0) & (hi[at] >= values)
        single = holds & (lo[at] == values) & (hi[at] == values)
        states = np.full((len(values), _CODES), PARTIAL)
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


def compile_filter(expr: Any, schema: AttributeSchema, quantizer: AttributeQuantizer) -> CompiledFilter | None:
    """Parse ``expr`` against ``schema`` and compile it for ``quantizer``; None when there is no filter."""
    return compile_exprs([expr], schema, quantizer)[0]


def compile_exprs(
    exprs: Sequence[Any], schema: AttributeSchema, quantizer: AttributeQuantizer
) -> list[CompiledFilter | None]:
    """:func:`compile_filter` of every expression, same-shaped ones compiled together (:func:`compile_many`)."""
    if quantizer.schema is not schema and quantizer.schema != schema:
        raise InvalidInputError("the attribute quantizer was fitted for a different schema than the filter's")
    texts = [canonical_filter(expr) for expr in exprs]  # only strict JSON passes, before any parsing
    predicates = [parse_filter(expr, schema) for expr in exprs]
    given = [i for i, predicate in enumerate(predicates) if predicate is not None]
    compiled = compile_many([p for p in predicates if p is not None], quantizer)
    out: list[CompiledFilter | None] = [None] * len(exprs)
    for i, f in zip(given, compiled, strict=True):
        f.group = texts[i]  # its group: equal text, same filter (a str, whose hash Python keeps)
        out[i] = f
    return out


def group_of(f: CompiledFilter | None) -> Hashable:
    """The group key of a query's filter (None: no filter): queries with equal keys share filter work."""
    return None if f is None else f.group


def _combine(is_and: bool, children: list[_Node]) -> _Node:
    # Lookups commute with min/max, so same-attribute tables merge into one table: one gather per attribute.
    merge = np.minimum if is_and else np.maximum
    tables: dict[int, np.ndarray] = {}
    others: list[_Node] = []
    flat: list[_Node] = []
    for child in children:
        same_kind = isinstance(child, _Combine) and child.is_and == is_and
        flat.extend(child.children if same_kind else (child,))
    for child in flat:
        if isinstance(child, _Table):
            known = tables.get(child.attribute)
            tables[child.attribute] = child.states if known is None else merge(known, child.states)
        else:
            others.append(child)
    merged = [_table(attribute, states) for attribute, states in tables.items()] + others
    return merged[0] if len(merged) == 1 else _Combine(is_and, tuple(merged))


def _states_at(node: _Node, codes: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """States of ``codes[rows]`` (all rows when None), reading only the attribute columns a node needs."""
    match node:
        case _Table(attribute, states):
            return states[codes[:, attribute] if rows is None else codes[rows, attribute]]
        case _Negate(child):
            return 2 - _states_at(child, codes, rows)
        case _Combine(is_and, children):
            merge = np.minimum if is_and else np.maximum
            result = _states_at(children[0], codes, rows)
            for child in children[1:]:
                merge(result, _states_at(child, codes, rows), out=result)
            return result
    raise TypeError(f"not a compiled node: {node!r}")


def _states(node: _Node, codes: np.ndarray) -> np.ndarray:
    return _states_at(node, codes, None)


def checked_histograms(histograms: np.ndarray, attributes: int) -> tuple[np.ndarray, np.ndarray]:
    """``histograms`` (P, A, 256) as int64 with the rows of each partition (P,), or InvalidInputError."""
    if histograms.ndim != 3 or histograms.shape[1:] != (attributes, _CODES) or histograms.dtype.kind not in "iu":
        raise InvalidInputError(f"code histograms must be an integer array of shape ({attributes}, {_CODES})")
    totals = histograms.sum(axis=2, dtype=np.int64)
    if (totals != totals[:, :1]).any():
        raise InvalidInputError("code histograms of one partition must all count the same number of rows")
    return histograms.astype(np.int64, copy=False), totals[:, 0] if attributes else totals.sum(axis=1)


def tree_shape(node: _Node) -> Hashable:
    """A compiled tree without its cell tables: trees of one shape are evaluated together."""
    match node:
        case _Table(attribute):
            return attribute
        case _Negate(child):
            return ("not", tree_shape(child))
        case _Combine(is_and, children):
            return (is_and, tuple(tree_shape(c) for c in children))
    raise TypeError(f"not a compiled node: {node!r}")


def _weights(nodes: Sequence[_Node], name: str) -> np.ndarray:
    """(G, 256) code weights ``name`` ("full" or "maybe") of same-attribute tables."""
    return np.stack([getattr(t, name) for t in nodes])


def _children(nodes: Sequence[_Node]) -> list[list[_Node]]:
    """The j-th children of same-shaped combine nodes, for every j."""
    combined = [t for t in nodes if isinstance(t, _Combine)]
    return [[t.children[j] for t in combined] for j in range(len(combined[0].children))]


def _bounds(nodes: Sequence[_Node], histograms: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(certain, possible), each (G, P), of same-shaped trees ``nodes`` over ``histograms`` (P, A, 256), n (P,)."""
    first = nodes[0]
    if isinstance(first, _Table):
        counts = histograms[:, first.attribute].T
        return _weights(nodes, "full") @ counts, _weights(nodes, "maybe") @ counts
    if isinstance(first, _Negate):
        certain, possible = _bounds([t.child for t in nodes if isinstance(t, _Negate)], histograms, n)
        return n - possible, n - certain
    certain, possible = zip(*(_bounds(c, histograms, n) for c in _children(nodes)), strict=True)
    if isinstance(first, _Combine) and first.is_and:
        return np.maximum(0, sum(certain) - (len(certain) - 1) * n), np.minimum.reduce(possible)
    return np.maximum.reduce(certain), np.minimum(n, sum(possible))


def _full_max(nodes: Sequence[_Node], histograms: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(G, P) upper bounds on the rows whose codes alone prove a match."""
    first = nodes[0]
    if isinstance(first, _Table):
        return _weights(nodes, "full") @ histograms[:, first.attribute].T
    if isinstance(first, _Combine):
        ceilings = [_full_max(c, histograms, n) for c in _children(nodes)]
        return np.minimum.reduce(ceilings) if first.is_and else np.minimum(n, sum(ceilings))
    return np.broadcast_to(n, (len(nodes), len(n)))


def _share(nodes: Sequence[_Node], histograms: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(G, P) expected matching fractions, attributes independent and PARTIAL cells half matching."""
    first = nodes[0]
    if isinstance(first, _Table):
        # FULL rows count whole, PARTIAL rows half: (full + maybe) / 2 weighs them so.
        both = _weights(nodes, "full") + _weights(nodes, "maybe")
        return 0.5 * (both @ histograms[:, first.attribute].T) / np.maximum(n, 1)
    if isinstance(first, _Negate):
        return 1.0 - _share([t.child for t in nodes if isinstance(t, _Negate)], histograms, n)
    shares = [_share(c, histograms, n) for c in _children(nodes)]
    if isinstance(first, _Combine) and first.is_and:
        return np.multiply.reduce(shares)
    return 1.0 - np.multiply.reduce([1.0 - x for x in shares])


def estimates(nodes: Sequence[_Node], histograms: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(G, P) expected matching rows, within the (certain, possible) bounds so exact where they meet."""
    certain, possible = _bounds(nodes, histograms, n)
    return np.minimum(np.maximum(_share(nodes, histograms, n) * n, certain), possible)


def _exact(predicate: Predicate, column: Any) -> np.ndarray:
    match predicate:
        case Compare(_, attribute, op, value):
            return _COMPARE[op](column(attribute), value)
        case In(_, attribute, values):
            return np.isin(column(attribute), values)
        case Not(child):
            return ~_exact(child, column)
        case And(children):
            return reduce(np.logical_and, (_exact(c, column) for c in children))
        case Or(children):
            return reduce(np.logical_or, (_exact(c, column) for c in children))
    raise TypeError(f"not a predicate: {predicate!r}")
