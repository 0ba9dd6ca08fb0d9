"""Tests of squash.ingest: every supported file type, and a clear error for every bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from format_helpers import attributes, clustered

from squash.errors import InvalidInputError
from squash.ingest import merge_attributes, read_attributes, read_vectors


def write_xvecs(path: Path, x: np.ndarray, value: str, dims: np.ndarray | None = None) -> Path:
    n, d = x.shape
    rows = np.empty(n, dtype=[("d", "<i4"), ("v", value, (d,))])
    rows["d"] = d if dims is None else dims
    rows["v"] = x
    rows.tofile(path)
    return path


def vector_table(x: np.ndarray, extra: dict[str, Any] | None = None, *, fixed: bool = True) -> pa.Table:
    flat = pa.array(x.reshape(-1))
    if fixed:
        column = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    else:
        column = pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)), flat)
    return pa.table({"vector": column, **(extra or {})})


@pytest.fixture
def x() -> np.ndarray:
    return clustered(500, 16)


# ---------------------------------------------------------------- supported inputs


def test_npy_is_memory_mapped(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "v.npy", x)
    got = read_vectors(tmp_path / "v.npy")
    assert isinstance(got.vectors, np.memmap) and got.attributes is None
    np.testing.assert_array_equal(got.vectors, x)
    assert "v.npy" in got.source


def test_npy_uint8_stays_uint8(tmp_path: Path) -> None:
    u = np.random.default_rng(0).integers(0, 256, (50, 8)).astype(np.uint8)
    np.save(tmp_path / "u.npy", u)
    assert read_vectors(str(tmp_path / "u.npy")).vectors.dtype == np.uint8


@pytest.mark.parametrize(("suffix", "value"), [(".fvecs", "<f4"), (".bvecs", "u1"), (".ivecs", "<i4")])
def test_xvecs(tmp_path: Path, suffix: str, value: str) -> None:
    data = np.random.default_rng(1).integers(0, 200, (300, 12)).astype(value)
    got = read_vectors(write_xvecs(tmp_path / f"v{suffix}", data, value))
    assert got.vectors.dtype == np.dtype(value)
    np.testing.assert_array_equal(got.vectors, data)


@pytest.mark.parametrize(
    ("suffix", "fixed"), [(".parquet", True), (".parquet", False), (".arrow", True), (".feather", True)]
)
def test_tables_with_attribute_columns(tmp_path: Path, x: np.ndarray, suffix: str, fixed: bool) -> None:
    attrs = attributes(500)
    table = vector_table(x, attrs, fixed=fixed)
    path = tmp_path / f"t{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path, row_group_size=128)
    else:
        feather.write_feather(table, path, chunksize=128)
    got = read_vectors(path)
    assert got.vectors.dtype == np.float32
    np.testing.assert_array_equal(got.vectors, x)
    assert got.attributes.column_names == list(attrs)
    np.testing.assert_array_equal(got.attributes.column("year").to_numpy(), attrs["year"])
    assert merge_attributes(got, None) is got.attributes


def test_table_object_and_uint8_values(x: np.ndarray) -> None:
    u = (np.abs(x) * 10).astype(np.uint8)
    got = read_vectors(vector_table(u))
    assert got.vectors.dtype == np.uint8 and got.attributes is None
    np.testing.assert_array_equal(got.vectors, u)


def test_several_files_are_concatenated(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", x[:200])
    write_xvecs(tmp_path / "b.fvecs", x[200:], "<f4")
    got = read_vectors([tmp_path / "a.npy", str(tmp_path / "b.fvecs")])
    np.testing.assert_array_equal(got.vectors, x)


def test_attribute_files(tmp_path: Path) -> None:
    attrs = attributes(500)
    pq.write_table(pa.table(attrs), tmp_path / "a.parquet")
    table = read_attributes(tmp_path / "a.parquet", 500)
    assert table.num_rows == 500 and table.column_names == list(attrs)
    assert read_attributes(attrs, 500) is attrs


# ---------------------------------------------------------------- bad inputs


def _raises(match: str, fn: Any, *args: Any) -> None:
    with pytest.raises(InvalidInputError, match=match):
        fn(*args)


def test_non_finite_values_name_the_file_and_row(tmp_path: Path, x: np.ndarray) -> None:
    bad = x.copy()
    bad[123, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    _raises(r"nan\.npy has NaN or infinite values \(first at row 123\)", read_vectors, tmp_path / "nan.npy")
    bad[123, 4] = np.inf
    write_xvecs(tmp_path / "inf.fvecs", bad, "<f4")
    _raises(r"inf\.fvecs .* row 123", read_vectors, tmp_path / "inf.fvecs")
    pq.write_table(vector_table(bad), tmp_path / "inf.parquet")
    _raises(r"inf\.parquet .* row 123", read_vectors, tmp_path / "inf.parquet")
    _raises("the vectors array has NaN", read_vectors, np.full((2, 3), np.nan))


def test_dimension_mismatch_between_files(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x[:, :8])
    _raises(
        r"dimension mismatch between files: .*a\.npy has 16 .*b\.npy has 8",
        read_vectors,
        [tmp_path / "a.npy", tmp_path / "b.npy"],
    )


def test_empty_inputs(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.zeros((0, 8), np.float32))
    _raises(r"e\.npy is empty", read_vectors, tmp_path / "e.npy")
    (tmp_path / "e.fvecs").write_bytes(b"")
    _raises(r"e\.fvecs is empty", read_vectors, tmp_path / "e.fvecs")
    pq.write_table(vector_table(np.zeros((0, 4), np.float32)), tmp_path / "e.parquet")
    _raises(r"e\.parquet has no rows", read_vectors, tmp_path / "e.parquet")
    _raises("empty", read_vectors, np.zeros((0, 3)))


@pytest.mark.parametrize(
    "array",
    [np.zeros((3, 2), complex), np.zeros((3, 2), bool), np.array([["a", "b"]]), np.zeros(3, [("a", "<f4")])],
    ids=["complex", "bool", "str", "structured"],
)
def test_unsupported_npy_dtypes(tmp_path: Path, array: np.ndarray) -> None:
    np.save(tmp_path / "d.npy", array)
    _raises(r"d\.npy has unsupported dtype", read_vectors, tmp_path / "d.npy")


def test_unreadable_npy_and_pickles(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([[1, "x"]], dtype=object), allow_pickle=True)
    _raises(r"o\.npy is not a readable \.npy", read_vectors, tmp_path / "o.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    _raises(r"junk\.npy is not a readable", read_vectors, tmp_path / "junk.npy")
    np.save(tmp_path / "one.npy", np.zeros(5, np.float32))
    _raises(r"one\.npy has shape \(5,\)", read_vectors, tmp_path / "one.npy")


def test_broken_xvecs(tmp_path: Path, x: np.ndarray) -> None:
    path = write_xvecs(tmp_path / "t.fvecs", x, "<f4")
    path.write_bytes(path.read_bytes()[:-3])
    _raises(r"t\.fvecs has \d+ bytes, not a multiple", read_vectors, path)
    dims = np.full(len(x), 16)
    dims[7] = 15
    _raises(r"r\.fvecs row 7 has dimension 15", read_vectors, write_xvecs(tmp_path / "r.fvecs", x, "<f4", dims))
    (tmp_path / "z.bvecs").write_bytes(np.array([-1, 0], "<i4").tobytes())
    _raises(r"z\.bvecs starts with dimension -1", read_vectors, tmp_path / "z.bvecs")


def test_unknown_or_missing_files(tmp_path: Path, x: np.ndarray) -> None:
    (tmp_path / "v.csv").write_text("1,2\n")
    _raises(r"v\.csv has an unknown type '\.csv'; supported: \.npy", read_vectors, tmp_path / "v.csv")
    _raises(r"nothing\.npy does not exist", read_vectors, tmp_path / "nothing.npy")
    np.save(tmp_path / "a.npy", x)
    _raises(
        r"attributes file .*a\.npy has an unknown type '\.npy'; supported: \.parquet",
        read_attributes,
        tmp_path / "a.npy",
        500,
    )
    _raises(r"attributes file .*gone\.parquet does not exist", read_attributes, tmp_path / "gone.parquet", 500)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    _raises(r"cannot read .*bad\.parquet", read_vectors, tmp_path / "bad.parquet")


def test_bad_tables(tmp_path: Path, x: np.ndarray) -> None:
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "novec.parquet")
    _raises(r"novec\.parquet has no vector column", read_vectors, tmp_path / "novec.parquet")
    ragged = pa.table({"vector": pa.array([[1.0, 2.0], [3.0]])})
    _raises(r"row 1 has 1 values but row 0 has 2", read_vectors, ragged)
    nulls = pa.table({"vector": pa.array([[1.0, 2.0], None])})
    _raises("null vector at row 1", read_vectors, nulls)
    two = pa.table({"u": pa.array([[1.0]]), "w": pa.array([[2.0]])})
    _raises("several list columns", read_vectors, two)


def test_attribute_rows_must_match(tmp_path: Path, x: np.ndarray) -> None:
    pq.write_table(pa.table(attributes(499)), tmp_path / "short.parquet")
    _raises(
        r"short\.parquet has 499 rows but there are 500 vectors",
        read_attributes,
        tmp_path / "short.parquet",
        500,
    )


def test_attributes_given_twice(x: np.ndarray) -> None:
    got = read_vectors(vector_table(x, {"k": np.arange(500)}))
    _raises(r"has attribute columns \['k'\] and attributes were also given", merge_attributes, got, {"j": [1]})
