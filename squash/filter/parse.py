"""The filter language: JSON-compatible expressions parsed into a validated predicate tree (design 3.2).

Grammar (Pinecone / S3 Vectors style)::

    filter  := {key: term, ...}                      several keys: all must hold (AND)
    key     := "$and" -> [filter, ...] | "$or" -> [filter, ...] | "$not" -> filter | field name
    term    := value                                 equality
             | {"$eq"|"$ne"|"$gt"|"$gte"|"$lt"|"$lte": value, "$in"|"$nin": [value, ...], ...}
                                                     several operators: all must hold (AND)

Operands are checked against the field's type: INT takes ints and integral floats, FLOAT takes ints and floats
(finite), BOOL takes booleans only (and no range operators), CATEGORY takes the category names of the schema
(and no range operators). An unknown category name is an error rather than "matches nothing", because it is
far more often a typo. Predicates hold operands in the raw units of the attribute (category codes, 0/1 for
booleans), as float64: exact for INT attributes, which are limited to +-2**53.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from squash.attributes import MAX_EXACT_INT, AttributeSchema, AttributeSpec, AttrType
from squash.errors import FilterError

MAX_DEPTH = 32
MAX_LEAVES = 1024
_INT_CLAMP = MAX_EXACT_INT + 2


class Op(StrEnum):
    """Comparison operators of a :class:`Compare` leaf."""

    EQ = "$eq"
    NE = "$ne"
    GT = "$gt"
    GTE = "$gte"
    LT = "$lt"
    LTE = "$lte"


_RANGE_OPS = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE})
_FIELD_OPS = (*(op.value for op in Op), "$in", "$nin")
_LOGICAL_OPS = ("$and", "$or", "$not")


@dataclass(frozen=True)
class Compare:
    """``attribute <op> value``; ``attribute`` is the schema position of ``field``."""

    field: str
    attribute: int
    op: Op
    value: float


@dataclass(frozen=True)
class In:
    """``attribute in values``; ``values`` sorted and distinct. ``$nin`` parses to ``Not(In(...))``."""

    field: str
    attribute: int
    values: tuple[float, ...]


@dataclass(frozen=True)
class And:
    children: tuple[Predicate, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Predicate, ...]


@dataclass(frozen=True)
class Not:
    child: Predicate


Predicate = Compare | In | And | Or | Not


def parse_filter(expr: Any, schema: AttributeSchema) -> Predicate | None:
    """Validate ``expr`` against ``schema`` and return its predicate tree.

    ``None`` and the empty object ``{}`` mean "no filter" and return None. Raises FilterError naming the
    offending part of the expression (its path, e.g. ``$and[1].price``) and how to fix it.
    """
    if expr is None or (isinstance(expr, Mapping) and not expr):
        return None
    return _Parser(schema).filter(expr, 1, "filter")


class _Parser:
    def __init__(self, schema: AttributeSchema) -> None:
        self.schema = schema
        self.leaves = 0
        self.codes: dict[str, dict[str, int]] = {}

    def filter(self, expr: Any, depth: int, path: str) -> Predicate:
        if depth > MAX_DEPTH:
            raise FilterError(f"{path}: filter nested deeper than the limit of {MAX_DEPTH} levels; flatten it")
        if type(expr) is not dict and not isinstance(expr, Mapping):
            raise FilterError(f"{path}: expected a filter object (dict), got {type(expr).__name__}")
        if not expr:
            raise FilterError(f"{path}: empty filter object; give at least one condition")
        parts = [self.key(key, value, depth, f"{path}.{key}") for key, value in expr.items()]
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def key(self, key: Any, value: Any, depth: int, path: str) -> Predicate:
        if not isinstance(key, str):
            raise FilterError(f"{path}: filter keys must be strings, got {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(value, list | tuple) or not value:
                raise FilterError(f"{path}: {key} takes a non-empty list of filter objects")
            children = tuple(self.filter(c, depth + 1, f"{path}[{i}]") for i, c in enumerate(value))
            return And(children) if key == "$and" else Or(children)
        if key == "$not":
            return Not(self.filter(value, depth + 1, path))
        if key.startswith("$"):
            raise FilterError(
                f"{path}: unknown logical operator {key!r}; valid: {', '.join(_LOGICAL_OPS)}, "
                f"or a field name (field operators {', '.join(_FIELD_OPS)} go inside a field's object)"
            )
        try:
            attribute = self.schema.index(key)
        except FilterError as error:
            raise FilterError(f"{path}: {error}") from None
        if type(value) is dict or isinstance(value, Mapping):
            if not value:
                raise FilterError(f"{path}: empty operator object; give an operator such as {{'$eq': value}}")
            parts = [self.leaf(attribute, op, operand, f"{path}.{op}") for op, operand in value.items()]
            return parts[0] if len(parts) == 1 else And(tuple(parts))
        if isinstance(value, list | tuple):
            raise FilterError(f"{path}: a list is not a value; for set membership use {{'$in': [...]}}")
        return self.leaf(attribute, "$eq", value, path)

    def leaf(self, attribute: int, op: Any, operand: Any, path: str) -> Predicate:
        self.leaves += 1
        if self.leaves > MAX_LEAVES:
            raise FilterError(f"{path}: filter has more than the limit of {MAX_LEAVES} conditions; simplify it")
        spec = self.schema.fields[attribute]
        if op in ("$in", "$nin"):
            if not isinstance(operand, list | tuple) or not operand:
                raise FilterError(f"{path}: {op} takes a non-empty list of values")
            values = np.unique([self.operand(spec, v, path) for v in operand])
            node = In(spec.name, attribute, tuple(float(v) for v in values))
            return node if op == "$in" else Not(node)
        if op not in _FIELD_OPS:
            raise FilterError(f"{path}: unknown operator {op!r}; valid field operators: {', '.join(_FIELD_OPS)}")
        op = Op(op)
        if op in _RANGE_OPS and spec.type in (AttrType.BOOL, AttrType.CATEGORY):
            raise FilterError(
                f"{path}: range operator {op} does not apply to {spec.type} attribute {spec.name!r}; "
                "use $eq, $ne, $in or $nin"
            )
        return Compare(spec.name, attribute, op, self.operand(spec, operand, path))

    def operand(self, spec: AttributeSpec, value: Any, path: str) -> float:
        """``value`` in the raw units of ``spec``, or FilterError."""
        if spec.type is AttrType.BOOL:
            if isinstance(value, bool | np.bool_):
                return float(value)
            raise FilterError(f"{path}: bool attribute {spec.name!r} takes true or false, not {value!r}")
        if spec.type is AttrType.CATEGORY:
            return self.category_code(spec, value, path)
        kind = type(value)
        # Plain floats and ints skip the abstract-class checks, which cost more than the rest of a leaf.
        builtin = kind is float or kind is int
        if not builtin and (isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real)):
            raise FilterError(f"{path}: {spec.type} attribute {spec.name!r} takes a number, not {value!r}")
        if kind is int or (not builtin and isinstance(value, numbers.Integral)):
            value = int(value)
            if spec.type is AttrType.INT and abs(value) > MAX_EXACT_INT:
                # Stored INT values lie within +-2**53, so a larger operand compares like +-(2**53 + 2),
                # which float64 holds exactly (2**53 + 1 itself would round).
                return float(_INT_CLAMP if value > 0 else -_INT_CLAMP)  # copysign would overflow on 10**400
            try:
                return float(value)
            except OverflowError:
                raise FilterError(f"{path}: operand {value} is too large for a float64") from None
        number = float(value)
        if math.isnan(number):
            raise FilterError(f"{path}: NaN operand for attribute {spec.name!r}; NaN never compares true")
        if math.isinf(number):
            raise FilterError(f"{path}: non-finite operand {number} for attribute {spec.name!r}; give a finite one")
        if spec.type is AttrType.INT and not number.is_integer():
            raise FilterError(f"{path}: int attribute {spec.name!r} takes integers, not {value!r}; round it")
        return number

    def category_code(self, spec: AttributeSpec, value: Any, path: str) -> float:
        if not isinstance(value, str):
            raise FilterError(f"{path}: category attribute {spec.name!r} takes category names, not {value!r}")
        if spec.name not in self.codes:
            self.codes[spec.name] = {c: i for i, c in enumerate(spec.categories)}
        code = self.codes[spec.name].get(value)
        if code is None:
            shown = ", ".join(repr(c) for c in spec.categories[:20])
            more = f", ... ({len(spec.categories)} in total)" if len(spec.categories) > 20 else ""
            raise FilterError(f"{path}: unknown category {value!r} of attribute {spec.name!r}; known: {shown}{more}")
        return float(code)


def canonical_filter(expr: Any) -> str:
    """A stable text form of a JSON filter, so equal filters compile once.

    Only what strict JSON can carry passes: AWS Lambda refuses a payload holding NaN or infinity, and UTF-8
    (hence any payload) cannot hold a lone surrogate, so such a filter fails here rather than in transit.
    """
    try:
        text = json.dumps(expr, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except RecursionError:
        raise FilterError(f"filter nested deeper than the limit of {MAX_DEPTH} levels; flatten it") from None
    except (TypeError, ValueError) as exc:
        raise FilterError(
            f"filter is not strict JSON ({exc}); build it from dicts, lists, strings, booleans and finite numbers "
            "(NaN and infinity never compare true, and a Lambda payload cannot carry them)"
        ) from None
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise FilterError(
            f"filter holds text that is not valid Unicode ({exc.reason} at {exc.object[exc.start : exc.end]!r}); "
            "attribute names and categories are always valid UTF-8"
        ) from None
    return text
