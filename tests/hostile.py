"""Hostile values for fuzz tests: non-finite and out-of-range numbers, invalid Unicode, deep nesting, foreign types.

A public entry point given any of them must answer or raise a `squash.SquashError`, never a raw exception.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

from squash.filter import MAX_DEPTH


def nested_filter(depth: int) -> dict[str, Any]:
    """``{"$not": {"$not": ... {"price": 1}}}`` with ``depth`` levels of $not."""
    expr: dict[str, Any] = {"price": 1}
    for _ in range(depth):
        expr = {"$not": expr}
    return expr


HOSTILE_NUMBERS = [
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    5e-324,
    -0.0,
    0,
    -1,
    2**31,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    2**64,
    2**70,
    10**400,
    np.float64(math.nan),
    np.float32(math.inf),
    np.int64(2**62),
    np.uint64(2**64 - 1),
]
HOSTILE_TEXT = ["\ud800", "x\udfff", "\x00", "", "$and", "$", "é", "\U0001f600", "a" * 300, "1e400", "NaN"]
numbers = st.sampled_from(HOSTILE_NUMBERS) | st.integers() | st.floats()
texts = st.sampled_from(HOSTILE_TEXT) | st.text(max_size=4)
# What a parsed payload can hold: Python's json.loads yields NaN, infinities, huge ints and lone surrogates.
json_atoms = st.one_of(
    st.sampled_from([v for v in HOSTILE_NUMBERS if type(v) in (int, float)]) | st.integers() | st.floats(),
    texts,
    st.none(),
    st.booleans(),
)
json_values = st.recursive(
    json_atoms,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
atoms = st.one_of(
    numbers,
    texts,
    st.none(),
    st.booleans(),
    st.binary(max_size=3),
    st.just(object()),
    st.just(np.zeros(2)),
    st.sampled_from([(), set(), frozenset({1})]),
)
# Past the 32-level limit; far deeper ones (tests/test_hostile_inputs.py) defeat hypothesis's printing.
deep = st.sampled_from([MAX_DEPTH + 1, 150]).map(nested_filter)
trees = st.recursive(
    atoms,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(texts | numbers | st.none(), children, max_size=3)
    ),
    max_leaves=8,
)
hostile = st.one_of(atoms, trees, deep)


def hostile_arrays(shape: tuple[int, int]) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``shape`` full of one hostile number or of a foreign dtype, and arrays of other shapes."""
    rows, dim = shape
    return st.one_of(
        st.sampled_from(HOSTILE_NUMBERS).map(lambda v: np.full(shape, v)),
        st.sampled_from([np.complex64, object, np.str_, np.bool_, np.uint64]).map(lambda t: np.ones(shape, t)),
        st.sampled_from([(0, dim), (rows, 0), (rows, dim + 1), (1, rows, dim), ()]).map(np.ones),
    )
