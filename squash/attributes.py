"""Typed attribute schema, attribute normalisation and attribute quantization (design section 3.1).

Every attribute is stored as one "raw column" of numbers in its own units: INT as int64, FLOAT as float64,
BOOL as int64 0/1 and CATEGORY as the int64 index of the value in the schema's sorted category list. The
quantizer maps each raw value to a uint8 cell code and records the observed ``[cell_lo, cell_hi]`` of every
cell, which is what the filter's conservative cell-level evaluation relies on.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np

from squash.errors import FilterError, InvalidInputError

# INT attributes are compared as float64 (cell bounds, filter operands), which is exact only up to 2**53.
MAX_EXACT_INT = 2**53
MAX_BITS = 8
_MAX_LLOYD_ITERATIONS = 250
_LLOYD_TOLERANCE = 0.005
_F64 = "<f8"


class AttrType(StrEnum):
    """Type of an attribute, which fixes its raw representation and the filter operators it accepts."""

    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    CATEGORY = "category"


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute. ``categories`` (CATEGORY only) is the dictionary: a value's raw code is its index."""

    name: str
    type: AttrType
    categories: tuple[str, ...] = ()


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"attribute name {name!r} is not a non-empty string; name every attribute")
    _check_text(name, f"attribute name {name!r}")
    if name.startswith("$"):
        raise InvalidInputError(
            f"attribute name {name!r} starts with '$', which filters reserve for operators; rename it"
        )


def _check_text(text: str, what: str) -> None:
    """Names and categories travel in JSON payloads and stored objects, which hold only valid UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} is not valid Unicode ({exc.reason}); UTF-8 cannot store it: fix the text"
        ) from None


def _truncated(items: tuple[str, ...] | list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f", ... ({len(items)} in total)" if len(items) > limit else "")


@dataclass(frozen=True)
class AttributeSchema:
    """Ordered attributes of an index; the order is the column order of the attribute codes."""

    fields: tuple[AttributeSpec, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.fields:
            _check_name(spec.name)
            if spec.name in seen:
                raise InvalidInputError(f"attribute {spec.name!r} appears twice; attribute names must be unique")
            seen.add(spec.name)
            if not isinstance(spec.type, AttrType):
                raise InvalidInputError(f"attribute {spec.name!r} has type {spec.type!r}, not an AttrType")
            if spec.type is not AttrType.CATEGORY and spec.categories:
                raise InvalidInputError(
                    f"attribute {spec.name!r} of type {spec.type} has categories; only category attributes have them"
                )
            if not all(isinstance(c, str) for c in spec.categories):
                raise InvalidInputError(f"categories of attribute {spec.name!r} must all be strings")
            for category in spec.categories:
                _check_text(category, f"category {category!r} of attribute {spec.name!r}")
            if len(set(spec.categories)) != len(spec.categories):
                raise InvalidInputError(f"categories of attribute {spec.name!r} are not unique")

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {spec.name: i for i, spec in enumerate(self.fields)}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def index(self, name: str) -> int:
        """Position of attribute ``name``; raises FilterError naming the known attributes if there is none."""
        try:
            return self._positions[name]
        except (KeyError, TypeError):
            known = _truncated(self.names) if self.fields else "none: the index has no attributes"
            raise FilterError(f"unknown attribute {name!r}; known attributes: {known}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain, msgpack-able description."""
        fields: list[dict[str, Any]] = []
        for spec in self.fields:
            entry: dict[str, Any] = {"name": spec.name, "type": spec.type.value}
            if spec.type is AttrType.CATEGORY:
                entry["categories"] = list(spec.categories)
            fields.append(entry)
        return {"fields": fields}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributeSchema:
        """Inverse of :meth:`to_dict`, validating every entry."""
        if not isinstance(d, Mapping) or not isinstance(d.get("fields"), list):
            raise InvalidInputError("attribute schema must be a mapping with a 'fields' list")
        specs = []
        for entry in d["fields"]:
            if not isinstance(entry, Mapping) or set(entry) - {"name", "type", "categories"}:
                raise InvalidInputError(
                    f"attribute schema entry {entry!r} must be a mapping with keys name, type[, categories]"
                )
            try:
                kind = AttrType(entry.get("type"))
            except ValueError:
                raise InvalidInputError(
                    f"attribute {entry.get('name')!r} has unknown type {entry.get('type')!r}; "
                    f"expected one of {[t.value for t in AttrType]}"
                ) from None
            categories = entry.get("categories", [])
            if not isinstance(categories, list):
                raise InvalidInputError(f"categories of attribute {entry.get('name')!r} must be a list")
            specs.append(AttributeSpec(entry.get("name"), kind, tuple(categories)))
        return cls(tuple(specs))


def normalize_attributes(attributes: Any, n: int) -> tuple[AttributeSchema, dict[str, np.ndarray]]:
    """Validate user attributes and convert them to a schema and raw columns.

    Parameters
    ----------
    attributes
        None, a ``pyarrow.Table`` or a mapping of name to 1-D array-like of length ``n``. Supported: integers,
        floats (finite), booleans and strings (numpy, Python objects, pyarrow string or dictionary). No nulls.
    n
        Number of vectors.

    Returns
    -------
    The schema (one field per column, in column order) and the raw columns by name (int64 or float64, (n,)).
    Category dictionaries are sorted by code point, so the result is a pure function of the data.
    """
    if attributes is None:
        return AttributeSchema(()), {}
    pa = sys.modules.get("pyarrow")  # a pyarrow object cannot exist unless pyarrow is already imported
    if pa is not None and isinstance(attributes, pa.Table):
        names: list[Any] = list(attributes.column_names)
        columns: list[Any] = list(attributes.columns)
    elif isinstance(attributes, Mapping):
        names, columns = list(attributes.keys()), list(attributes.values())
    else:
        raise InvalidInputError(
            f"attributes must be None, a pyarrow.Table or a dict of name -> 1-D array, not {type(attributes).__name__}"
        )
    specs, raw = [], {}
    for name, column in zip(names, columns, strict=True):
        _check_name(name)
        if name in raw:
            raise InvalidInputError(f"attribute {name!r} appears twice; attribute names must be unique")
        if pa is not None and isinstance(column, pa.Array | pa.ChunkedArray):
            spec, values = _arrow_column(name, column)
        else:
            spec, values = _numpy_column(name, column)
        if values.shape[0] != n:
            raise InvalidInputError(
                f"attribute {name!r} has {values.shape[0]} values but there are {n} vectors; "
                "give exactly one value per vector"
            )
        specs.append(spec)
        raw[name] = values
    return AttributeSchema(tuple(specs)), raw


def _numpy_column(name: str, column: Any) -> tuple[AttributeSpec, np.ndarray]:
    values = np.asarray(column)
    if values.ndim != 1:
        raise InvalidInputError(f"attribute {name!r} has shape {values.shape}; pass a 1-D column")
    kind = values.dtype.kind
    if kind == "b":
        return AttributeSpec(name, AttrType.BOOL), values.astype(np.int64)
    if kind in "iu":
        return AttributeSpec(name, AttrType.INT), _int_column(name, values)
    if kind == "f":
        return AttributeSpec(name, AttrType.FLOAT), _float_column(name, values)
    if kind == "U":
        return _category_column(name, values)
    if kind in "OT":
        return _category_column(name, _object_strings(name, values.astype(object)))
    raise InvalidInputError(
        f"attribute {name!r} has unsupported dtype {values.dtype}; use integers, floats, booleans or strings"
    )


def _int_column(name: str, values: np.ndarray) -> np.ndarray:
    # Compare in the column's own dtype so uint64 values are not wrapped before the check.
    bad = (values > MAX_EXACT_INT) | ((values < -MAX_EXACT_INT) if values.dtype.kind == "i" else False)
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidInputError(
            f"attribute {name!r} has value {values[row]} at row {row}, outside +-2**53 where integers stay "
            "exact as float64; store it as a float or category attribute"
        )
    return values.astype(np.int64)


def _float_column(name: str, values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InvalidInputError(
            f"attribute {name!r} has non-finite value {values[row]} at row {row}; "
            "attributes must be finite numbers: drop or impute that row"
        )
    return values.astype(np.float64)


def _object_strings(name: str, values: np.ndarray) -> np.ndarray:
    is_str = np.frompyfunc(lambda v: isinstance(v, str), 1, 1)(values).astype(bool)
    if not is_str.all():
        row = int(np.argmin(is_str))
        bad = values[row]
        if bad is None or (isinstance(bad, float) and np.isnan(bad)):
            raise InvalidInputError(
                f"attribute {name!r} has a missing value (null) at row {row}; nulls are not supported: "
                "fill them (for example with a sentinel category) or drop the rows"
            )
        raise InvalidInputError(
            f"attribute {name!r} mixes strings with {type(bad).__name__} (row {row}); "
            "give a column of one type: all strings, all numbers or all booleans"
        )
    return values.astype(str)


def _category_column(name: str, values: np.ndarray) -> tuple[AttributeSpec, np.ndarray]:
    categories, codes = np.unique(values, return_inverse=True)
    spec = AttributeSpec(name, AttrType.CATEGORY, tuple(str(c) for c in categories))
    return spec, codes.astype(np.int64).reshape(-1)


def _arrow_column(name: str, column: Any) -> tuple[AttributeSpec, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        row = pc.index(column.is_null(), True).as_py()
        raise InvalidInputError(
            f"attribute {name!r} has a null at row {row}; nulls are not supported: "
            "fill them (for example with a sentinel category) or drop the rows"
        )
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        uniques = pc.unique(column)
        # Arrow sorts UTF-8 bytewise, which is code point order: the same order as the numpy path.
        uniques = uniques.take(pc.sort_indices(uniques))
        codes = pc.index_in(column, value_set=uniques).to_numpy(zero_copy_only=False).astype(np.int64)
        return AttributeSpec(name, AttrType.CATEGORY, tuple(uniques.to_pylist())), codes
    t = column.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return _numpy_column(name, column.to_numpy(zero_copy_only=False))
    raise InvalidInputError(
        f"attribute {name!r} has unsupported arrow type {t}; use integers, floats, booleans, strings "
        "or dictionary-encoded strings"
    )


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
