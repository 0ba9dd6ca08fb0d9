"""Coercion and checks for arrays that enter Squash from users or payloads."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from squash.errors import InvalidInputError

_NUMERIC_KINDS = "iuf"
# Largest coordinate magnitude accepted: squared distances must stay finite in float32 (max ~3.4e38) even
# at MAX_DIM (65,536) dimensions, and 65,536 * (2 * 2**50)**2 is about 3e35.
MAX_ABS = 2.0**50


def as_vectors(x: object, *, name: str = "vectors", dim: int | None = None) -> NDArray[np.float32]:
    """Return ``x`` as a C-contiguous float32 matrix (n, d), or raise a clear error.

    A 1-D input is one vector. Checked: numeric dtype, 2-D after promotion, at least one row and
    column, every value finite and at most `MAX_ABS` in magnitude, and ``d == dim`` when ``dim`` is given.
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
    with np.errstate(over="ignore"):  # values past float32's range become inf, rejected just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bounded = np.abs(out) <= MAX_ABS  # False for NaN and infinity too
    if not bounded.all():
        row = int(np.nonzero(~bounded.all(axis=1))[0][0])
        if not np.isfinite(out[row]).all():
            raise InvalidInputError(
                f"{name} contain NaN or infinite values (first at row {row}); remove or impute them"
            )
        raise InvalidInputError(
            f"{name} have values over the limit of {MAX_ABS:.3g} in magnitude (first at row {row}), which would "
            "overflow float32 distances; rescale them"
        )
    return out
