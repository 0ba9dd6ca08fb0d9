"""Filter language: parse JSON-compatible filters against a schema and evaluate them on cells and rows."""

from __future__ import annotations

from squash.filter.cells import FULL, NONE, PARTIAL
from squash.filter.evaluate import CompiledFilter, compile_exprs, compile_filter, group_of
from squash.filter.parse import (
    MAX_DEPTH,
    MAX_LEAVES,
    And,
    Compare,
    In,
    Not,
    Op,
    Or,
    Predicate,
    canonical_filter,
    parse_filter,
)

__all__ = [
    "FULL",
    "MAX_DEPTH",
    "MAX_LEAVES",
    "NONE",
    "PARTIAL",
    "And",
    "Compare",
    "CompiledFilter",
    "In",
    "Not",
    "Op",
    "Or",
    "Predicate",
    "canonical_filter",
    "compile_exprs",
    "compile_filter",
    "group_of",
    "parse_filter",
]
