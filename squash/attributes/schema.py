"""The typed attribute schema of an index (design section 3.1): names, types and category dictionaries.

Every attribute is stored as one "raw column" of numbers in its own units: INT as int64, FLOAT as float64,
BOOL as int64 0/1 and CATEGORY as the int64 index of the value in the schema's sorted category list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

from squash.errors import FilterError, InvalidInputError

# INT attributes are compared as float64 (cell bounds, filter operands), which is exact only up to 2**53.
MAX_EXACT_INT = 2**53


class AttrType(StrEnum):
    """Type of an attribute, which fixes its raw representation and the filter operators it accepts."""

    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    CATEGORY = "category"


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute. ``categories`` (CATEGORY only) is the dictionary: a value's raw code is its index."""

    name: str
    type: AttrType
    categories: tuple[str, ...] = ()


def check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"attribute name {name!r} is not a non-empty string; name every attribute")
    check_text(name, f"attribute name {name!r}")
    if name.startswith("$"):
        raise InvalidInputError(
            f"attribute name {name!r} starts with '$', which filters reserve for operators; rename it"
        )


def check_text(text: str, what: str) -> None:
    """Names and categories travel in JSON payloads and stored objects, which hold only valid UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} is not valid Unicode ({exc.reason}); UTF-8 cannot store it: fix the text"
        ) from None


def _truncated(items: tuple[str, ...] | list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f", ... ({len(items)} in total)" if len(items) > limit else "")


@dataclass(frozen=True)
class AttributeSchema:
    """Ordered attributes of an index; the order is the column order of the attribute codes."""

    fields: tuple[AttributeSpec, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.fields:
            check_name(spec.name)
            if spec.name in seen:
                raise InvalidInputError(f"attribute {spec.name!r} appears twice; attribute names must be unique")
            seen.add(spec.name)
            if not isinstance(spec.type, AttrType):
                raise InvalidInputError(f"attribute {spec.name!r} has type {spec.type!r}, not an AttrType")
            if spec.type is not AttrType.CATEGORY and spec.categories:
                raise InvalidInputError(
                    f"attribute {spec.name!r} of type {spec.type} has categories; only category attributes have them"
                )
            if not all(isinstance(c, str) for c in spec.categories):
                raise InvalidInputError(f"categories of attribute {spec.name!r} must all be strings")
            for category in spec.categories:
                check_text(category, f"category {category!r} of attribute {spec.name!r}")
            if len(set(spec.categories)) != len(spec.categories):
                raise InvalidInputError(f"categories of attribute {spec.name!r} are not unique")

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {spec.name: i for i, spec in enumerate(self.fields)}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def index(self, name: str) -> int:
        """Position of attribute ``name``; raises FilterError naming the known attributes if there is none."""
        try:
            return self._positions[name]
        except (KeyError, TypeError):
            known = _truncated(self.names) if self.fields else "none: the index has no attributes"
            raise FilterError(f"unknown attribute {name!r}; known attributes: {known}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain, msgpack-able description."""
        fields: list[dict[str, Any]] = []
        for spec in self.fields:
            entry: dict[str, Any] = {"name": spec.name, "type": spec.type.value}
            if spec.type is AttrType.CATEGORY:
                entry["categories"] = list(spec.categories)
            fields.append(entry)
        return {"fields": fields}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributeSchema:
        """Inverse of :meth:`to_dict`, validating every entry."""
        if not isinstance(d, Mapping) or not isinstance(d.get("fields"), list):
            raise InvalidInputError("attribute schema must be a mapping with a 'fields' list")
        specs = []
        for entry in d["fields"]:
            if not isinstance(entry, Mapping) or set(entry) - {"name", "type", "categories"}:
                raise InvalidInputError(
                    f"attribute schema entry {entry!r} must be a mapping with keys name, type[, categories]"
                )
            try:
                kind = AttrType(entry.get("type"))
            except ValueError:
                raise InvalidInputError(
                    f"attribute {entry.get('name')!r} has unknown type {entry.get('type')!r}; "
                    f"expected one of {[t.value for t in AttrType]}"
                ) from None
            categories = entry.get("categories", [])
            if not isinstance(categories, list):
                raise InvalidInputError(f"categories of attribute {entry.get('name')!r} must be a list")
            specs.append(AttributeSpec(entry.get("name"), kind, tuple(categories)))
        return cls(tuple(specs))
