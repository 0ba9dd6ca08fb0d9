"""Compiled filters: a predicate with its cell state tables (:mod:`squash.filter.cells`), evaluated
conservatively on attribute codes and exactly on raw values (design 3.3).

Because every encoded value lies in its cell's interval, FULL rows match and NONE rows do not; only PARTIAL
rows need the exact check, so :meth:`CompiledFilter.matches` equals :meth:`CompiledFilter.exact`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from functools import cached_property, reduce
from typing import Any

import numpy as np

from squash.attributes import AttributeQuantizer, AttributeSchema
from squash.errors import InvalidInputError
from squash.filter.cells import FULL, PARTIAL, CellCompiler, Node, split_rows, states_at, tree_shape
from squash.filter.interval import Conjuncts, conjunct_intervals
from squash.filter.parse import And, Compare, In, Not, Op, Or, Predicate, canonical_filter, parse_filter

COMPARE = {
    Op.EQ: np.equal,
    Op.NE: np.not_equal,
    Op.GT: np.greater,
    Op.GTE: np.greater_equal,
    Op.LT: np.less,
    Op.LTE: np.less_equal,
}


class CompiledFilter:
    """A predicate with its per-cell state tables, built once per (predicate, quantizer)."""

    def __init__(
        self,
        predicate: Predicate,
        quantizer: AttributeQuantizer,
        root: Node | None = None,
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
        self._root = split_rows(CellCompiler(quantizer).compile([predicate]), 1)[0] if root is None else root
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
        return states_at(self._root, codes, None)

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
        states = states_at(self._root, codes, rows)
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
    compiler = CellCompiler(quantizer)
    for key, members in groups.items():
        roots = split_rows(compiler.compile([predicates[i] for i in members]), len(members))
        shape = tree_shape(roots[0])
        for i, root in zip(members, roots, strict=True):
            out[i] = CompiledFilter(predicates[i], quantizer, root, key, shape)
    return [f for f in out if f is not None]


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


def _exact(predicate: Predicate, column: Any) -> np.ndarray:
    match predicate:
        case Compare(_, attribute, op, value):
            return COMPARE[op](column(attribute), value)
        case In(_, attribute, values):
            return np.isin(column(attribute), values)
        case Not(child):
            return ~_exact(child, column)
        case And(children):
            return reduce(np.logical_and, (_exact(c, column) for c in children))
        case Or(children):
            return reduce(np.logical_or, (_exact(c, column) for c in children))
    raise TypeError(f"not a predicate: {predicate!r}")
