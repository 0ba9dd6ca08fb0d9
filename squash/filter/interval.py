"""Value intervals a filter's top-level conjuncts allow per attribute: bounds for sorted-value lookups.

``{"price": {"$gte": 10, "$lt": 20}, "label": 3}`` allows price in [10, 20) and label in [3, 3]; rows
outside either interval cannot match, so a lookup in rows sorted by price reads only [10, 20). When the
whole filter is one such interval, the rows inside it are exactly the matches and need no check; when it is
a conjunction of intervals (as this example), the rows read need only their other values compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from squash.filter.parse import And, Compare, Op, Predicate


@dataclass(frozen=True)
class Interval:
    """Values v with lo <= v <= hi; an open end excludes the bound itself."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def closed(self) -> tuple[float, float]:
        """(lo, hi) with lo <= v <= hi exactly when v lies in this interval, for every float64 v.

        An open end moves to the next float64 inside, so tests and binary searches need no open/closed cases
        (operands are finite, so nothing moves to an infinity that a value could equal).
        """
        lo = math.nextafter(self.lo, math.inf) if self.lo_open else self.lo
        hi = math.nextafter(self.hi, -math.inf) if self.hi_open else self.hi
        return lo, hi

    def meet(self, other: Interval) -> Interval:
        """The intersection of two intervals."""
        lo, lo_open = max((self.lo, self.lo_open), (other.lo, other.lo_open))
        hi, hi_open = min((self.hi, not self.hi_open), (other.hi, not other.hi_open))
        return Interval(lo, hi, lo_open, not hi_open)


EVERYTHING = Interval()

_BOUND = {
    Op.EQ: lambda v: Interval(v, v),
    Op.GT: lambda v: Interval(lo=v, lo_open=True),
    Op.GTE: lambda v: Interval(lo=v),
    Op.LT: lambda v: Interval(hi=v, hi_open=True),
    Op.LTE: lambda v: Interval(hi=v),
}


def _conjuncts(predicate: Predicate) -> list[Predicate]:
    if isinstance(predicate, And):
        return [leaf for child in predicate.children for leaf in _conjuncts(child)]
    return [predicate]


class Conjuncts(NamedTuple):
    """What a predicate's top-level conjuncts say per attribute.

    ``intervals``: per attribute, the interval its range and equality conjuncts allow (a superset of the
    matches). ``pure``: the predicate is exactly the conjunction of those intervals (no other parts), so a
    row matches iff each of its values lies in its attribute's interval.
    """

    intervals: dict[int, Interval]
    pure: bool


def conjunct_intervals(predicate: Predicate) -> Conjuncts:
    """The :class:`Conjuncts` of ``predicate``."""
    intervals: dict[int, Interval] = {}
    pure = True
    for leaf in _conjuncts(predicate):
        if isinstance(leaf, Compare) and leaf.op in _BOUND:
            bound = _BOUND[leaf.op](leaf.value)
            known = intervals.get(leaf.attribute)
            intervals[leaf.attribute] = bound if known is None else known.meet(bound)
        else:
            pure = False
    return Conjuncts(intervals, pure)
