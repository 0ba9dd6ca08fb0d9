"""``squash.Index``: build or open an index and search it in this process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from squash.model import IndexMeta, Metric, PartitionData
from squash.search.engine import search
from squash.search.prepared import PreparedPartition
from squash.search.result import SearchResult


class Index:
    """A searchable index: routing metadata plus partitions loaded on first use.

    Example:
        >>> import numpy as np, squash
        >>> x = np.random.default_rng(0).normal(size=(2000, 16)).astype("float32")
        >>> index = squash.Index.build(x, {"price": np.arange(2000) % 50}, partitions=4)
        >>> result = index.search(x[:3], k=5, filter={"price": {"$lt": 10}})
        >>> result.ids.shape
        (3, 5)
    """

    def __init__(self, meta: IndexMeta, load: Callable[[int], PartitionData], *, version: int | None = None) -> None:
        self.meta = meta
        self.version = version
        self._load = load
        self._prepared: dict[int, PreparedPartition] = {}
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        vectors: object,
        attributes: object = None,
        *,
        metric: str = "l2",
        partitions: int | None = None,
        bits_per_dim: float = 4.0,
        seed: int = 0,
    ) -> Index:
        """Build an in-memory index from vectors (n, d) and optional attributes.

        ``attributes`` is a ``pyarrow.Table`` or a dict of column name -> 1-D array (ints, floats,
        bools or strings). ``metric`` is ``"l2"``, ``"ip"`` or ``"cosine"``.
        """
        from squash.build import build_in_memory

        meta, parts = build_in_memory(
            vectors, attributes, metric=metric, partitions=partitions, bits_per_dim=bits_per_dim, seed=seed
        )
        return cls(meta, parts.__getitem__)

    @classmethod
    def open(cls, uri: str, *, version: int | None = None) -> Index:
        """Open a stored index (``memory://``, ``file://`` or ``s3://``) for in-process search."""
        from squash.format import open_index

        stored = open_index(uri, version=version)
        return cls(stored.meta, stored.load_partition, version=stored.version)

    @property
    def metric(self) -> Metric:
        return self.meta.metric

    @property
    def dim(self) -> int:
        return self.meta.dim

    def __len__(self) -> int:
        return self.meta.n_vectors

    def partition(self, pid: int) -> PreparedPartition:
        """The prepared partition ``pid``, loaded once and kept."""
        with self._lock:
            if pid not in self._prepared:
                self._prepared[pid] = PreparedPartition(self._load(pid))
            return self._prepared[pid]

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
        return search(self.meta, self.partition, queries, k=k, filter=filter, knobs=knobs)

    def brute_force(self, queries: Any, k: int = 10, filter: Any = None) -> SearchResult:
        """Exact answer by visiting every partition and refining until provably exact (for checks)."""
        return self.search(queries, k=k, filter=filter, exact=True)
