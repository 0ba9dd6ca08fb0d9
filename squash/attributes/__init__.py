"""Typed attribute schema, attribute normalisation and attribute quantization (design section 3.1).

`schema`: the attributes of an index and their raw representation; `columns`: user attributes to raw
columns; `quantizer`: raw values to uint8 cell codes with observed cell intervals.
"""

from squash.attributes.columns import normalize_attributes
from squash.attributes.quantizer import MAX_BITS, AttributeQuantizer
from squash.attributes.schema import MAX_EXACT_INT, AttributeSchema, AttributeSpec, AttrType

__all__ = [
    "MAX_BITS",
    "MAX_EXACT_INT",
    "AttrType",
    "AttributeQuantizer",
    "AttributeSchema",
    "AttributeSpec",
    "normalize_attributes",
]
