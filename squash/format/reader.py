"""Open a stored index: find its version, verify its manifest and routing, load partitions on demand."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.errors import (
    CorruptObjectError,
    IndexChangedError,
    IndexNotFoundError,
    InvalidInputError,
    ObjectNotFoundError,
)
from squash.format import partition_object, routing
from squash.format.keys import MANIFEST_PREFIX, MAX_VERSION, manifest_key, manifest_version
from squash.format.manifest import Manifest, ObjectEntry, decode_manifest
from squash.format.rows import RangedRows
from squash.format.sections import ContainerHeader, contiguous_spans, section_array, unpack_all, unpack_header
from squash.model import IndexMeta, PartitionData
from squash.storage import ObjectStore, as_store


def list_versions(store: ObjectStore) -> list[int]:
    """Published versions at ``store``, ascending (objects that are not manifests are ignored)."""
    versions = (manifest_version(k) for k in store.list(MANIFEST_PREFIX))
    return sorted(v for v in versions if v)


@dataclass(frozen=True)
class Published:
    """A published manifest as a listing shows it: its version and the etag that changes if it is rewritten.

    Versions restart at 1 when an index is deleted and built again at the same address, so the version alone
    does not identify what a cache holds; the pair does (the new manifest names another build).
    """

    version: int
    etag: str


def _no_index(store: ObjectStore) -> IndexNotFoundError:
    return IndexNotFoundError(
        f"no index at {store.uri}: no manifest under {MANIFEST_PREFIX!r}; build one with "
        "squash.build_index or `squash build`"
    )


def _no_version(store: ObjectStore, version: int) -> IndexNotFoundError:
    available = ", ".join(map(str, list_versions(store))) or "none"
    return IndexNotFoundError(f"index at {store.uri} has no version {version} (available: {available})")


def _check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise InvalidInputError(f"index version must be an integer in 1..{MAX_VERSION:,}, got {version!r}")
    return version


def index_changed(uri: str, version: int, build: str, expected: str) -> IndexChangedError:
    return IndexChangedError(
        f"the index at {uri} was rebuilt: version {version} is now build {build}, not {expected}; "
        "retry the query to search the new index"
    )


def find_manifest(store: ObjectStore, version: int | None = None) -> Published:
    """The latest (or the pinned) published manifest, with one request: a listing, or a HEAD when pinned.

    Raises:
        IndexNotFoundError: there is no index at ``store``, or not that version.
    """
    if version is None:
        published = [(manifest_version(i.key), i.etag) for i in store.list_info(MANIFEST_PREFIX)]
        found = max(((v, etag) for v, etag in published if v), default=None)
        if found is None:
            raise _no_index(store)
        return Published(*found)
    try:
        return Published(version, store.head(manifest_key(_check_version(version))).etag)
    except ObjectNotFoundError:
        raise _no_version(store, version) from None


def load_manifest(store: ObjectStore, version: int | None = None) -> Manifest:
    """The manifest of ``version``, or of the latest version when None.

    Raises:
        IndexNotFoundError: there is no index at ``store``, or not that version.
        CorruptObjectError: the manifest fails its checksum or layout checks.
    """
    if version is None:
        versions = list_versions(store)
        if not versions:
            raise _no_index(store)
        version = versions[-1]
    key = manifest_key(_check_version(version))
    try:
        data = store.get(key)
    except ObjectNotFoundError:
        raise _no_version(store, version) from None
    return decode_manifest(data, key, version)


def open_index(store_or_uri: ObjectStore | str, version: int | None = None, *, build: str | None = None) -> StoredIndex:
    """Open the latest (or a pinned) version of the index at ``store_or_uri``: 3 requests (2 if pinned).

    With ``build``, the version must still be that build: an index deleted and built again at the same
    address publishes its versions anew under other build ids, and `IndexChangedError` says so.
    Partition objects are read only when asked for, with `StoredIndex.load_partition` or
    `StoredIndex.load_sections`; ``store.stats`` counts every byte read.
    """
    store = as_store(store_or_uri)
    manifest = load_manifest(store, version)
    if build is not None and manifest.build_id != build:
        raise index_changed(store.uri, manifest.version, manifest.build_id, build)
    entry = manifest.routing
    data = _get_whole(store, entry)
    header, codes, lists = routing.decode_routing(data, entry.key, manifest.sizes)
    _check_pinned(entry, header)
    return StoredIndex(store, manifest, manifest.to_meta(codes, lists))


def _get_whole(store: ObjectStore, entry: ObjectEntry) -> bytes:
    data = store.get(entry.key)
    if len(data) != entry.size:
        raise CorruptObjectError(
            f"object {entry.key!r} has {len(data)} bytes but the manifest records {entry.size}", key=entry.key
        )
    return data


def _check_pinned(entry: ObjectEntry, header: ContainerHeader) -> None:
    """The object must be the one the manifest was written with, not merely a valid object."""
    if (header.crc32, header.total_size, header.data_offset) != (
        entry.header_crc32,
        entry.size,
        entry.header_size,
    ):
        raise CorruptObjectError(f"object {entry.key!r} does not match its manifest entry", key=entry.key)


@dataclass(frozen=True)
class StoredIndex:
    """One version of a stored index: its manifest, its `IndexMeta` and access to its partition objects."""

    store: ObjectStore
    manifest: Manifest
    meta: IndexMeta

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def build_id(self) -> str:
        return self.manifest.build_id

    def _entry(self, partition: int) -> ObjectEntry:
        if isinstance(partition, bool) or not 0 <= partition < self.manifest.n_partitions:
            raise InvalidInputError(
                f"partition {partition!r} does not exist; the index has {self.manifest.n_partitions}"
            )
        return self.manifest.partitions[partition]

    def load_partition(self, partition: int, *, hold_vectors: bool = True) -> PartitionData:
        """One partition, verified; arrays are read-only views of what was read.

        With ``hold_vectors`` every section comes from a single GET. Without, everything but the raw vectors
        comes from two ranged GETs (header, then the run of sections before the vectors) and the vectors are
        read row by row as the re-rank needs them (`squash.format.rows.RangedRows`).
        """
        entry = self._entry(partition)
        if hold_vectors:
            header, arrays = unpack_all(_get_whole(self.store, entry), entry.key, partition_object.MAGIC)
            _check_pinned(entry, header)
        else:
            header = self.partition_header(partition)
            arrays = self._sections(entry, header, [n for n in header.sections if n != partition_object.VECTORS])
            vectors = header.sections[partition_object.VECTORS]
            checksums = arrays[partition_object.VECTOR_CHECKSUMS]
            if checksums.shape != (header.meta.get("rows"),):
                raise CorruptObjectError(
                    f"partition object {entry.key!r}: section 'vectors.crc' has shape "
                    f"{checksums.shape}, expected ({header.meta.get('rows')},)",
                    key=entry.key,
                )
            arrays[partition_object.VECTORS] = RangedRows(
                self.store, entry.key, vectors.offset, vectors.shape, np.dtype(vectors.dtype), checksums
            )
        part = partition_object.decode_partition(header, arrays, entry.key)
        if (part.partition, part.size, part.rotation.dim, part.vectors.dtype.str) != (
            partition,
            entry.rows,
            self.meta.dim,
            self.manifest.vector_dtype,
        ):
            raise CorruptObjectError(f"partition object {entry.key!r} holds the wrong partition", key=entry.key)
        return part

    def partition_header(self, partition: int) -> ContainerHeader:
        """The verified header of one partition object (one ranged GET of ``header_size`` bytes)."""
        entry = self._entry(partition)
        header = unpack_header(self.store.get(entry.key, (0, entry.header_size)), entry.key, partition_object.MAGIC)
        _check_pinned(entry, header)
        return header

    def load_sections(
        self, partition: int, names: Iterable[str] | None = None, *, exclude: Sequence[str] = ()
    ) -> dict[str, NDArray[Any]]:
        """Some sections of one partition by name (all when None, minus ``exclude``), verified.

        Reads the header, then each run of adjacent wanted sections with one ranged request; e.g.
        ``exclude=("vectors",)`` fetches everything a scan without re-ranking needs in one request.
        """
        entry = self._entry(partition)
        header = self.partition_header(partition)
        wanted = list(header.sections) if names is None else list(names)
        unknown = [n for n in [*wanted, *exclude] if n not in header.sections]
        if unknown:
            raise InvalidInputError(
                f"partition {partition} has no section(s) {unknown}; it has {list(header.sections)}"
            )
        return self._sections(entry, header, [n for n in wanted if n not in exclude])

    def _sections(self, entry: ObjectEntry, header: ContainerHeader, names: Sequence[str]) -> dict[str, Any]:
        """The named sections of a partition object, verified: one ranged GET per run of adjacent ones."""
        sections = [header.sections[n] for n in names]
        spans = contiguous_spans(sections)
        blobs = self.store.get_many(entry.key, spans)
        out = {}
        for section in sections:
            i = next(i for i, (start, end) in enumerate(spans) if start <= section.offset < end)
            start = spans[i][0]
            view = memoryview(blobs[i])[section.offset - start : section.end - start]
            out[section.name] = section_array(section, view, entry.key)
        return out
