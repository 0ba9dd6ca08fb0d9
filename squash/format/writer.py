"""Write an index: partition and routing objects under a fresh build prefix, then publish a manifest.

Commit protocol: every object of a build lives under ``builds/<build_id>/`` (never visible on its own); the
build then publishes ``manifests/v<latest + 1>`` with a conditional put (``put_if_absent``). Readers open the
highest version, so an index is never mixed from two builds and an interrupted build leaves the previous
version untouched. When two builds race for one version number the loser, if it may overwrite, retries with
the next number (its index becomes the latest); a create-only build (``overwrite=False``) fails with
`IndexExistsError` instead. A failed build deletes the objects it wrote, best effort.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from squash.errors import IndexExistsError, InvalidInputError, PreconditionFailedError, StorageError
from squash.format import partition_object, routing
from squash.format.keys import (
    BUILD_PREFIX,
    MANIFEST_PREFIX,
    build_id_of,
    build_time,
    manifest_key,
    new_build_id,
    partition_key,
    probe_key,
    routing_key,
)
from squash.format.manifest import Manifest, ObjectEntry, encode_manifest
from squash.format.reader import list_versions, load_manifest
from squash.model import IndexMeta, PartitionData
from squash.storage import LocalStore, ObjectInfo, ObjectStore

# Each in-flight put holds one encoded partition in memory; four streams already fill a typical network link.
MAX_CONCURRENT_PUTS = 4
# A retry happens only when another build published in between, so many attempts mean something is wrong.
_PUBLISH_ATTEMPTS = 20


@dataclass(frozen=True)
class WriteResult:
    """What `write_index` published."""

    version: int
    manifest_key: str
    manifest_bytes: int
    manifest: Manifest


def existing_version_error(store: ObjectStore, version: int) -> IndexExistsError:
    return IndexExistsError(
        f"an index already exists at {store.uri} (version {version}); pass overwrite=True (--overwrite) "
        "to publish a new version over it, or choose another destination"
    )


def write_index(
    store: ObjectStore,
    meta: IndexMeta,
    parts: Sequence[PartitionData],
    *,
    overwrite: bool = False,
    build: Mapping[str, Any] | None = None,
    workers: int | None = None,
    on_written: Callable[[int], None] | None = None,
    build_id: str | None = None,
) -> WriteResult:
    """Store ``meta`` and ``parts`` (in partition order) as a new version of the index at ``store``.

    ``build`` is informational metadata kept in the manifest; ``on_written(nbytes)`` is called after each
    object is stored (from worker threads). ``build_id`` is the one `check_writable` was given, if any.
    """
    if [p.partition for p in parts] != list(range(meta.n_partitions)):
        raise InvalidInputError("parts must hold every partition of meta, in partition order")
    versions = list_versions(store)
    if versions and not overwrite:
        raise existing_version_error(store, versions[-1])
    build_id = build_id or new_build_id()
    written: list[str] = []

    def put(key: str, blob: bytes) -> None:
        store.put(key, blob)
        written.append(key)
        if on_written is not None:
            on_written(len(blob))

    def write_partition(part: PartitionData) -> ObjectEntry:
        blob, header = partition_object.encode_partition(part, build_id)
        key = partition_key(build_id, part.partition)
        put(key, blob)
        return ObjectEntry.of(key, header, part.size)

    try:
        pool = ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT_PUTS, workers or MAX_CONCURRENT_PUTS))
        try:
            entries = tuple(pool.map(write_partition, parts))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        blob, header = routing.encode_routing(
            meta.attr_codes, meta.list_centroids, len(meta.schema), meta.dim, build_id
        )
        put(routing_key(build_id), blob)
        manifest = Manifest(
            version=0,
            build_id=build_id,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            dim=meta.dim,
            metric=meta.metric,
            n_vectors=meta.n_vectors,
            vector_dtype=parts[0].vectors.dtype.str,
            centroids=meta.centroids,
            sizes=meta.sizes,
            schema=meta.schema,
            attr_quantizer=meta.attr_quantizer,
            attr_histograms=meta.attr_histograms,
            params=meta.params,
            partitions=entries,
            routing=ObjectEntry.of(routing_key(build_id), header, meta.n_vectors),
            build=dict(build or {}),
        )
        return _publish(store, manifest, overwrite=overwrite)
    except BaseException:
        _discard(store, written)
        raise


def check_writable(store: ObjectStore, build_id: str) -> None:
    """Write and delete a small object under the build's own prefix, so that a destination refusing
    writes fails the build before any work rather than after all of it.

    Raises `StorageError` naming the destination. A refused delete is no reason to fail: the probe
    object is then left in the build's prefix, which is collected with the build.
    """
    key = probe_key(build_id)
    try:
        store.put(key, b"squash write probe\n")
    except StorageError as e:
        raise StorageError(
            f"cannot build an index at {store.uri}: it refuses writes ({e}). Grant this process write access "
            "there (on S3: s3:PutObject on the prefix) or choose another destination",
            key=key,
        ) from e
    with contextlib.suppress(StorageError):
        store.delete(key)


def _publish(store: ObjectStore, manifest: Manifest, *, overwrite: bool) -> WriteResult:
    for _ in range(_PUBLISH_ATTEMPTS):
        versions = list_versions(store)
        if versions and not overwrite:
            raise existing_version_error(store, versions[-1])
        version = versions[-1] + 1 if versions else 1
        final = replace(manifest, version=version)
        data = encode_manifest(final)
        key = manifest_key(version)
        try:
            store.put_if_absent(key, data)
        except PreconditionFailedError:
            continue
        return WriteResult(version, key, len(data), final)
    raise StorageError(f"could not publish a manifest at {store.uri}: {_PUBLISH_ATTEMPTS} other builds published first")


def _discard(store: ObjectStore, keys: Sequence[str]) -> None:
    # Cleanup must not hide the error that caused it; leftovers are unreferenced, collect_garbage finds them.
    for key in keys:
        with contextlib.suppress(StorageError):
            store.delete(key)


def collect_garbage(
    store: ObjectStore,
    *,
    keep: int = 2,
    min_age: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[ObjectInfo]:
    """Delete manifests older than the latest ``keep`` versions and objects of builds none of those use.

    Objects of builds that never published (a first build that was killed included) count as unused, and
    so do a local store's temporary files of writes that never finished. Anything younger than ``min_age``
    is kept: it may belong to a build still writing, so ``min_age`` must exceed the longest build. Old
    manifests go first, so no reader can open a version whose objects are already gone. Returns what was
    deleted (with ``dry_run``, what would be), keys sorted within each kind.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidInputError(f"keep must be a positive integer number of versions, got {keep!r}")
    if not isinstance(min_age, timedelta) or min_age < timedelta(0):
        raise InvalidInputError(f"min_age must be a timedelta >= 0, got {min_age!r}")
    versions = list_versions(store)
    referenced = {load_manifest(store, v).build_id for v in versions[-keep:]}
    old = {manifest_key(v) for v in versions[:-keep]}
    cutoff = (now or datetime.now(UTC)) - min_age
    # Sizes come with the listings: no request per object.
    garbage = [info for info in store.list_info(MANIFEST_PREFIX) if info.key in old]
    for info in store.list_info(BUILD_PREFIX):
        build_id = build_id_of(info.key)
        if build_id is not None and build_id not in referenced and build_time(build_id) <= cutoff:
            garbage.append(info)
    if not dry_run:
        for info in garbage:
            store.delete(info.key)
    if isinstance(store, LocalStore):
        garbage += store.abandoned_writes(cutoff, delete=not dry_run)
    return garbage
