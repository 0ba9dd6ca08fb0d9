"""Attribute schema, normalisation and quantization."""

from __future__ import annotations

import msgpack
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from squash.attributes import (
    AttributeQuantizer,
    AttributeSchema,
    AttributeSpec,
    AttrType,
    normalize_attributes,
)
from squash.errors import FilterError, InvalidInputError

N = 6


def test_none_gives_empty_schema():
    schema, raw = normalize_attributes(None, 10)
    assert schema == AttributeSchema(()) and len(schema) == 0 and raw == {}


def test_normalize_dict_of_arrays_and_lists():
    schema, raw = normalize_attributes(
        {
            "year": [2001, 1999, 2001, 2010, 1999, 2005],
            "price": np.array([1.5, 2.0, 3.25, -1.0, 0.0, 9.0], dtype=np.float32),
            "stock": np.arange(N, dtype=np.uint16),
            "new": [True, False, True, True, False, False],
            "color": np.array(["red", "blue", "red", "green", "Blue", "blue"]),
            "shape": np.array(["b", "a", "b", "a", "c", "é"], dtype=object),
        },
        N,
    )
    assert schema.names == ("year", "price", "stock", "new", "color", "shape")
    assert [f.type for f in schema.fields] == [
        AttrType.INT,
        AttrType.FLOAT,
        AttrType.INT,
        AttrType.BOOL,
        AttrType.CATEGORY,
        AttrType.CATEGORY,
    ]
    assert {name: col.dtype for name, col in raw.items()} == {
        "year": np.int64,
        "price": np.float64,
        "stock": np.int64,
        "new": np.int64,
        "color": np.int64,
        "shape": np.int64,
    }
    assert raw["new"].tolist() == [1, 0, 1, 1, 0, 0]
    # Code point order: uppercase before lowercase, accented letters last.
    assert schema.fields[4].categories == ("Blue", "blue", "green", "red")
    assert raw["color"].tolist() == [3, 1, 3, 2, 0, 1]
    assert schema.fields[5].categories == ("a", "b", "c", "é")
    assert raw["shape"].tolist() == [1, 0, 1, 0, 2, 3]
    assert schema.index("new") == 3


def test_normalize_pyarrow_table_matches_numpy_path():
    color = ["red", "blue", "red", "green", "Blue", "blue"]
    table = pa.table(
        {
            "year": pa.chunked_array([[2001, 1999, 2001], [2010, 1999, 2005]]),
            "price": pa.array([1.5, 2.0, 3.25, -1.0, 0.0, 9.0], type=pa.float32()),
            "new": [True, False, True, True, False, False],
            "color": pa.array(color, type=pa.string()),
            "color_large": pa.array(color, type=pa.large_string()),
            "color_dict": pa.chunked_array(
                [pa.array(color[:2]).dictionary_encode(), pa.array(color[2:]).dictionary_encode()]
            ),
        }
    )
    schema, raw = normalize_attributes(table, N)
    ref_schema, ref_raw = normalize_attributes({"color": np.array(color)}, N)
    assert list(schema.names) == table.column_names
    assert [f.type for f in schema.fields[:3]] == [AttrType.INT, AttrType.FLOAT, AttrType.BOOL]
    for name in ("color", "color_large", "color_dict"):
        assert schema.fields[schema.index(name)].categories == ref_schema.fields[0].categories
        np.testing.assert_array_equal(raw[name], ref_raw["color"])
        assert raw[name].dtype == np.int64
    assert raw["year"].tolist() == [2001, 1999, 2001, 2010, 1999, 2005]


def test_normalize_pyarrow_arrays_in_dict():
    schema, raw = normalize_attributes({"c": pa.array(["x", "y", "x"]), "i": pa.array([1, 2, 3])}, 3)
    assert schema.fields[0] == AttributeSpec("c", AttrType.CATEGORY, ("x", "y"))
    assert raw["c"].tolist() == [0, 1, 0] and raw["i"].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("attributes", "culprits"),
    [
        ({"a": [1, 2, 3]}, ["'a'", "3 values", "4 vectors"]),
        ({"a": np.zeros((4, 2))}, ["'a'", "1-D"]),
        ({"f": [0.0, 1.0, np.nan, 2.0]}, ["'f'", "row 2", "nan"]),
        ({"f": [0.0, np.inf, 1.0, 2.0]}, ["'f'", "row 1"]),
        ({"z": np.ones(4, dtype=np.complex64)}, ["'z'", "complex64"]),
        ({"t": np.array(["2020-01-01"] * 4, dtype="datetime64[D]")}, ["'t'", "datetime64"]),
        ({"s": np.array(["a", None, "b", "c"], dtype=object)}, ["'s'", "row 1", "null"]),
        ({"s": np.array(["a", "b", np.nan, "c"], dtype=object)}, ["'s'", "row 2", "null"]),
        ({"s": np.array(["a", "b", "c", 3], dtype=object)}, ["'s'", "row 3", "int"]),
        ({"s": pa.array(["a", "b", None, "c"])}, ["'s'", "row 2", "null"]),
        ({"i": pa.array([1, None, 2, 3])}, ["'i'", "row 1", "null"]),
        ({"l": pa.array([[1], [2], [3], [4]])}, ["'l'", "list"]),
        ({"big": np.array([0, 1, 2, 2**60])}, ["'big'", "row 3", "2**53"]),
        ({"big": np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64)}, ["'big'", "row 3"]),
        ({"": [1, 2, 3, 4]}, ["''", "non-empty"]),
        ({3: [1, 2, 3, 4]}, ["3", "string"]),
        ({"$and": [1, 2, 3, 4]}, ["'$and'", "'$'"]),
        ([1, 2, 3, 4], ["list", "pyarrow.Table"]),
    ],
)
def test_normalize_errors_name_the_culprit(attributes, culprits):
    with pytest.raises(InvalidInputError) as info:
        normalize_attributes(attributes, 4)
    for culprit in culprits:
        assert culprit in str(info.value)


def test_duplicate_table_column_names_rejected():
    table = pa.Table.from_arrays([pa.array([1, 2]), pa.array([3, 4])], names=["a", "a"])
    with pytest.raises(InvalidInputError, match="'a' appears twice"):
        normalize_attributes(table, 2)


def test_schema_round_trip_and_index_errors():
    schema = AttributeSchema(
        (
            AttributeSpec("a", AttrType.INT),
            AttributeSpec("b", AttrType.FLOAT),
            AttributeSpec("c", AttrType.BOOL),
            AttributeSpec("d", AttrType.CATEGORY, ("x", "y")),
        )
    )
    d = msgpack.unpackb(msgpack.packb(schema.to_dict()))
    assert AttributeSchema.from_dict(d) == schema
    with pytest.raises(FilterError) as info:
        schema.index("e")
    assert "'e'" in str(info.value) and all(f"'{x}'" in str(info.value) for x in "abcd")


@pytest.mark.parametrize(
    ("d", "culprit"),
    [
        ({"fields": [{"name": "a", "type": "decimal"}]}, "decimal"),
        ({"fields": [{"name": "a", "type": "int"}, {"name": "a", "type": "float"}]}, "twice"),
        ({"fields": [{"name": "a", "type": "int", "categories": ["x"]}]}, "categories"),
        ({"fields": [{"name": "a", "type": "category", "categories": ["x", "x"]}]}, "not unique"),
        ({"fields": [{"name": "", "type": "int"}]}, "non-empty"),
        ({"fields": [{"name": "a", "type": "int", "extra": 1}]}, "keys"),
        ({"columns": []}, "'fields'"),
    ],
)
def test_schema_from_dict_validates(d, culprit):
    with pytest.raises(InvalidInputError, match=culprit):
        AttributeSchema.from_dict(d)


def _check_cells(q: AttributeQuantizer, raw: dict[str, np.ndarray], bits: int) -> np.ndarray:
    codes = q.encode(raw)
    n = next(iter(raw.values())).shape[0]
    assert codes.dtype == np.uint8 and codes.flags.c_contiguous and codes.shape == (n, len(q.schema))
    for a, name in enumerate(q.schema.names):
        values = raw[name].astype(np.float64)
        lo, hi, b = q.cell_lo[a], q.cell_hi[a], q.boundaries[a]
        distinct = np.unique(values)
        assert lo.size == min(distinct.size, 2**bits)
        assert (np.diff(b) > 0).all()
        c = codes[:, a]
        np.testing.assert_array_equal(c, np.searchsorted(b, values, side="right"))
        assert ((lo[c] <= values) & (values <= hi[c])).all()
        # Every cell is non-empty and its bounds are observed values.
        assert np.bincount(c, minlength=lo.size).min() > 0
        assert np.isin(lo, distinct).all() and np.isin(hi, distinct).all()
        if distinct.size <= 2**bits:
            np.testing.assert_array_equal(lo, distinct)
            np.testing.assert_array_equal(hi, distinct)
    return codes


def _mixed_raw(n: int, seed: int) -> tuple[AttributeSchema, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    heavy = np.where(rng.random(n) < 0.5, 0.0, rng.exponential(size=n))
    return normalize_attributes(
        {
            "few": rng.integers(-3, 4, n),
            "many": rng.integers(0, 10**6, n),
            "normal": rng.normal(size=n),
            "heavy": heavy,
            "flag": rng.random(n) < 0.2,
            "cat": np.array(["a", "b", "c", "d"])[rng.integers(0, 4, n)],
            "tiny": 1e-300 * rng.normal(size=n),
            "huge": 1e300 * rng.normal(size=n),
        },
        n,
    )


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_quantizer_cells_contain_their_values(bits):
    schema, raw = _mixed_raw(20_000, bits)
    q = AttributeQuantizer.fit(schema, raw, bits=bits)
    _check_cells(q, raw, bits)


def test_quantizer_is_deterministic():
    schema, raw = _mixed_raw(5_000, 7)
    q1, q2 = AttributeQuantizer.fit(schema, raw), AttributeQuantizer.fit(schema, raw)
    for field in ("cell_lo", "cell_hi", "boundaries"):
        for x, y in zip(getattr(q1, field), getattr(q2, field), strict=True):
            np.testing.assert_array_equal(x, y)


def _distortion(values: np.ndarray, boundaries: np.ndarray) -> float:
    codes = np.searchsorted(boundaries, values, side="right")
    means = np.bincount(codes, weights=values) / np.bincount(codes)
    return float(((values - means[codes]) ** 2).sum())


def test_lloyd_max_improves_on_equi_depth():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(size=20_000), rng.normal(50, 5, size=2_000)])
    schema, raw = normalize_attributes({"v": values}, values.size)
    q = AttributeQuantizer.fit(schema, raw, bits=4)
    equi_depth = np.quantile(values, np.arange(1, 16) / 16)
    assert _distortion(values, q.boundaries[0]) < 0.5 * _distortion(values, equi_depth)


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        st.integers(1, 400),
        elements=st.one_of(
            st.sampled_from([0.0, -0.0, 1.0, 5e-324, -1.5, 1e308, -1e308, 2.0**53]),
            st.floats(allow_nan=False, allow_infinity=False),
            st.floats(-10, 10, allow_nan=False, allow_infinity=False),
        ),
    ),
    bits=st.integers(1, 8),
)
def test_quantizer_property(values, bits):
    schema, raw = normalize_attributes({"v": values}, values.size)
    _check_cells(AttributeQuantizer.fit(schema, raw, bits=bits), raw, bits)


def test_quantizer_round_trip_through_msgpack():
    schema, raw = _mixed_raw(3_000, 11)
    q = AttributeQuantizer.fit(schema, raw)
    d = msgpack.unpackb(msgpack.packb(q.to_dict()))
    q2 = AttributeQuantizer.from_dict(d)
    assert q2.schema == schema and q2.cells == q.cells
    np.testing.assert_array_equal(q2.encode(raw), q.encode(raw))
    for field in ("cell_lo", "cell_hi", "boundaries"):
        for x, y in zip(getattr(q, field), getattr(q2, field), strict=True):
            np.testing.assert_array_equal(x, y)


def test_quantizer_from_dict_rejects_corruption():
    schema, raw = _mixed_raw(500, 2)
    d = AttributeQuantizer.fit(schema, raw, bits=3).to_dict()
    swapped = dict(d, cell_lo=d["cell_hi"], cell_hi=d["cell_lo"])
    with pytest.raises(InvalidInputError, match="out of order"):
        AttributeQuantizer.from_dict(swapped)
    short = dict(d, boundaries=d["boundaries"][:-1])
    with pytest.raises(InvalidInputError, match="8 attributes"):
        AttributeQuantizer.from_dict(short)
    bad_bytes = dict(d, cell_lo=[dict(d["cell_lo"][0], data=b"1234"), *d["cell_lo"][1:]])
    with pytest.raises(InvalidInputError, match="bytes"):
        AttributeQuantizer.from_dict(bad_bytes)


def test_encode_rejects_values_not_seen_at_fit_time():
    schema, raw = normalize_attributes({"v": [1, 3, 5]}, 3)
    q = AttributeQuantizer.fit(schema, raw)
    np.testing.assert_array_equal(q.encode({"v": np.array([5, 1])})[:, 0], [2, 0])
    for unseen in (2, 0, 9):
        with pytest.raises(InvalidInputError, match="'v' value"):
            q.encode({"v": np.array([1, unseen])})
    with pytest.raises(InvalidInputError, match="'v' is missing"):
        q.encode({})


def test_encode_without_attributes_and_bad_bits():
    schema, raw = normalize_attributes(None, 5)
    q = AttributeQuantizer.fit(schema, raw)
    assert q.encode(raw, n=5).shape == (5, 0)
    with pytest.raises(InvalidInputError, match="pass n"):
        q.encode(raw)
    schema, raw = normalize_attributes({"v": [1, 2]}, 2)
    for bits in (0, 9, True, 2.0):
        with pytest.raises(InvalidInputError, match="bits"):
            AttributeQuantizer.fit(schema, raw, bits=bits)


def test_fit_on_empty_columns():
    schema, raw = normalize_attributes({"v": np.zeros(0)}, 0)
    q = AttributeQuantizer.fit(schema, raw)
    assert q.cells == (1,) and q.encode(raw).shape == (0, 1)
