"""Matching rows per partition from attribute-code histograms, for same-shaped compiled trees at once:
rows certainly and possibly matching, a ceiling on the rows whose codes alone prove a match, and an
estimate between the bounds (:mod:`squash.filter.batch` groups filters for them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from squash.errors import InvalidInputError
from squash.filter.cells import CODES, Combine, Negate, Node, Table


def checked_histograms(histograms: np.ndarray, attributes: int) -> tuple[np.ndarray, np.ndarray]:
    """``histograms`` (P, A, 256) as int64 with the rows of each partition (P,), or InvalidInputError."""
    if histograms.ndim != 3 or histograms.shape[1:] != (attributes, CODES) or histograms.dtype.kind not in "iu":
        raise InvalidInputError(f"code histograms must be an integer array of shape ({attributes}, {CODES})")
    totals = histograms.sum(axis=2, dtype=np.int64)
    if (totals != totals[:, :1]).any():
        raise InvalidInputError("code histograms of one partition must all count the same number of rows")
    return histograms.astype(np.int64, copy=False), totals[:, 0] if attributes else totals.sum(axis=1)


def weights(nodes: Sequence[Node], name: str) -> np.ndarray:
    """(G, 256) code weights ``name`` ("full" or "maybe") of same-attribute tables."""
    return np.stack([getattr(t, name) for t in nodes])


def _children(nodes: Sequence[Node]) -> list[list[Node]]:
    """The j-th children of same-shaped combine nodes, for every j."""
    combined = [t for t in nodes if isinstance(t, Combine)]
    return [[t.children[j] for t in combined] for j in range(len(combined[0].children))]


def bounds(nodes: Sequence[Node], histograms: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(certain, possible), each (G, P), of same-shaped trees ``nodes`` over ``histograms`` (P, A, 256), n (P,)."""
    first = nodes[0]
    if isinstance(first, Table):
        counts = histograms[:, first.attribute].T
        return weights(nodes, "full") @ counts, weights(nodes, "maybe") @ counts
    if isinstance(first, Negate):
        certain, possible = bounds([t.child for t in nodes if isinstance(t, Negate)], histograms, n)
        return n - possible, n - certain
    certain, possible = zip(*(bounds(c, histograms, n) for c in _children(nodes)), strict=True)
    if isinstance(first, Combine) and first.is_and:
        return np.maximum(0, sum(certain) - (len(certain) - 1) * n), np.minimum.reduce(possible)
    return np.maximum.reduce(certain), np.minimum(n, sum(possible))


def full_max(nodes: Sequence[Node], histograms: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(G, P) upper bounds on the rows whose codes alone prove a match."""
    first = nodes[0]
    if isinstance(first, Table):
        return weights(nodes, "full") @ histograms[:, first.attribute].T
    if isinstance(first, Combine):
        ceilings = [full_max(c, histograms, n) for c in _children(nodes)]
        return np.minimum.reduce(ceilings) if first.is_and else np.minimum(n, sum(ceilings))
    return np.broadcast_to(n, (len(nodes), len(n)))


def _share(nodes: Sequence[Node], histograms: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(G, P) expected matching fractions, attributes independent and PARTIAL cells half matching."""
    first = nodes[0]
    if isinstance(first, Table):
        # FULL rows count whole, PARTIAL rows half: (full + maybe) / 2 weighs them so.
        both = weights(nodes, "full") + weights(nodes, "maybe")
        return 0.5 * (both @ histograms[:, first.attribute].T) / np.maximum(n, 1)
    if isinstance(first, Negate):
        return 1.0 - _share([t.child for t in nodes if isinstance(t, Negate)], histograms, n)
    shares = [_share(c, histograms, n) for c in _children(nodes)]
    if isinstance(first, Combine) and first.is_and:
        return np.multiply.reduce(shares)
    return 1.0 - np.multiply.reduce([1.0 - x for x in shares])


def estimates(nodes: Sequence[Node], histograms: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(G, P) expected matching rows, within the (certain, possible) bounds so exact where they meet."""
    certain, possible = bounds(nodes, histograms, n)
    return np.minimum(np.maximum(_share(nodes, histograms, n) * n, certain), possible)
