"""``squash.Index``: build or open an index and search it in this process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from squash.model import IndexMeta, Metric, PartitionData
from squash.search.engine import search
from squash.search.prepared import PreparedPartition
from squash.search.result import SearchResult
from squash.storage import ObjectStore


@dataclass
class _Snapshot:
    """One build's metadata and the partitions prepared from it so far."""

    meta: IndexMeta
    load: Callable[[int], PartitionData]
    version: int | None = None
    build: str | None = None
    etag: str | None = None
    prepared: dict[int, PreparedPartition] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def partition(self, pid: int) -> PreparedPartition:
        with self.lock:
            if pid not in self.prepared:
                self.prepared[pid] = PreparedPartition(self.load(pid))
            return self.prepared[pid]


def _published(store: ObjectStore, version: int | None, held: _Snapshot | None) -> _Snapshot:
    """``held`` if the store still publishes it at ``version`` (None: the latest), else the build it does."""
    from squash.format import find_manifest, open_index

    published = find_manifest(store, version)
    if held is not None and (held.version, held.etag) == (published.version, published.etag):
        return held
    stored = open_index(store, published.version)
    return _Snapshot(stored.meta, stored.load_partition, stored.version, stored.build_id, published.etag)


class Index:
    """A searchable index: routing metadata plus partitions loaded on first use.

    An index opened from a store follows what is published there: each search first checks the manifest
    with one listing (a HEAD when a version is pinned) and, when a new build was published or the index
    was deleted and built again, searches the new build instead of serving cached partitions of the old.

    Example:
        >>> import numpy as np, squash
        >>> x = np.random.default_rng(0).normal(size=(2000, 16)).astype("float32")
        >>> index = squash.Index.build(x, {"price": np.arange(2000) % 50}, partitions=4)
        >>> result = index.search(x[:3], k=5, filter={"price": {"$lt": 10}})
        >>> result.ids.shape
        (3, 5)
    """

    def __init__(self, snapshot: _Snapshot, store: ObjectStore | None = None, pinned: int | None = None) -> None:
        self._snapshot = snapshot
        self._store = store
        self._pinned = pinned
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        vectors: object,
        attributes: object = None,
        *,
        metric: str = "l2",
        partitions: int | None = None,
        seed: int = 0,
        target_recall: float = 0.95,
    ) -> Index:
        """Build an in-memory index from vectors (n, d) and optional attributes.

        ``attributes`` is a ``pyarrow.Table`` or a dict of column name -> 1-D array (ints, floats,
        bools or strings). ``metric`` is ``"l2"``, ``"ip"`` or ``"cosine"``. The build calibrates the
        search effort so that searches reach ``target_recall`` (recall@10) on queries like the data's own.
        """
        from squash.build import build_in_memory

        meta, parts = build_in_memory(
            vectors,
            attributes,
            metric=metric,
            partitions=partitions,
            seed=seed,
            target_recall=target_recall,
        )
        return cls(_Snapshot(meta, parts.__getitem__))

    @classmethod
    def open(cls, uri: str, *, version: int | None = None) -> Index:
        """Open a stored index (``memory://``, ``file://`` or ``s3://``) for in-process search.

        Without ``version`` every search uses the latest published version; with it, that version (and
        whatever build is published under that number, should the index be rebuilt).
        """
        from squash.storage import open_store

        store = open_store(uri)
        return cls(_published(store, version, None), store, version)

    def _current(self) -> _Snapshot:
        """The build to search now: the one held, unless the store publishes another."""
        if self._store is None:
            return self._snapshot
        with self._lock:
            self._snapshot = _published(self._store, self._pinned, self._snapshot)
            return self._snapshot

    @property
    def meta(self) -> IndexMeta:
        return self._snapshot.meta

    @property
    def version(self) -> int | None:
        """The manifest version last searched (None for an index built in memory)."""
        return self._snapshot.version

    @property
    def build_id(self) -> str | None:
        """The build id last searched (None for an index built in memory)."""
        return self._snapshot.build

    @property
    def metric(self) -> Metric:
        return self.meta.metric

    @property
    def dim(self) -> int:
        return self.meta.dim

    def __len__(self) -> int:
        return self.meta.n_vectors

    def partition(self, pid: int) -> PreparedPartition:
        """The prepared partition ``pid`` of the build last searched, loaded once and kept."""
        return self._snapshot.partition(pid)

    def search(self, queries: Any, k: int = 10, filter: Any = None, **knobs: Any) -> SearchResult:
        """Top-k of each query among vectors matching ``filter``.

        Args:
            queries: one vector (d,) or a batch (nq, d).
            k: results per query (1..1000).
            filter: None, one filter for every query, or a list with one filter per query.
            **knobs: search parameters, see :class:`squash.SearchParams`.

        Returns:
            A :class:`SearchResult` with ``ids`` int64 (nq, k) padded with -1 and exact
            ``distances`` float32 (nq, k) ascending.
        """
        snapshot = self._current()
        return search(snapshot.meta, snapshot.partition, queries, k=k, filter=filter, knobs=knobs)

    def brute_force(self, queries: Any, k: int = 10, filter: Any = None) -> SearchResult:
        """Exact answer by visiting every partition and refining until provably exact (for checks)."""
        return self.search(queries, k=k, filter=filter, exact=True)
