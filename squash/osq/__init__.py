"""OSQ, the optimized scalar quantizer: KLT rotation, non-uniform bits, Lloyd-Max cells, segments."""

from squash.osq.bits import BitAllocation, allocate_bits, total_bit_budget
from squash.osq.bounds import accumulate, ip_lower, ip_tables, l2_lower, l2_tables, representative_tables
from squash.osq.cells import CellTable, fit_cells, lloyd_max
from squash.osq.packing import SegmentLayout
from squash.osq.quantizer import OSQ, EncodedVectors
from squash.osq.rotation import Rotation, fit_klt
from squash.osq.signs import hamming, sign_codes, sign_width

__all__ = [
    "OSQ",
    "BitAllocation",
    "CellTable",
    "EncodedVectors",
    "Rotation",
    "SegmentLayout",
    "accumulate",
    "allocate_bits",
    "fit_cells",
    "fit_klt",
    "hamming",
    "ip_lower",
    "ip_tables",
    "l2_lower",
    "l2_tables",
    "lloyd_max",
    "representative_tables",
    "sign_codes",
    "sign_width",
    "total_bit_budget",
]
