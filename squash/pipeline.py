"""Build an index and store it: validate everything, build in memory, write objects, publish the manifest.

A destination that refuses writes fails first (a probe object is written and deleted), then nothing
reaches it until every input and parameter has been checked and the build has succeeded; the manifest,
written last with a conditional put, is what makes the new version visible.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from squash.build import build_in_memory, check_build_params
from squash.calibration import DEFAULT_TARGET, check_target
from squash.errors import InvalidInputError
from squash.format.keys import new_build_id
from squash.format.reader import list_versions
from squash.format.writer import check_writable, existing_version_error, write_index
from squash.ingest import describe, merge_attributes, read_attributes, read_vectors
from squash.model import Metric
from squash.storage import LocalStore, ObjectStore, as_store

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    tqdm = None


@dataclass(frozen=True)
class BuildReport:
    """What `build_index` stored, where, and how long each phase took (seconds: read, build, write, total)."""

    uri: str
    version: int
    build_id: str
    n_vectors: int
    dim: int
    metric: Metric
    n_partitions: int
    partition_bytes: tuple[int, ...]
    routing_bytes: int
    manifest_bytes: int
    seconds: Mapping[str, float]

    @property
    def total_bytes(self) -> int:
        return sum(self.partition_bytes) + self.routing_bytes + self.manifest_bytes

    @property
    def bytes_per_vector(self) -> float:
        return self.total_bytes / self.n_vectors


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _bar(enabled: bool, desc: str, unit: str | None) -> Any:
    """A counting bar, or (``unit`` None) a line that shows how long a phase took."""
    if not enabled or tqdm is None:
        return _NoBar()
    if unit is None:
        return tqdm(desc=desc, total=1, bar_format="{desc}: {elapsed}")
    return tqdm(desc=desc, unit=unit, unit_scale=True)


def build_index(
    uri: str | ObjectStore,
    vectors: object,
    attributes: object = None,
    *,
    overwrite: bool = False,
    metric: str | Metric = "l2",
    partitions: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    target_recall: float = DEFAULT_TARGET,
) -> BuildReport:
    """Build an index from ``vectors`` (and ``attributes``) and publish it at ``uri`` as a new version.

    Parameters
    ----------
    uri
        Destination store (``memory://``, ``file://``, a path or ``s3://bucket/prefix``) or an open store.
    vectors
        (n, d) array, ``pyarrow.Table`` with a vector column, or the path(s) of ``.npy``, ``.fvecs``,
        ``.bvecs``, ``.ivecs``, ``.parquet``, ``.arrow`` or ``.feather`` files. Extra table columns become
        attributes.
    attributes
        None, a dict of name -> (n,) column, a ``pyarrow.Table``, or a ``.parquet``, ``.arrow`` or
        ``.feather`` path.
    overwrite
        Publish over an existing index (a new version; old objects stay until `collect_garbage`).
        Without it an existing index raises `IndexExistsError`.

    Raises `InvalidInputError` (bad input, parameter or destination) or `IndexExistsError` before writing
    anything.

    Example::

        >>> import numpy as np
        >>> report = build_index("memory://doc", np.random.default_rng(0).random((200, 8)), partitions=2)
        >>> report.version, report.n_vectors
        (1, 200)
    """
    started = time.perf_counter()
    metric = Metric.parse(metric)
    check_build_params(partitions, seed, workers)
    for name, flag in (("overwrite", overwrite), ("progress", progress)):
        if not isinstance(flag, bool):
            raise InvalidInputError(f"{name} must be True or False, got {flag!r}")
    check_target(target_recall)
    store = as_store(uri)
    build_id = new_build_id()
    _check_destination(store, build_id, overwrite=overwrite)

    with _bar(progress, "check input", "rows") as bar:
        source = read_vectors(vectors, progress=bar.update)
    n = source.vectors.shape[0]
    attrs = merge_attributes(source, read_attributes(attributes, n))
    if partitions is not None and partitions > n:
        raise InvalidInputError(f"partitions={partitions} exceeds the {n} vectors of {source.source}")
    read_done = time.perf_counter()

    with _bar(progress, "partition + quantize", None) as bar:
        meta, parts = build_in_memory(
            source.vectors,
            attrs,
            metric=metric,
            partitions=partitions,
            seed=seed,
            workers=workers,
            target_recall=target_recall,
        )
        bar.update(1)
    built = time.perf_counter()

    build_info = {
        "squash_version": _version(),
        "vectors": describe(vectors),
        "attributes": describe(attributes) if attributes is not None else None,
        "seconds": {"read": round(read_done - started, 3), "build": round(built - read_done, 3)},
    }
    with _bar(progress, "write", "B") as bar:
        result = write_index(
            store,
            meta,
            parts,
            overwrite=overwrite,
            build=build_info,
            workers=workers,
            on_written=bar.update,
            build_id=build_id,
        )
    finished = time.perf_counter()
    manifest = result.manifest
    return BuildReport(
        uri=store.uri,
        version=result.version,
        build_id=manifest.build_id,
        n_vectors=meta.n_vectors,
        dim=meta.dim,
        metric=meta.metric,
        n_partitions=meta.n_partitions,
        partition_bytes=tuple(e.size for e in manifest.partitions),
        routing_bytes=manifest.routing.size,
        manifest_bytes=result.manifest_bytes,
        seconds={
            "read": read_done - started,
            "build": built - read_done,
            "write": finished - built,
            "total": finished - started,
        },
    )


def _check_destination(store: ObjectStore, build_id: str, *, overwrite: bool) -> None:
    """Fail before any work if the destination cannot be written or already holds an index.

    A local folder that does not exist yet is checked on its nearest existing parent, so that a refused
    build leaves nothing behind; any other destination takes a probe write under the build's prefix.
    """
    if isinstance(store, LocalStore):
        _check_local_writable(Path(store.root))
    versions = list_versions(store)
    if versions and not overwrite:
        raise existing_version_error(store, versions[-1])
    if not isinstance(store, LocalStore) or os.path.isdir(store.root):
        check_writable(store, build_id)


def _check_local_writable(root: Path) -> None:
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(
            f"cannot write an index to {root}: {existing} is a file, not a directory; choose another destination"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"cannot write an index to {root}: no write permission on {existing}; choose another destination"
        )


def _version() -> str:
    try:
        return metadata.version("squash")
    except metadata.PackageNotFoundError:
        return "unknown"
