"""Evaluation of many filters at once, each on its own rows: a few numpy calls per leaf and shape.

Per-query filters in a batch usually share a shape: the same fields and operators with different
operands (a price slider, a date window). Filters of one shape are evaluated together: their cell
tables are stacked, so the code-level states of every row come from one lookup per table, and on the
PARTIAL rows each comparison's operand becomes a per-row array (every filter's operand repeated over
its rows). A batch costs a few numpy calls per leaf instead of a round of calls per query. Filters
with ``$in``/``$nin`` sets are evaluated one by one (their operand sets differ in size).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from functools import reduce
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.filter.cells import CODES, FULL, PARTIAL, Combine, Negate, Node, Table
from squash.filter.counts import bounds, checked_histograms, estimates, full_max, weights
from squash.filter.evaluate import COMPARE, CompiledFilter
from squash.filter.parse import And, Compare, Not, Or, Predicate


def _holds_sets(key: Hashable) -> bool:
    """Whether a predicate shape (:func:`predicate_shape`) has a ``$in``/``$nin`` leaf."""
    return key == "$in" or (isinstance(key, tuple) and any(_holds_sets(part) for part in key))


def _operands(predicate: Predicate) -> list[float]:
    """Comparison operands in the order :func:`_evaluate` reads them."""
    match predicate:
        case Compare(value=value):
            return [value]
        case Not(child):
            return _operands(child)
        case And(children) | Or(children):
            return [v for c in children for v in _operands(c)]
    raise TypeError(f"not a batchable predicate: {predicate!r}")


def _evaluate(predicate: Predicate, column: Any, operands: Iterator[NDArray[np.float64]]) -> NDArray[np.bool_]:
    match predicate:
        case Compare(_, attribute, op, _):
            return COMPARE[op](column(attribute), next(operands))
        case Not(child):
            return ~_evaluate(child, column, operands)
        case And(children):
            return reduce(np.logical_and, [_evaluate(c, column, operands) for c in children])
        case Or(children):
            return reduce(np.logical_or, [_evaluate(c, column, operands) for c in children])
    raise TypeError(f"not a batchable predicate: {predicate!r}")


class _Columns:
    """Raw attribute columns at given rows, each gathered once."""

    def __init__(self, raw: Mapping[str, NDArray[Any]], names: Sequence[str], rows: NDArray[np.int64]) -> None:
        self.raw, self.names, self.rows = raw, names, rows
        self.cache: dict[int, NDArray[Any]] = {}

    def __call__(self, attribute: int) -> NDArray[Any]:
        if attribute not in self.cache:
            self.cache[attribute] = np.asarray(self.raw[self.names[attribute]])[self.rows]
        return self.cache[attribute]


def _states_many(
    nodes: Sequence[Node], base: NDArray[np.int64], codes: NDArray[np.uint8], rows: NDArray[np.int64]
) -> NDArray[np.uint8]:
    """States of ``rows`` under same-shaped trees ``nodes``; row j reads the tree at ``base[j] / 256``."""
    first = nodes[0]
    if isinstance(first, Table):
        stacked = np.stack([n.states for n in nodes if isinstance(n, Table)]).reshape(-1)
        return stacked[base + codes[rows, first.attribute]]
    if isinstance(first, Negate):
        return 2 - _states_many([n.child for n in nodes if isinstance(n, Negate)], base, codes, rows)
    combined = [n for n in nodes if isinstance(n, Combine)]
    parts = [_states_many([n.children[j] for n in combined], base, codes, rows) for j in range(len(first.children))]
    return reduce(np.minimum if first.is_and else np.maximum, parts)


def matches_many(
    filters: Sequence[CompiledFilter],
    codes: NDArray[np.uint8],
    raw: Mapping[str, NDArray[Any]],
    owner: NDArray[np.int64],
    rows: NDArray[np.int64],
) -> NDArray[np.bool_]:
    """Whether ``rows[j]`` satisfies ``filters[owner[j]]``: :meth:`CompiledFilter.matches` for many filters.

    ``owner`` must be non-decreasing (each filter's rows side by side). Codes decide FULL and NONE rows;
    raw values are read only for PARTIAL ones.
    """
    out = np.zeros(len(rows), dtype=bool)
    bounds = np.searchsorted(owner, np.arange(len(filters) + 1)).tolist()
    groups: dict[Hashable, list[int]] = {}
    for i, compiled in enumerate(filters):
        if bounds[i] < bounds[i + 1]:
            groups.setdefault(compiled.key, []).append(i)
    for key, members in groups.items():
        if _holds_sets(key):
            for i in members:
                out[bounds[i] : bounds[i + 1]] = filters[i].matches(codes, raw, rows=rows[bounds[i] : bounds[i + 1]])
            continue
        counts = [bounds[i + 1] - bounds[i] for i in members]
        if len(members) == len(filters):
            where: slice | NDArray[np.int64] = slice(None)
        else:
            where = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in members])
        sub = rows[where]
        slot = np.repeat(np.arange(len(members)), counts)
        states = _states_many([filters[i]._root for i in members], slot * CODES, codes, sub)
        result = states == FULL
        partial = np.flatnonzero(states == PARTIAL)
        if partial.size:
            # One operand column per comparison, gathered per PARTIAL row as the evaluation reaches it.
            operands = np.array([_operands(filters[i].predicate) for i in members], dtype=np.float64).T
            at = slot[partial]
            names = filters[members[0]].quantizer.schema.names
            columns = _Columns(raw, names, sub[partial])
            result[partial] = _evaluate(filters[members[0]].predicate, columns, (column[at] for column in operands))
        out[where] = result
    return out


def _by_shape(filters: Sequence[CompiledFilter]) -> list[list[int]]:
    groups: dict[Hashable, list[int]] = {}
    for i, compiled in enumerate(filters):
        groups.setdefault(compiled.shape, []).append(i)
    return list(groups.values())


def partition_bounds_many(
    filters: Sequence[CompiledFilter], histograms: NDArray[np.integer]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Bounds on every filter's matching rows in every partition from code histograms (P, A, 256).

    Returns ``(certain, possible, ceiling)``, each (F, P): ``certain <= matching rows <= possible``, and
    ``ceiling`` bounds the rows whose codes alone prove a match (FULL; where it equals ``certain``,
    counting FULL rows from codes cannot find more). A predicate on one attribute gets exact FULL and
    non-NONE counts; combinations use Frechet bounds (AND: certain ``sum - (k-1) n``, possible min; OR:
    certain max, possible sum capped at n). Same-shaped filters are counted together.
    """
    shape = (len(filters), histograms.shape[0])
    certain, possible, ceiling = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    if not filters:
        return certain, possible, ceiling
    checked, n = checked_histograms(histograms, len(filters[0].quantizer.schema))
    for members in _by_shape(filters):
        nodes = [filters[i]._root for i in members]
        certain[members], possible[members] = bounds(nodes, checked, n)
        ceiling[members] = full_max(nodes, checked, n)
    return certain, possible, ceiling


def estimates_many(filters: Sequence[CompiledFilter], histograms: NDArray[np.integer]) -> NDArray[np.float64]:
    """Expected matching rows of every filter in one partition from its ``histograms`` (A, 256), for planning.

    Assumes attributes independent and PARTIAL cells half matching, clipped to the bounds of
    :func:`partition_bounds_many`, so it is exact whenever they meet.
    """
    out = np.zeros(len(filters))
    if not filters:
        return out
    checked, n = checked_histograms(np.asarray(histograms)[None], len(filters[0].quantizer.schema))
    for members in _by_shape(filters):
        out[members] = estimates([filters[i]._root for i in members], checked, n)[:, 0]
    return out


def drivers_many(
    filters: Sequence[CompiledFilter], histograms: NDArray[np.integer]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Each filter's driver in one partition: an attribute whose non-NONE codes hold every matching row,
    for posting-list lookups.

    Among the conjuncts of a filter's root that read one attribute, the one with the fewest possible rows
    in ``histograms`` (A, 256) drives; a root that is an OR or a NOT over several attributes has none.
    Returns ``(attribute, possible, pair_filter, pair_code)``: each filter's driver attribute (-1 without
    one) and its possible rows there, and every (filter, code) pair of a driver code present in the
    partition, by filter then code.
    """
    f = len(filters)
    attribute = np.full(f, -1, dtype=np.int64)
    possible = np.zeros(f, dtype=np.int64)
    pair_filter: list[NDArray[np.int64]] = []
    pair_code: list[NDArray[np.int64]] = []
    present = histograms > 0
    for members in _by_shape(filters):
        roots = [filters[i]._root for i in members]
        first = roots[0]
        if isinstance(first, Table):
            positions, tables = [0], [roots]
        elif isinstance(first, Combine) and first.is_and:
            positions = [j for j, c in enumerate(first.children) if isinstance(c, Table)]
            tables = [[r.children[j] for r in roots if isinstance(r, Combine)] for j in positions]
        else:
            continue
        if not positions:
            continue
        maybe = [weights(column, "maybe") for column in tables]
        counts = np.stack([m @ histograms[column[0].attribute] for m, column in zip(maybe, tables, strict=True)])
        best = counts.argmin(axis=0)  # the first conjunct with the fewest possible rows, as min() picks
        group = np.asarray(members)
        for j, (weight, column) in enumerate(zip(maybe, tables, strict=True)):
            chosen = np.flatnonzero(best == j)
            if not len(chosen):
                continue
            a = column[0].attribute
            attribute[group[chosen]] = a
            possible[group[chosen]] = counts[j, chosen]
            g, code = np.nonzero(weight[chosen].astype(bool) & present[a])
            pair_filter.append(group[chosen][g])
            pair_code.append(code)
    if not pair_filter:
        return attribute, possible, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    pf, pc = np.concatenate(pair_filter), np.concatenate(pair_code)
    order = np.lexsort((pc, pf))
    return attribute, possible, pf[order], pc[order]
