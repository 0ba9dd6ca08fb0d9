"""1-bit sign codes and Hamming distances for the cheapest pruning level.

Rows are packed row-major (Hamming needs whole rows) and padded to a multiple of 8 bytes so the
popcount runs on uint64 words: 2 words instead of 16 bytes per SIFT row.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def sign_width(dim: int) -> int:
    """Bytes per packed sign row for ``dim`` dimensions (a multiple of 8)."""
    return max(8, -(-dim // 64) * 8)


def sign_codes(z: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Pack ``z > 0`` of rotated rows (n, D) into (n, sign_width(D)) uint8, MSB-first."""
    n, d = z.shape
    out = np.zeros((n, sign_width(d)), dtype=np.uint8)
    out[:, : (d + 7) // 8] = np.packbits(z > 0, axis=1)
    return out


def hamming(codes: NDArray[np.uint8], query_codes: NDArray[np.uint8]) -> NDArray[np.int64]:
    """Hamming distances (nq, n) between query sign rows (nq, W) and data sign rows (n, W)."""
    words = codes.view(np.uint64)
    qwords = query_codes.view(np.uint64)
    return np.bitwise_count(words[None, :, :] ^ qwords[:, None, :]).sum(axis=2, dtype=np.int64)
