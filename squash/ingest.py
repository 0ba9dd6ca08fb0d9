"""Read build input from files: vectors from ``.npy``, ``.fvecs``/``.bvecs``/``.ivecs`` or Arrow tables.

``.npy`` and the ``*vecs`` formats are memory-mapped, not loaded; Parquet, Arrow IPC (``.arrow``) and Feather
files are read in record batches into one preallocated array, and their other columns become attributes.
Every problem raises `InvalidInputError` naming the file and the fix.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError

BLOCK_ROWS = 65_536
_XVECS = {".fvecs": np.dtype("<f4"), ".ivecs": np.dtype("<i4"), ".bvecs": np.dtype("u1")}
_TABLE_FORMATS = {".parquet": "parquet", ".arrow": "ipc", ".feather": "ipc"}
VECTOR_SUFFIXES = (".npy", *_XVECS, *_TABLE_FORMATS)
ATTRIBUTE_SUFFIXES = tuple(_TABLE_FORMATS)
# Preferred names when a table has more than one list column.
VECTOR_COLUMN_NAMES = ("vector", "vectors", "embedding", "embeddings")
# A *vecs dimension header beyond this is a sign of a wrong or corrupt file, not of real data.
_MAX_DIM = 1 << 16

Progress = Callable[[int], None]


@dataclass(frozen=True)
class VectorInput:
    """Vectors (n, d) ready for the build (memory-mapped where possible), the attribute columns that came
    with them (a ``pyarrow.Table`` or None) and a description of the source for messages."""

    vectors: NDArray[Any]
    attributes: Any
    source: str


def is_path(x: object) -> bool:
    return isinstance(x, str | os.PathLike)


def read_vectors(source: object, *, progress: Progress | None = None) -> VectorInput:
    """Vectors from an array, a ``pyarrow.Table``, a file path or a list of file paths (concatenated).

    Files are checked for readability, shape, dtype and non-finite values; arrays are checked by the build.
    ``progress(rows)`` is called as rows are checked or copied.
    """
    if is_path(source):
        return _read_file(Path(source), progress)
    if isinstance(source, list | tuple) and source and all(is_path(s) for s in source):
        return _concatenate([_read_file(Path(s), progress) for s in source])
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(source, pa.Table):
        return _read_table(source, "the vectors table", progress)
    try:
        vectors = np.asarray(source)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"vectors must be a numeric 2-D array; could not convert them ({e})") from None
    _check_matrix(vectors, "the vectors array")
    _check_finite(vectors, "the vectors array", progress)
    return VectorInput(vectors, None, "the vectors array")


def read_attributes(source: object, n: int) -> Any:
    """Attributes as given (None, a mapping or a ``pyarrow.Table``), or read from a table file with n rows."""
    if not is_path(source):
        return source
    path = Path(source)
    dataset = _dataset(path, ATTRIBUTE_SUFFIXES, "attributes")
    table = _arrow_call(path, dataset.to_table)
    if table.num_rows != n:
        raise InvalidInputError(
            f"attributes file {path} has {table.num_rows} rows but there are {n} vectors; give exactly one "
            "row per vector, in the same order"
        )
    return table


def merge_attributes(vectors: VectorInput, attributes: object) -> Any:
    """The attributes to build with: the given ones, or the columns that came with the vectors."""
    if vectors.attributes is None:
        return attributes
    if attributes is not None:
        raise InvalidInputError(
            f"{vectors.source} has attribute columns {vectors.attributes.column_names} and attributes were "
            "also given; pass attributes=None to use the table's columns, or drop them from the table"
        )
    return vectors.attributes


def _read_file(path: Path, progress: Progress | None) -> VectorInput:
    suffix = path.suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        raise InvalidInputError(
            f"vectors file {path} has an unknown type {suffix or '(no extension)'!r}; supported: "
            f"{', '.join(VECTOR_SUFFIXES)}"
        )
    if not path.is_file():
        raise InvalidInputError(f"vectors file {path} does not exist or is not a file; check the path")
    if suffix in _TABLE_FORMATS:
        dataset = _dataset(path, VECTOR_SUFFIXES, "vectors")
        return _read_table(dataset, f"vectors file {path}", progress, path)
    vectors = _read_npy(path) if suffix == ".npy" else _read_xvecs(path, _XVECS[suffix], progress)
    _check_finite(vectors, f"vectors file {path}", progress)
    return VectorInput(vectors, None, f"vectors file {path}")


def _read_npy(path: Path) -> NDArray[Any]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InvalidInputError(
            f"vectors file {path} is not a readable .npy array of numbers ({e}); save it with np.save"
        ) from None
    _check_matrix(array, f"vectors file {path}")
    return array


def _check_matrix(array: NDArray[Any], what: str) -> None:
    if array.dtype.kind not in "fiu" or array.dtype.itemsize > 8:
        raise InvalidInputError(
            f"{what} has unsupported dtype {array.dtype}; use float32 (or uint8, other ints and floats are "
            "converted to float32)"
        )
    if array.ndim != 2:
        raise InvalidInputError(f"{what} has shape {array.shape}; vectors must be a 2-D array (rows, dims)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"{what} is empty (shape {array.shape}); it needs at least one vector")


def _read_xvecs(path: Path, value: np.dtype[Any], progress: Progress | None) -> NDArray[Any]:
    """Rows of ``<i4 d`` followed by ``d`` values, the TEXMEX format; returns a strided memory map."""
    what = f"vectors file {path}"
    size = path.stat().st_size
    if size < 4:
        raise InvalidInputError(f"{what} is empty; it needs at least one vector")
    dim = int(np.fromfile(path, dtype="<i4", count=1)[0])
    if not 1 <= dim <= _MAX_DIM:
        raise InvalidInputError(f"{what} starts with dimension {dim}; it is not a valid {path.suffix} file")
    row_bytes = 4 + dim * value.itemsize
    if size % row_bytes:
        raise InvalidInputError(
            f"{what} has {size} bytes, not a multiple of its {row_bytes}-byte rows (dimension {dim}); "
            "the file is truncated or its rows differ in dimension"
        )
    rows = np.memmap(path, dtype=np.dtype([("dim", "<i4"), ("values", value, (dim,))]), mode="r")
    for start in range(0, rows.shape[0], BLOCK_ROWS):
        dims = rows["dim"][start : start + BLOCK_ROWS]
        if (dims != dim).any():
            row = start + int(np.argmax(dims != dim))
            raise InvalidInputError(
                f"{what} row {row} has dimension {int(dims[row - start])}, but the first row has {dim}; "
                "every row must have the same dimension"
            )
    return rows["values"]


def _check_finite(vectors: NDArray[Any], what: str, progress: Progress | None) -> None:
    n = vectors.shape[0]
    for start in range(0, n, BLOCK_ROWS):
        block = vectors[start : start + BLOCK_ROWS]
        if block.dtype.kind == "f":
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                row = start + int(np.argmin(finite))
                raise InvalidInputError(
                    f"{what} has NaN or infinite values (first at row {row}); remove or impute those vectors"
                )
        if progress is not None:
            progress(block.shape[0])


def _dataset(path: Path, allowed: Sequence[str], role: str) -> Any:
    suffix = path.suffix.lower()
    if suffix not in allowed or suffix not in _TABLE_FORMATS:
        raise InvalidInputError(
            f"{role} file {path} has an unknown type {suffix or '(no extension)'!r}; supported: {', '.join(allowed)}"
        )
    if not path.is_file():
        raise InvalidInputError(f"{role} file {path} does not exist or is not a file; check the path")
    import pyarrow.dataset as ds

    return _arrow_call(path, ds.dataset, str(path), format=_TABLE_FORMATS[suffix])


def _arrow_call(path: Path, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    import pyarrow as pa

    try:
        return fn(*args, **kwargs)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InvalidInputError(f"cannot read {path} as a {path.suffix} table: {e}") from None


def _vector_column(schema: Any, what: str) -> str:
    import pyarrow as pa

    lists = [
        f.name
        for f in schema
        if (pa.types.is_list(f.type) or pa.types.is_large_list(f.type) or pa.types.is_fixed_size_list(f.type))
        and (pa.types.is_integer(f.type.value_type) or pa.types.is_floating(f.type.value_type))
    ]
    if len(lists) == 1:
        return lists[0]
    preferred = [name for name in VECTOR_COLUMN_NAMES if name in lists]
    if preferred:
        return preferred[0]
    if not lists:
        raise InvalidInputError(
            f"{what} has no vector column; store vectors as a fixed_size_list (or list) of numbers, e.g. "
            "pa.FixedSizeListArray.from_arrays(values, dim)"
        )
    raise InvalidInputError(
        f"{what} has several list columns {lists}; name the vector column one of {list(VECTOR_COLUMN_NAMES)}"
    )


def _read_table(table: Any, what: str, progress: Progress | None, path: Path | None = None) -> VectorInput:
    """Vectors from a ``pyarrow.Table`` or ``pyarrow.dataset.Dataset``, batch by batch."""
    import pyarrow as pa

    column = _vector_column(table.schema, what)
    value_type = table.schema.field(column).type.value_type
    dtype = np.dtype(np.uint8) if pa.types.is_uint8(value_type) else np.dtype(np.float32)
    if isinstance(table, pa.Table):
        n, batches = table.num_rows, table.select([column]).to_batches(BLOCK_ROWS)
    else:
        n = _arrow_call(path or Path(what), table.count_rows)
        batches = table.to_batches(columns=[column], batch_size=BLOCK_ROWS)
    if n == 0:
        raise InvalidInputError(f"{what} has no rows; it needs at least one vector")
    out: NDArray[Any] | None = None
    start = 0
    for batch in batches:
        block = _batch_vectors(batch.column(0), what, column, start)
        if block.shape[0] == 0:
            continue
        if out is None:
            out = np.empty((n, block.shape[1]), dtype=dtype)
        elif block.shape[1] != out.shape[1]:
            raise InvalidInputError(
                f"{what} column {column!r} row {start} has {block.shape[1]} values but earlier rows have "
                f"{out.shape[1]}; every vector must have the same dimension"
            )
        out[start : start + block.shape[0]] = block
        start += block.shape[0]
        if progress is not None:
            progress(block.shape[0])
    if out is None or out.shape[1] == 0:
        raise InvalidInputError(f"{what} column {column!r} holds only empty vectors")
    _check_finite(out, what, None)
    others = [name for name in table.schema.names if name != column]
    attributes = None
    if others:
        attributes = table.select(others) if isinstance(table, pa.Table) else table.to_table(columns=others)
    return VectorInput(out, attributes, what)


def _batch_vectors(array: Any, what: str, column: str, start: int) -> NDArray[Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if array.null_count:
        row = start + pc.index(array.is_null(), True).as_py()
        raise InvalidInputError(f"{what} column {column!r} has a null vector at row {row}; drop or fill it")
    if len(array) == 0:
        return np.empty((0, 0))
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
    else:
        lengths = pc.list_value_length(array).to_numpy()
        dim = int(lengths[0])
        if (lengths != dim).any():
            row = int(np.argmax(lengths != dim))
            raise InvalidInputError(
                f"{what} column {column!r} row {start + row} has {lengths[row]} values but row {start} has "
                f"{dim}; every vector must have the same dimension"
            )
    values = array.flatten()
    if values.null_count:
        raise InvalidInputError(f"{what} column {column!r} has null values inside vectors near row {start}")
    return values.to_numpy(zero_copy_only=False).reshape(len(array), dim)


def _concatenate(inputs: Sequence[VectorInput]) -> VectorInput:
    """One input from several files with equal dimensions (the data is copied once)."""
    first = inputs[0]
    for other in inputs[1:]:
        if other.vectors.shape[1] != first.vectors.shape[1]:
            raise InvalidInputError(
                f"dimension mismatch between files: {first.source} has {first.vectors.shape[1]} dimensions, "
                f"{other.source} has {other.vectors.shape[1]}; all vector files of one index must match"
            )
        if (other.attributes is None) != (first.attributes is None):
            raise InvalidInputError(f"{first.source} and {other.source} differ in whether they carry attribute columns")
    uint8 = all(i.vectors.dtype == np.uint8 for i in inputs)
    vectors = np.concatenate([i.vectors for i in inputs], dtype=np.uint8 if uint8 else np.float32)
    attributes = None
    if first.attributes is not None:
        import pyarrow as pa

        try:
            attributes = pa.concat_tables([i.attributes for i in inputs])
        except pa.ArrowInvalid as e:
            raise InvalidInputError(f"attribute columns of the vector files do not match: {e}") from None
    return VectorInput(vectors, attributes, " + ".join(i.source for i in inputs))


def describe(source: object) -> str:
    """A short description of a vectors or attributes argument for messages and manifests."""
    if is_path(source):
        return str(source)
    if isinstance(source, list | tuple) and source and all(is_path(s) for s in source):
        return ", ".join(map(str, source))
    if isinstance(source, Mapping):
        return f"dict of {len(source)} columns"
    return type(source).__name__
