"""A partition made ready for searching: derived lookup structures built once per warm load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from squash.filter import CompiledFilter
from squash.filter.batch import drivers_many, matches_many
from squash.model import PartitionData
from squash.search.conjunctions import conjunction_matches
from squash.search.postings import DriverBounds, Postings, concat_ranges, gather_runs, sorted_pairs

_CODES = 256
_BLOCK_ROWS = 16_384
# Above this fraction of the partition, a full pass over the codes beats gathering posting lists.
_INDEX_LOOKUP_LIMIT = 0.25
# Posting-list lookups of up to _BATCHED_LOOKUP rows are checked together, up to _LOOKUP_BATCH_ROWS rows
# at a time, so many small lookups share each numpy call while a batch's arrays stay in cache. Larger
# lookups are checked one by one: their per-filter cost dwarfs the calls, and one filter's arrays stay in
# cache (1M x 128, 0.1% conjunctions with ~18k-row lookups: 1,188 us per query vs 1,523 all batched).
_BATCHED_LOOKUP = 4096
_LOOKUP_BATCH_ROWS = 1 << 16


@dataclass
class PreparedPartition:
    """PartitionData plus what a warm container derives from it once, at load.

    - ``list_norms``: squared norms of the fine-list centroids, for ranking lists per query;
    - ``max_norm``, the largest norm of a raw vector, for the rounding margins of float32 screens;
    - ``lead_norms``, each decoded row's squared norm over the leading dimensions list scans rank by
      (``data.lead``, chosen at build: `squash.osq.lead`), and ``lead``, their count (0: every dimension);
    - code histograms, and per-attribute posting lists (rows sorted by value: 12 ms and 12 bytes per row
      at 100k rows), so a selective filter costs O(matches) instead of a pass over every row
      (low-selectivity and anti-correlated queries).
    """

    data: PartitionData
    histograms: NDArray[np.int64] = field(init=False)
    list_norms: NDArray[np.float32] = field(init=False)
    max_norm: float = field(init=False)
    lead: int = field(init=False)
    lead_norms: NDArray[np.float32] = field(init=False)
    _postings: list[Postings] = field(init=False)

    def __post_init__(self) -> None:
        codes = self.data.attr_codes
        self.histograms = (
            np.stack([np.bincount(codes[:, a], minlength=_CODES) for a in range(codes.shape[1])])
            if codes.shape[1]
            else np.zeros((0, _CODES), dtype=np.int64)
        )
        self.max_norm = float(np.sqrt(self.data.vector_norms.astype(np.float64).max(initial=0.0)))
        self.lead, self.lead_norms = self.data.lead, _lead_norms(self.data)
        centroids = self.data.list_centroids
        self.list_norms = np.einsum("ij,ij->i", centroids, centroids)
        # Built at load, not on a filter's first use: the first filtered search after a load costs what a
        # warm one does.
        self._postings = [
            Postings.build(codes[:, a], np.asarray(self.data.attr_raw[name]), self.histograms[a])
            for a, name in enumerate(self.data.attr_raw)
        ]

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def nbytes(self) -> int:
        """Memory held: the partition's arrays plus what was derived from them (what a warm cache pays)."""
        postings = sum(p.nbytes for p in self._postings)
        derived = self.list_norms.nbytes + self.histograms.nbytes + self.lead_norms.nbytes
        return self.data.nbytes + postings + int(derived)

    def postings(self, attribute: int) -> Postings:
        """Posting lists of attribute ``attribute`` (rows sorted by value)."""
        return self._postings[attribute]

    def candidates_many(self, filters: Sequence[CompiledFilter]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Rows satisfying each filter exactly, for many filters at once: (owner, rows).

        ``rows[j]`` satisfies ``filters[owner[j]]``; owners ascend and each filter's rows ascend. Conjunctions
        of intervals are read from sorted posting lists (:mod:`squash.search.conjunctions`); other filters
        are narrowed through their code-level tree (:meth:`_tree_candidates`).
        """
        simple = np.array([compiled.is_conjunction for compiled in filters], dtype=bool)
        owners, found = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
        for chosen, answer in (
            (np.flatnonzero(simple), self._conjunction_candidates),
            (np.flatnonzero(~simple), self._tree_candidates),
        ):
            if len(chosen):
                owner, rows = answer([filters[i] for i in chosen])
                owners.append(chosen[owner])
                found.append(rows)
        owner, rows = np.concatenate(owners), np.concatenate(found)
        # Each filter's rows already ascend in one block: a stable sort by owner orders the blocks.
        order = np.argsort(owner, kind="stable")
        return owner[order], rows[order]

    def _conjunction_candidates(self, filters: Sequence[CompiledFilter]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """:meth:`candidates_many` for conjunctions of intervals, from every bounded attribute's postings."""
        return conjunction_matches(
            filters,
            self.postings,
            self.data.attr_raw,
            self.size,
            batched_lookup=_BATCHED_LOOKUP,
            batch_rows=_LOOKUP_BATCH_ROWS,
        )

    def _tree_candidates(self, filters: Sequence[CompiledFilter]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """:meth:`candidates_many` for any filters, through their code-level trees; each filter's rows are one
        ascending block, the blocks in any order.

        A filter whose driver attribute holds at most a quarter of the partition reads that attribute's posting
        lists (O(matches)), trimmed to the interval its conjuncts allow there, and checks the rows read. Small
        lookups of all filters are gathered and checked in batches (:func:`squash.filter.batch.matches_many`),
        large ones filter by filter. Other filters take a full pass over the codes.
        """
        data = self.data
        attribute, possible, pair_filter, pair_code = drivers_many(filters, self.histograms)
        lookup = (attribute >= 0) & (possible <= _INDEX_LOOKUP_LIMIT * self.size)
        batched = lookup & (possible <= _BATCHED_LOOKUP)
        bounds = DriverBounds.of(filters, np.where(lookup, attribute, -1))
        # The runs of every lookup at once: per driver attribute, one binary search per filter and bound.
        kept = np.flatnonzero(lookup[pair_filter])
        pair_filter, pair_code = pair_filter[kept], pair_code[kept]
        starts, stops = self._runs(filters, attribute, bounds, pair_filter, pair_code)
        pair_at = np.searchsorted(pair_filter, np.arange(len(filters) + 1)).tolist()
        owners: list[NDArray[np.int64]] = []
        found: list[NDArray[np.int64]] = []
        for i in np.flatnonzero(~batched).tolist():
            compiled = filters[i]
            if lookup[i]:
                pairs = slice(pair_at[i], pair_at[i + 1])
                order = self._postings[int(attribute[i])].order
                rows = order[concat_ranges(starts[pairs], stops[pairs])].astype(np.int64)
                rows = rows[compiled.matches(data.attr_codes, data.attr_raw, rows=rows)]
                rows = np.sort(rows)
            else:
                rows = np.flatnonzero(compiled.matches(data.attr_codes, data.attr_raw))
            owners.append(np.full(len(rows), i, dtype=np.int64))
            found.append(rows)
        # Batched lookups in chunks of about _LOOKUP_BATCH_ROWS gathered rows, filters in order.
        small = np.flatnonzero(batched)
        chunk = np.cumsum(possible[small]) // _LOOKUP_BATCH_ROWS
        for members in np.split(small, np.flatnonzero(np.diff(chunk)) + 1) if len(small) else ():
            in_chunk = np.zeros(len(filters), dtype=bool)
            in_chunk[members] = True
            pairs = np.flatnonzero(in_chunk[pair_filter])
            if not len(pairs):
                continue  # no driver code of these filters occurs here: nothing can match
            owner, rows = self._gather(attribute, pair_filter[pairs], starts[pairs], stops[pairs])
            keep = matches_many(filters, data.attr_codes, data.attr_raw, owner, rows)
            owner, rows = owner[keep], rows[keep]
            owner, rows = sorted_pairs(owner, rows, self.size)
            owners.append(owner)
            found.append(rows)
        if not found:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.concatenate(owners), np.concatenate(found)

    def _runs(
        self,
        filters: Sequence[CompiledFilter],
        attribute: NDArray[np.int64],
        bounds: DriverBounds,
        pair_filter: NDArray[np.int64],
        pair_code: NDArray[np.int64],
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(starts, stops) into the driver postings' order of every (filter, code) pair: the rows of the code
        whose value lies in the filter's interval on its driver attribute."""
        starts = np.zeros(len(pair_filter), dtype=np.int64)
        stops = np.zeros(len(pair_filter), dtype=np.int64)
        pair_attribute = attribute[pair_filter]
        for a in np.unique(pair_attribute).tolist():
            at = pair_attribute == a
            starts[at], stops[at] = self.postings(a).runs(pair_code[at], bounds, pair_filter[at])
        return starts, stops

    def _gather(
        self,
        attribute: NDArray[np.int64],
        pair_filter: NDArray[np.int64],
        starts: NDArray[np.int64],
        stops: NDArray[np.int64],
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(owner, row) of every row in the runs [starts, stops) of the pairs' driver postings (built by
        :meth:`_runs`), grouped by owner in ascending order; rows are in postings order (sort what survives)."""
        pair_attribute = attribute[pair_filter]
        owner, row = gather_runs(lambda a: self._postings[a].order, pair_attribute, pair_filter, starts, stops)
        if (pair_attribute != pair_attribute[0]).any():  # several drivers: regroup by owner
            by_owner = np.argsort(owner, kind="stable")
            owner, row = owner[by_owner], row[by_owner]
        return owner, row


def _lead_norms(data: PartitionData) -> NDArray[np.float32]:
    """Each decoded row's squared norm over the partition's leading dimensions (none when ``lead`` is 0)."""
    if not data.lead:
        return np.zeros(0, dtype=np.float32)
    scalar, lead = data.scalar, data.lead
    lo, step = scalar.lo[:lead].astype(np.float64), scalar.step[:lead].astype(np.float64)
    norms = np.empty(data.size, dtype=np.float32)
    for start in range(0, data.size, _BLOCK_ROWS):
        decoded = lo + step * scalar.codes[start : start + _BLOCK_ROWS, :lead]
        norms[start : start + len(decoded)] = (decoded**2).sum(axis=1)
    return norms
