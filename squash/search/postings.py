"""Posting lists of one attribute: rows sorted by raw value, so each code's rows are a contiguous run.

A filter's driver codes select runs of rows (every row that may match). Because values ascend, the interval
a filter's conjuncts allow on the attribute (:mod:`squash.filter.interval`) trims the runs of its boundary
cells by one binary search: a range narrower than a cell reads only the rows inside it, not the whole cell,
and when the filter is that interval alone the trimmed runs are exactly its matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError
from squash.filter import CompiledFilter
from squash.filter.interval import EVERYTHING


def concat_ranges(starts: NDArray[np.int64], stops: NDArray[np.int64]) -> NDArray[np.int64]:
    """Concatenation of ``arange(starts[i], stops[i])`` for every i, without a Python loop."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


@dataclass(frozen=True)
class DriverBounds:
    """Per filter, the interval its conjuncts allow on its driver attribute, as arrays (F,), and whether
    the filter is exactly that interval (its rows inside need no check)."""

    lo: NDArray[np.float64]
    hi: NDArray[np.float64]
    lo_open: NDArray[np.bool_]
    hi_closed: NDArray[np.bool_]
    exact: NDArray[np.bool_]

    @classmethod
    def of(cls, filters: Sequence[CompiledFilter], attribute: NDArray[np.int64]) -> DriverBounds:
        """Bounds of ``filters[i]`` on attribute ``attribute[i]`` (-1: none, every value allowed)."""
        allowed, exact = [], []
        for compiled, a in zip(filters, attribute.tolist(), strict=True):
            intervals, only = compiled.intervals
            allowed.append(intervals.get(a, EVERYTHING))
            exact.append(only == a and a >= 0)
        return cls(
            np.array([i.lo for i in allowed], dtype=np.float64),
            np.array([i.hi for i in allowed], dtype=np.float64),
            np.array([i.lo_open for i in allowed], dtype=bool),
            np.array([not i.hi_open for i in allowed], dtype=bool),
            np.array(exact, dtype=bool),
        )


@dataclass(frozen=True)
class Postings:
    """One attribute's rows sorted by raw value (hence by code): ``order``, their values ``values`` (ascending),
    and ``offsets`` (257,), where each code's run starts."""

    order: NDArray[np.int32]
    offsets: NDArray[np.int64]
    values: NDArray[Any]

    @classmethod
    def build(cls, codes: NDArray[np.uint8], values: NDArray[Any], histogram: NDArray[np.int64]) -> Postings:
        """Postings of one attribute from its code column, raw column and code histogram (256,).

        Raises CorruptObjectError when the codes do not ascend with the values (every value lies in its
        code's cell and cells are ordered, so they must): the partition's attributes are inconsistent.
        """
        order = np.argsort(values, kind="stable").astype(np.int32)
        if (np.diff(codes[order].astype(np.int16)) < 0).any():
            raise CorruptObjectError(
                "a partition's attribute codes disagree with its raw attribute values; rebuild the index"
            )
        return cls(order, np.concatenate(([0], np.cumsum(histogram))), values[order])

    @property
    def nbytes(self) -> int:
        return int(self.order.nbytes + self.offsets.nbytes + self.values.nbytes)

    def runs(
        self, codes: NDArray[np.int64], bounds: DriverBounds, at: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(starts, stops) into ``order``: the rows of code ``codes[i]`` whose value lies in the interval of
        filter ``at[i]`` of ``bounds``. One binary search per filter and bound, not per code."""
        first = np.where(
            bounds.lo_open,
            np.searchsorted(self.values, bounds.lo, side="right"),
            np.searchsorted(self.values, bounds.lo, side="left"),
        )
        last = np.where(
            bounds.hi_closed,
            np.searchsorted(self.values, bounds.hi, side="right"),
            np.searchsorted(self.values, bounds.hi, side="left"),
        )
        run_start, run_stop = self.offsets[codes], self.offsets[codes + 1]
        starts = np.clip(first[at], run_start, run_stop)
        return starts, np.clip(last[at], starts, run_stop)
