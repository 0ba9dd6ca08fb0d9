"""The binary container of partition and routing objects: a checksummed header, then aligned numpy sections.

Layout (little-endian)::

    0   magic        8 bytes   b"SQSHPART" (partition) or b"SQSHROUT" (routing)
    8   version      u32       container format version
    12  reserved     u32       zero
    16  total_size   u64       size of the whole object in bytes
    24  header_len   u32       length of the msgpack header that follows the prefix
    28  header_crc   u32       crc32 of bytes [0, 28) and [32, data_offset)
    32  header       msgpack   {"meta": {...}, "sections": [{name, dtype, shape, offset, nbytes, crc32}, ...]}
        zero padding up to data_offset = align64(32 + header_len)
        sections, in table order, each starting on a 64-byte boundary and zero-padded to the next one

A section's crc32 covers its padded span ``[offset, offset + align64(nbytes))``, so every byte of an object is
under exactly one checksum, and the layout is fully determined by the table (the reader checks it is).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from squash.errors import CorruptObjectError

FORMAT_VERSION = 3
ALIGNMENT = 64
PREFIX_SIZE = 32
# Far above any real header (a few KiB); a corrupt length field must not make a reader fetch gigabytes.
MAX_HEADER_LEN = 16 << 20

_PREFIX = struct.Struct("<8sIIQII")
_CRC_AT = 28
# Sections hold plain numbers only: no object, string or big-endian dtypes ever come out of a stored header.
ALLOWED_DTYPES = frozenset({"|u1", "|i1", "|b1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})
_SECTION_KEYS = frozenset({"name", "dtype", "shape", "offset", "nbytes", "crc32"})


def align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class Section:
    """One entry of the section table: an array of ``dtype`` and ``shape`` at ``offset``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int

    @property
    def end(self) -> int:
        """End of the padded span the checksum covers."""
        return self.offset + align(self.nbytes)


@dataclass(frozen=True)
class ContainerHeader:
    """A decoded, verified header. ``data_offset`` is the header's padded size: sections start there."""

    magic: bytes
    meta: Mapping[str, Any]
    sections: Mapping[str, Section]
    total_size: int
    data_offset: int
    crc32: int


def little_endian(array: NDArray[Any]) -> NDArray[Any]:
    """``array`` as a C-contiguous little-endian array with an allowed dtype (no copy when it already is)."""
    out = np.require(array, dtype=array.dtype.newbyteorder("<"), requirements="C")
    if out.dtype.str not in ALLOWED_DTYPES:
        raise TypeError(f"dtype {array.dtype} cannot be stored in a section")
    return out


def pack(magic: bytes, meta: Mapping[str, Any], arrays: Mapping[str, NDArray[Any]]) -> tuple[bytes, ContainerHeader]:
    """Serialise ``arrays`` (in order) with ``meta`` into one object; return its bytes and header.

    The arrays are copied once, into the returned bytes.
    """
    data = {name: little_endian(a) for name, a in arrays.items()}
    rows = [
        {
            "name": name,
            "dtype": a.dtype.str,
            "shape": list(a.shape),
            "nbytes": a.nbytes,
            "crc32": _crc_padded(a),
        }
        for name, a in data.items()
    ]
    # The header's length fixes where data starts, and the offsets are in the header: offsets are computed for
    # a guessed header length and recomputed until the encoded length stops moving (twice in practice).
    data_offset = align(PREFIX_SIZE)
    while True:
        offset = data_offset
        for row in rows:
            row["offset"] = offset
            offset += align(row["nbytes"])
        header = msgpack.packb({"meta": dict(meta), "sections": rows}, use_bin_type=True)
        if align(PREFIX_SIZE + len(header)) == data_offset:
            break
        data_offset = align(PREFIX_SIZE + len(header))
    total_size = offset
    prefix = _PREFIX.pack(magic, FORMAT_VERSION, 0, total_size, len(header), 0)
    header_pad = bytes(data_offset - PREFIX_SIZE - len(header))
    crc = zlib.crc32(header_pad, zlib.crc32(header, zlib.crc32(prefix[:_CRC_AT])))
    prefix = prefix[:_CRC_AT] + struct.pack("<I", crc)
    chunks: list[Any] = [prefix, header, header_pad]
    for a in data.values():
        chunks.append(memoryview(a).cast("B") if a.size else b"")
        chunks.append(bytes(align(a.nbytes) - a.nbytes))
    blob = b"".join(chunks)
    sections = {row["name"]: _section(row) for row in rows}
    return blob, ContainerHeader(magic, dict(meta), sections, total_size, data_offset, crc)


def _crc_padded(a: NDArray[Any]) -> int:
    crc = zlib.crc32(memoryview(a).cast("B")) if a.size else 0
    return zlib.crc32(bytes(align(a.nbytes) - a.nbytes), crc)


def _section(row: Mapping[str, Any]) -> Section:
    return Section(row["name"], row["dtype"], tuple(row["shape"]), row["offset"], row["nbytes"], row["crc32"])


def header_extent(prefix: bytes, key: str, magic: bytes) -> int:
    """Bytes at the start of the object that hold the whole header, from its first `PREFIX_SIZE` bytes."""
    if len(prefix) < PREFIX_SIZE:
        raise CorruptObjectError(f"object {key!r} is truncated: {len(prefix)} bytes, no complete header", key=key)
    found, _, _, total_size, header_len, _ = _PREFIX.unpack_from(prefix)
    if found != magic:
        raise CorruptObjectError(
            f"object {key!r} has magic {found!r}, expected {magic!r}: not a squash object of this kind",
            key=key,
        )
    if header_len > MAX_HEADER_LEN or PREFIX_SIZE + header_len > total_size:
        raise CorruptObjectError(f"object {key!r} has a corrupt header length {header_len}", key=key)
    return align(PREFIX_SIZE + header_len)


def unpack_header(buf: bytes, key: str, magic: bytes) -> ContainerHeader:
    """Decode and verify the header at the start of ``buf`` (which holds at least `header_extent` bytes)."""
    data_offset = header_extent(buf, key, magic)
    if len(buf) < data_offset:
        raise CorruptObjectError(f"object {key!r} is truncated inside its header", key=key)
    _, version, _, total_size, header_len, crc = _PREFIX.unpack_from(buf)
    view = memoryview(buf)
    actual = zlib.crc32(view[PREFIX_SIZE:data_offset], zlib.crc32(view[:_CRC_AT]))
    if actual != crc:
        raise CorruptObjectError(f"object {key!r}: header checksum mismatch (corrupt header)", key=key)
    if version != FORMAT_VERSION:
        raise CorruptObjectError(
            f"object {key!r} has container format version {version}; this squash reads version "
            f"{FORMAT_VERSION}: upgrade squash or rebuild the index",
            key=key,
        )
    try:
        decoded = msgpack.unpackb(bytes(view[PREFIX_SIZE : PREFIX_SIZE + header_len]), raw=False)
        meta, table = decoded["meta"], decoded["sections"]
        if not isinstance(meta, dict) or not isinstance(table, list):
            raise TypeError("meta must be a map and sections a list")
        sections = _check_table(table, data_offset, total_size)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise CorruptObjectError(f"object {key!r} has a malformed header: {e}", key=key) from None
    return ContainerHeader(magic, meta, sections, total_size, data_offset, crc)


def _check_table(table: Sequence[Any], data_offset: int, total_size: int) -> dict[str, Section]:
    sections: dict[str, Section] = {}
    offset = data_offset
    for row in table:
        if not isinstance(row, dict) or set(row) != _SECTION_KEYS:
            raise ValueError(f"section entry {row!r} must have keys {sorted(_SECTION_KEYS)}")
        name, dtype, shape = row["name"], row["dtype"], row["shape"]
        if not isinstance(name, str) or name in sections:
            raise ValueError(f"section name {name!r} is not a unique string")
        if dtype not in ALLOWED_DTYPES:
            raise ValueError(f"section {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError(f"section {name!r} has invalid shape {shape!r}")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if row["nbytes"] != nbytes or row["offset"] != offset or not isinstance(row["crc32"], int):
            raise ValueError(f"section {name!r} has an inconsistent size, offset or checksum")
        sections[name] = _section(row)
        offset += align(nbytes)
    if offset != total_size:
        raise ValueError(f"sections end at {offset} but the object has {total_size} bytes")
    return sections


def section_array(section: Section, span: bytes | memoryview, key: str) -> NDArray[Any]:
    """Verify and map one section from ``span``, its padded bytes ``[offset, end)``; no copy.

    The array is read-only when ``span`` is immutable, which protects cached partitions from edits.
    """
    if len(span) != section.end - section.offset:
        raise CorruptObjectError(
            f"object {key!r} is truncated in section {section.name!r}: {len(span)} of "
            f"{section.end - section.offset} bytes",
            key=key,
        )
    if zlib.crc32(span) != section.crc32:
        raise CorruptObjectError(f"object {key!r}: checksum mismatch in section {section.name!r}", key=key)
    dtype = np.dtype(section.dtype)
    return np.frombuffer(span, dtype=dtype, count=section.nbytes // dtype.itemsize).reshape(section.shape)


def unpack_all(buf: bytes, key: str, magic: bytes) -> tuple[ContainerHeader, dict[str, NDArray[Any]]]:
    """Decode a whole object: verify the header, its size and every section."""
    header = unpack_header(buf, key, magic)
    if len(buf) != header.total_size:
        raise CorruptObjectError(
            f"object {key!r} has {len(buf)} bytes but its header says {header.total_size}", key=key
        )
    view = memoryview(buf)
    arrays = {name: section_array(s, view[s.offset : s.end], key) for name, s in header.sections.items()}
    return header, arrays


def contiguous_spans(sections: Sequence[Section]) -> list[tuple[int, int]]:
    """Merge sections (sorted by offset) that touch into ``(start, end)`` byte ranges: one read per run."""
    spans: list[tuple[int, int]] = []
    for s in sorted(sections, key=lambda s: s.offset):
        if spans and spans[-1][1] == s.offset:
            spans[-1] = (spans[-1][0], s.end)
        else:
            spans.append((s.offset, s.end))
    return spans
