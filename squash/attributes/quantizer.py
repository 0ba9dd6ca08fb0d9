"""The attribute quantizer: a uint8 cell code per raw value, with each cell's observed ``[cell_lo, cell_hi]``,
which the filter's conservative cell-level evaluation relies on (design section 3.1). Cells are fitted by
equi-depth boundaries refined by Lloyd-Max."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from squash.attributes.schema import AttributeSchema
from squash.errors import InvalidInputError

MAX_BITS = 8
_MAX_LLOYD_ITERATIONS = 250
_LLOYD_TOLERANCE = 0.005
_F64 = "<f8"


@dataclass(frozen=True)
class AttributeQuantizer:
    """Per-attribute scalar quantizer with observed cell intervals.

    Cell ``i`` of an attribute holds the values ``v`` with ``boundaries[i-1] <= v < boundaries[i]`` (first and
    last cells open-ended), i.e. ``code = searchsorted(boundaries, v, side="right")``. ``cell_lo[i]`` and
    ``cell_hi[i]`` are the smallest and largest fitted value in the cell; every fitted cell is non-empty.
    """

    schema: AttributeSchema
    cell_lo: tuple[np.ndarray, ...]
    cell_hi: tuple[np.ndarray, ...]
    boundaries: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        a = len(self.schema)
        if not len(self.cell_lo) == len(self.cell_hi) == len(self.boundaries) == a:
            raise InvalidInputError(f"attribute quantizer needs cell_lo, cell_hi, boundaries for {a} attributes")
        for name, lo, hi, b in zip(self.schema.names, self.cell_lo, self.cell_hi, self.boundaries, strict=True):
            if not all(isinstance(x, np.ndarray) and x.dtype == np.float64 and x.ndim == 1 for x in (lo, hi, b)):
                raise InvalidInputError(f"quantizer arrays of attribute {name!r} must be 1-D float64")
            cells = lo.shape[0]
            if not 1 <= cells <= 2**MAX_BITS or hi.shape[0] != cells or b.shape[0] != cells - 1:
                raise InvalidInputError(f"quantizer of attribute {name!r} has inconsistent cell counts")
            if not (np.isfinite(lo).all() and np.isfinite(hi).all() and np.isfinite(b).all()):
                raise InvalidInputError(f"quantizer of attribute {name!r} has non-finite values")
            if (lo > hi).any() or (np.diff(b) <= 0).any() or (lo[1:] < b).any() or (hi[:-1] >= b).any():
                raise InvalidInputError(f"quantizer of attribute {name!r} has cells out of order")

    @property
    def cells(self) -> tuple[int, ...]:
        """Number of cells of each attribute."""
        return tuple(lo.shape[0] for lo in self.cell_lo)

    @classmethod
    def fit(cls, schema: AttributeSchema, raw: Mapping[str, np.ndarray], bits: int = 8) -> AttributeQuantizer:
        """Fit cells to raw columns (normally the whole dataset, so every later encoded value was seen here).

        An attribute with at most ``2**bits`` distinct values gets one cell per value (filtering it on codes
        is exact); otherwise ``2**bits`` cells from equi-depth boundaries refined by Lloyd-Max.
        """
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise InvalidInputError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
        _column_length(schema, raw)
        fitted = [_fit_cells(np.asarray(raw[name], dtype=np.float64), 2**bits) for name in schema.names]
        return cls(
            schema,
            tuple(f[0] for f in fitted),
            tuple(f[1] for f in fitted),
            tuple(f[2] for f in fitted),
        )

    def encode(self, raw: Mapping[str, np.ndarray], *, n: int | None = None) -> np.ndarray:
        """Cell codes, (n, A) uint8 C-contiguous.

        ``n`` is needed only when the schema has no attributes (the result is then (n, 0)). Raises
        InvalidInputError for a value outside the observed interval of its cell, i.e. one not seen by
        :meth:`fit` that falls between fitted values: filtering on its code could then be wrong.
        """
        rows = _column_length(self.schema, raw, n)
        if rows is None:
            raise InvalidInputError("the schema has no attributes: pass n, the number of rows")
        codes = np.empty((rows, len(self.schema)), dtype=np.uint8)
        for a, name in enumerate(self.schema.names):
            values = np.asarray(raw[name], dtype=np.float64)
            code = np.searchsorted(self.boundaries[a], values, side="right")
            inside = (self.cell_lo[a][code] <= values) & (values <= self.cell_hi[a][code])
            if not inside.all():
                row = int(np.argmin(inside))
                raise InvalidInputError(
                    f"attribute {name!r} value {values[row]} at row {row} was not seen when the quantizer "
                    "was fitted; fit the quantizer on all the values it will encode"
                )
            codes[:, a] = code
        return codes

    def to_dict(self) -> dict[str, Any]:
        """Plain, msgpack-able description: arrays as little-endian bytes with dtype and shape."""
        return {
            "schema": self.schema.to_dict(),
            "cell_lo": [_encode_array(x) for x in self.cell_lo],
            "cell_hi": [_encode_array(x) for x in self.cell_hi],
            "boundaries": [_encode_array(x) for x in self.boundaries],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributeQuantizer:
        """Inverse of :meth:`to_dict`, validating shapes and cell order."""
        if not isinstance(d, Mapping) or set(d) != {"schema", "cell_lo", "cell_hi", "boundaries"}:
            raise InvalidInputError("attribute quantizer must have keys schema, cell_lo, cell_hi, boundaries")
        arrays = {}
        for key in ("cell_lo", "cell_hi", "boundaries"):
            if not isinstance(d[key], list):
                raise InvalidInputError(f"attribute quantizer {key} must be a list of arrays")
            arrays[key] = tuple(_decode_array(x) for x in d[key])
        return cls(AttributeSchema.from_dict(d["schema"]), **arrays)


def _column_length(schema: AttributeSchema, raw: Mapping[str, np.ndarray], n: int | None = None) -> int | None:
    """Common length of the schema's raw columns (``n`` if given and there are none), checking shapes."""
    for name in schema.names:
        if name not in raw:
            raise InvalidInputError(f"raw attribute column {name!r} is missing")
        shape = np.shape(raw[name])
        if len(shape) != 1 or (n is not None and shape[0] != n):
            expected = f"({n},)" if n is not None else "(n,)"
            raise InvalidInputError(f"raw attribute column {name!r} has shape {shape}; expected {expected}")
        n = shape[0]
    return n


def _fit_cells(values: np.ndarray, max_cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    uniques, counts = np.unique(values, return_counts=True)
    if uniques.size == 0:
        # No rows: one placeholder cell keeps shapes uniform; it never holds a value.
        return np.zeros(1), np.zeros(1), np.empty(0)
    if uniques.size <= max_cells:
        starts = np.arange(uniques.size)
    else:
        starts = np.concatenate(([0], _lloyd_max_cuts(uniques, counts, max_cells)))
    ends = np.append(starts[1:], uniques.size)
    below, above = uniques[starts[1:] - 1], uniques[starts[1:]]
    with np.errstate(over="ignore"):
        middle = (below + above) / 2
    # Rounding can put the midpoint of adjacent floats (or an overflowing sum) outside (below, above].
    boundaries = np.where((below < middle) & (middle <= above), middle, above)
    return uniques[starts].copy(), uniques[ends - 1].copy(), boundaries


class _CellStats:
    """Prefix sums over the sorted distinct values, giving per-cell count, mean and distortion in O(cells)."""

    def __init__(self, uniques: np.ndarray, counts: np.ndarray) -> None:
        scale = max(abs(uniques[0]), abs(uniques[-1])) or 1.0
        # Scaled and centred so sums of squares neither overflow nor cancel; Lloyd-Max is affine-invariant.
        x = uniques / scale
        self.x = x - np.average(x, weights=counts)
        w = counts.astype(np.float64)
        self.w = np.concatenate(([0.0], np.cumsum(w)))
        self.s = np.concatenate(([0.0], np.cumsum(w * self.x)))
        self.q = np.concatenate(([0.0], np.cumsum(w * self.x * self.x)))

    def __call__(self, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        edges = np.concatenate(([0], cuts, [self.x.size]))
        count, total, squares = np.diff(self.w[edges]), np.diff(self.s[edges]), np.diff(self.q[edges])
        mean = total / count
        return edges, mean, np.maximum(squares - total * mean, 0.0)


def _lloyd_max_cuts(uniques: np.ndarray, counts: np.ndarray, cells: int) -> np.ndarray:
    """Interior cut positions into ``uniques`` (cell i starts at cut i-1) of ``cells`` non-empty cells."""
    stats = _CellStats(uniques, counts)
    m, n = uniques.size, int(counts.sum())
    # Equi-depth: the cut before the distinct value holding sorted position ceil(i*n/cells).
    targets = -((-np.arange(1, cells) * n) // cells)
    cuts = np.searchsorted(stats.w, targets, side="right") - 1
    cuts = _refill(stats, _valid_cuts(cuts, m), cells)
    _, mean, dist = stats(cuts)
    distortion = dist.sum()
    for _ in range(_MAX_LLOYD_ITERATIONS):
        # Values at or above the midpoint of neighbouring means go right, the same rule as encode().
        moved = np.searchsorted(stats.x, (mean[:-1] + mean[1:]) / 2, side="left")
        cuts = _refill(stats, _valid_cuts(moved, m), cells)
        _, mean, dist = stats(cuts)
        previous, distortion = distortion, dist.sum()
        if previous <= 0 or abs(previous - distortion) / previous < _LLOYD_TOLERANCE:
            break
    return cuts


def _valid_cuts(cuts: np.ndarray, m: int) -> np.ndarray:
    cuts = np.unique(cuts)  # duplicate cuts are empty cells: drop them
    return cuts[(cuts > 0) & (cuts < m)]


def _refill(stats: _CellStats, cuts: np.ndarray, cells: int) -> np.ndarray:
    """Split the highest-distortion cells at their means until there are ``cells`` cells (deterministic)."""
    while cuts.size + 1 < cells:
        edges, mean, dist = stats(cuts)
        splittable = np.diff(edges) >= 2
        if not splittable.any():
            break
        ranked = np.argsort(np.where(splittable, -dist, np.inf), kind="stable")
        chosen = ranked[: min(cells - 1 - cuts.size, int(splittable.sum()))]
        split = np.searchsorted(stats.x, mean[chosen], side="right")
        split = np.clip(split, edges[chosen] + 1, edges[chosen + 1] - 1)
        cuts = np.unique(np.concatenate((cuts, split)))
    return cuts


def _encode_array(x: np.ndarray) -> dict[str, Any]:
    return {"dtype": _F64, "shape": list(x.shape), "data": x.astype(_F64).tobytes()}


def _decode_array(d: Any) -> np.ndarray:
    if not isinstance(d, Mapping) or d.get("dtype") != _F64 or not isinstance(d.get("data"), bytes):
        raise InvalidInputError(f"expected an array as {{'dtype': '{_F64}', 'shape', 'data': bytes}}")
    shape = d.get("shape")
    if not isinstance(shape, list) or len(shape) != 1 or len(d["data"]) != 8 * shape[0]:
        raise InvalidInputError(f"array shape {shape!r} does not match its {len(d['data'])} bytes")
    return np.frombuffer(d["data"], dtype=_F64).astype(np.float64)
