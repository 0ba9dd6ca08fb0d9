"""Coercion and checks for arrays that enter Squash from users or payloads."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError

_NUMERIC_KINDS = "iuf"


def as_vectors(x: object, *, name: str = "vectors", dim: int | None = None) -> NDArray[np.float32]:
    """Return ``x`` as a C-contiguous float32 matrix (n, d), or raise a clear error.

    A 1-D input is one vector. Checked: numeric dtype, 2-D after promotion, at least one row and
    column, every value finite, and ``d == dim`` when ``dim`` is given.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a numeric array; could not convert it ({exc})") from exc
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise InvalidInputError(
            f"{name} must hold numbers (ints or floats), got dtype {arr.dtype}; convert it with "
            f"np.asarray({name}, dtype=np.float32)"
        )
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D array (rows, dims), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"{name} is empty (shape {arr.shape}); pass at least one vector")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(
            f"{name} have {arr.shape[1]} dimensions but the index has {dim}; pass vectors of dimension {dim}"
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype.kind == "f":
        finite = np.isfinite(out)
        if not finite.all():
            row = int(np.nonzero(~finite.all(axis=1))[0][0])
            raise InvalidInputError(
                f"{name} contain NaN or infinite values (first at row {row}); remove or impute them"
            )
    return out
