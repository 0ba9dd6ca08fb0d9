"""User attributes (a pyarrow Table or a dict of columns) to a schema and raw columns, checked on the way."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from squash.attributes.schema import MAX_EXACT_INT, AttributeSchema, AttributeSpec, AttrType, check_name
from squash.errors import InvalidInputError


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
        check_name(name)
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
