"""Posting lists of one attribute: rows sorted by raw value, so each code's rows are a contiguous run.

A filter's driver codes select runs of rows (every row that may match). Because values ascend, the interval
a filter's conjuncts allow on the attribute (:mod:`squash.filter.interval`) trims the runs of its boundary
cells by one binary search: a range narrower than a cell reads only the rows inside it, not the whole cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError
from squash.filter import CompiledFilter


def concat_ranges(starts: NDArray[np.int64], stops: NDArray[np.int64]) -> NDArray[np.int64]:
    """Concatenation of ``arange(starts[i], stops[i])`` for every i, without a Python loop."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


def sorted_pairs(
    owner: NDArray[np.int64], rows: NDArray[np.int64], size: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(owner, row) pairs, rows < ``size``, sorted by owner, then row."""
    key = np.sort(owner * max(size, 1) + rows)
    return key // max(size, 1), key % max(size, 1)


def gather_runs(
    order: Callable[[int], NDArray[np.int32]],
    attribute: NDArray[np.int64],
    owner: NDArray[np.int64],
    starts: NDArray[np.int64],
    stops: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(owner, row) of every row in the runs [starts[i], stops[i]) of ``order(attribute[i])``, the postings'
    row order of attribute[i], each run labelled ``owner[i]``; grouped by attribute, rows in postings order."""
    owners, rows = [], []
    for a in np.unique(attribute).tolist():
        at = attribute == a
        rows.append(order(a)[concat_ranges(starts[at], stops[at])])
        owners.append(np.repeat(owner[at], stops[at] - starts[at]))
    return np.concatenate(owners), np.concatenate(rows).astype(np.int64)


@dataclass(frozen=True)
class DriverBounds:
    """Per filter, the closed interval (:meth:`~squash.filter.interval.Interval.closed`) its conjuncts allow on
    its driver attribute, as arrays (F,)."""

    lo: NDArray[np.float64]
    hi: NDArray[np.float64]

    @classmethod
    def of(cls, filters: Sequence[CompiledFilter], attribute: NDArray[np.int64]) -> DriverBounds:
        """Bounds of ``filters[i]`` on attribute ``attribute[i]`` (-1: none, every value allowed)."""
        lo, hi = np.full(len(filters), -np.inf), np.full(len(filters), np.inf)
        for i, (compiled, a) in enumerate(zip(filters, attribute.tolist(), strict=True)):
            interval = compiled.intervals.intervals.get(a)
            if interval is not None:
                lo[i], hi[i] = interval.closed()
        return cls(lo, hi)


@dataclass(frozen=True)
class Postings:
    """One attribute's rows sorted by raw value (hence by code): ``order``, their values ``values`` (ascending,
    float64, which holds every stored value exactly), and ``offsets`` (257,), where each code's run starts."""

    order: NDArray[np.int32]
    offsets: NDArray[np.int64]
    values: NDArray[np.float64]

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
        # float64 values: binary searches with float bounds would otherwise cast an int column on every call.
        return cls(order, np.concatenate(([0], np.cumsum(histogram))), values[order].astype(np.float64))

    @property
    def nbytes(self) -> int:
        return int(self.order.nbytes + self.offsets.nbytes + self.values.nbytes)

    def runs(
        self, codes: NDArray[np.int64], bounds: DriverBounds, at: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(starts, stops) into ``order``: the rows of code ``codes[i]`` whose value lies in the interval of
        filter ``at[i]`` of ``bounds``. One binary search per filter and bound, not per code."""
        first = np.searchsorted(self.values, bounds.lo, side="left")
        last = np.searchsorted(self.values, bounds.hi, side="right")
        run_start, run_stop = self.offsets[codes], self.offsets[codes + 1]
        starts = np.clip(first[at], run_start, run_stop)
        return starts, np.clip(last[at], starts, run_stop)
