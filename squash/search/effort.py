"""How much a query searches: an effort ladder, the calibration that places each kind of query on it.

Effort is one number, a rung of a ladder on which every knob that trades speed for recall grows together:
the fine lists probed and the matching rows a filtered list scan gathers by sqrt(2) per rung, the rows
re-ranked exactly by the fourth root of 2. Past the top rung is the exact search (every partition that may
match, every match ranked exactly), which is also the cheapest way to answer when the data has no structure to exploit.

The build measures, on queries drawn from the data itself, the recall@k of each rung for unfiltered
queries and for filters of about 10%, 1% and 0.1% selectivity (`squash.calibration`), and stores the
table in the manifest. A search then takes, for each query's kind, the cheapest rung whose measured
recall meets its recall target (the build's ``target_recall`` unless the query passes ``recall_target``)
and reports that recall as its estimate: a calibrated expectation over the data's own query distribution,
not a per-query guarantee. Passing any effort knob (``probe``, ``exact``, ...) bypasses the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError
from squash.filter import CompiledFilter
from squash.filter.batch import estimates_many
from squash.model import IndexMeta
from squash.search.params import SearchParams

# Rung 0 and the growth per rung. Rung 8 is probe 128, 80 rows re-ranked, 2,400 matches gathered. The
# re-rank depth grows at half the rate (the fourth root of 2 per rung): candidates are ranked from codes over
# every dimension, so more lists find more of the neighbours, while the depth only corrects the estimate's
# order near the k-th (debian-packages-e5small-384, 128 lists, probe 32: recall@10 0.932 at a depth of 30 and of 400).
_BASE_PROBE = 8
_BASE_DEPTH = 20
_BASE_MATCHES = 150
TOP_RUNG = 14
EXACT = -1  # the rung of an exact search
# Knobs that set effort directly: a query passing any of them is searched as told, not as calibrated.
EFFORT_KNOBS = frozenset({"probe", "probe_matches", "rerank_depth", "exact", "centroid_factor"})
# Kinds of query the calibration measures: unfiltered, then filters by selectivity (matches / rows), with
# the lower edge of each selectivity band (a filter counts as the nearest band at or below it).
KINDS = ("unfiltered", "10%", "1%", "0.1%")
_BAND_FLOORS = (0.03, 0.003, 0.0)


def rung_knobs(rung: int) -> dict[str, Any]:
    """The search knobs of one rung (``EXACT``: an exact search)."""
    if rung == EXACT:
        return {"exact": True}
    grow = 2.0 ** (rung / 2)
    return {
        "probe": round(_BASE_PROBE * grow),
        "rerank_depth": round(_BASE_DEPTH * 2.0 ** (rung / 4)),
        "probe_matches": round(_BASE_MATCHES * grow),
    }


def kind_of(selectivity: float | None) -> str:
    """The calibrated kind of a query whose filter matches about ``selectivity`` of the rows (None: none)."""
    if selectivity is None:
        return KINDS[0]
    return next(kind for kind, floor in zip(KINDS[1:], _BAND_FLOORS, strict=True) if selectivity >= floor)


@dataclass(frozen=True)
class Calibration:
    """Measured recall per rung for each kind of query, and the build's target.

    ``recall[kind]`` lists, per rung (ascending, ``EXACT`` excluded), the mean recall@k measured there and
    the recall it is assured of (`squash.calibration`); a kind absent from the table (no attributes, or
    too few rows for that selectivity) falls back to the nearest kind measured.
    """

    target: float
    recall: Mapping[str, Sequence[tuple[int, float, float]]]
    exact_faster: Mapping[str, int]

    @classmethod
    def of(cls, meta: IndexMeta) -> Calibration | None:
        stored = meta.params.get("calibration")
        if not isinstance(stored, Mapping):
            return None
        try:
            recall = {
                str(kind): [(int(r), float(m), float(a)) for r, m, a in rows] for kind, rows in stored["recall"].items()
            }
            calibration = cls(float(stored["target"]), recall, {k: int(v) for k, v in stored["exact_faster"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptObjectError(f"the index's calibration (manifest params) is malformed: {e!r}") from None
        if not recall or set(recall) - set(KINDS):
            raise CorruptObjectError(f"the index's calibration names kinds {sorted(recall)}; expected some of {KINDS}")
        return calibration

    def _measured(self, kind: str) -> str:
        order = sorted(self.recall, key=lambda other: abs(KINDS.index(other) - KINDS.index(kind)))
        return kind if kind in self.recall else order[0]

    def choose(self, kind: str, target: float) -> tuple[int, float]:
        """(rung, recall estimate): the cheapest rung assured of ``target`` whose costlier measured rungs all are
        too, else the exact search; the exact search too once it ran faster than the rung.

        Recall grows with effort, so a rung that meets the target while a costlier one misses it met it by the
        sample's chance (Fashion-MNIST, 10% filters: rung 0 assured 0.970, rung 2 0.944, rung 4 0.962).
        """
        measured = self._measured(kind)
        limit = self.exact_faster.get(measured, TOP_RUNG + 1)
        rows = [row for row in self.recall[measured] if row[0] < limit]
        chosen = EXACT, 1.0
        for rung, mean, assured in reversed(rows):
            if assured < target:
                break
            chosen = rung, mean
        return chosen


@dataclass(frozen=True)
class EffortGroup:
    """Queries searched with one set of knobs, and the recall the calibration expects of each."""

    rows: NDArray[np.int64]
    knobs: Mapping[str, Any]
    params: SearchParams
    estimates: NDArray[np.float32]


def selectivities(meta: IndexMeta, filters: Sequence[CompiledFilter | None]) -> list[float | None]:
    """Each query's expected fraction of matching rows over the whole index (None: no filter)."""
    distinct = list({f.group: f for f in filters if f is not None}.values())
    totals = estimates_many(distinct, meta.attr_histograms.sum(axis=0)) if distinct else np.zeros(0)
    share = {f.group: float(t) / max(meta.n_vectors, 1) for f, t in zip(distinct, totals, strict=True)}
    return [None if f is None else share[f.group] for f in filters]


def effort_groups(
    meta: IndexMeta, filters: Sequence[CompiledFilter | None], knobs: Mapping[str, Any]
) -> list[EffortGroup]:
    """Split a batch by the effort each query needs: one group per rung, in rung order.

    Without calibration (an index built before it existed) or with an effort knob given, every query
    takes the knobs as given; the estimate is then unknown (NaN) unless the search is exact.
    """
    nq = len(filters)
    params = SearchParams.from_knobs(dict(knobs))
    calibration = Calibration.of(meta)
    if calibration is None or EFFORT_KNOBS & set(knobs):
        estimate = 1.0 if params.exact else math.nan
        return [EffortGroup(np.arange(nq, dtype=np.int64), knobs, params, np.full(nq, estimate, dtype=np.float32))]
    target = calibration.target if params.recall_target is None else params.recall_target
    rest = {name: value for name, value in knobs.items() if name != "recall_target"}
    kinds = [kind_of(s) for s in selectivities(meta, filters)]
    chosen = {kind: calibration.choose(kind, target) for kind in set(kinds)}
    rungs = np.asarray([chosen[kind][0] for kind in kinds], dtype=np.int64)
    estimates = np.asarray([chosen[kind][1] for kind in kinds], dtype=np.float32)
    groups = []
    for rung in np.unique(rungs).tolist():
        rows = np.flatnonzero(rungs == rung).astype(np.int64)
        group_knobs = {**rest, **rung_knobs(rung)}
        groups.append(EffortGroup(rows, group_knobs, SearchParams.from_knobs(group_knobs), estimates[rows]))
    return groups


def estimates_of(nq: int, groups: Sequence[EffortGroup]) -> NDArray[np.float32]:
    """Per query, the recall its group's effort is calibrated to give."""
    out = np.full(nq, np.nan, dtype=np.float32)
    for group in groups:
        out[group.rows] = group.estimates
    return out
