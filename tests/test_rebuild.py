"""An index deleted and built again at the same address is searched anew, never served from a warm cache.

Versions restart at 1 after a delete, so a cache keyed by (uri, version) would answer from the deleted
build (including ids past the new index's size). Every answer here is checked against numpy brute force
over the data of the build that is published at the time of the query.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import squash
from squash.config import RuntimeConfig
from squash.datasets import exact_knn
from squash.errors import IndexChangedError
from squash.pipeline import build_index
from squash.runtime.context import HandlerContext
from squash.runtime.coordinator import coordinate
from squash.runtime.processor import process
from squash.runtime.protocol import CoordinatorRequest, IndexRef, ProcessorRequest
from squash.search.params import SearchParams
from squash.search.queries import FilterSet
from squash.storage import open_store

DIM = 16
K = 10


def _data(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, DIM)).astype(np.float32), {"price": rng.integers(0, 100, n)}


def _build(uri: str, n: int, seed: int, overwrite: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    base, attrs = _data(n, seed)
    build_index(uri, base, attrs, partitions=3, seed=seed, overwrite=overwrite)
    return base, attrs


def _delete_everything(uri: str) -> None:
    """What `rm -rf` or `aws s3 rm --recursive` does to an index."""
    store = open_store(uri)
    for key in store.list():
        store.delete(key)


QUERIES = np.random.default_rng(99).normal(size=(6, DIM)).astype(np.float32)
FILTER = {"price": {"$lt": 50}}


def _check_exact(ids: np.ndarray, base: np.ndarray, attrs: dict[str, np.ndarray]) -> None:
    """``ids`` are exactly the filtered top-k of QUERIES over ``base`` (the published build)."""
    truth, _ = exact_knn(base, QUERIES, K, attrs["price"] < 50)
    assert ids.max() < len(base)
    np.testing.assert_array_equal(ids, truth)


@pytest.fixture(params=["memory", "file"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"memory://rebuild-{tmp_path.name}" if request.param == "memory" else (tmp_path / "idx").as_uri()


def test_embedded_client_searches_the_rebuilt_index(uri: str) -> None:
    old = _build(uri, 1200, seed=1)
    client = squash.Client(uri)
    _check_exact(client.query_batch(QUERIES, K, FILTER, exact=True).ids, *old)  # warms every container
    _delete_everything(uri)
    new = _build(uri, 300, seed=2)
    result = client.query_batch(QUERIES, K, FILTER, exact=True)
    assert result.info["version"] == 1  # the same version number as the deleted build
    _check_exact(result.ids, *new)


def test_pinned_client_searches_what_is_published_under_its_version(uri: str) -> None:
    old = _build(uri, 1200, seed=1)
    client = squash.Client(uri, version=1)
    _check_exact(client.query_batch(QUERIES, K, FILTER, exact=True).ids, *old)
    _delete_everything(uri)
    new = _build(uri, 300, seed=2)
    _check_exact(client.query_batch(QUERIES, K, FILTER, exact=True).ids, *new)


def test_long_lived_index_follows_the_published_build(uri: str) -> None:
    old = _build(uri, 1200, seed=1)
    index = squash.Index.open(uri)
    _check_exact(index.search(QUERIES, K, FILTER, exact=True).ids, *old)
    old_build = index.build_id
    _delete_everything(uri)
    new = _build(uri, 300, seed=2)
    _check_exact(index.search(QUERIES, K, FILTER, exact=True).ids, *new)
    assert len(index) == 300 and index.version == 1 and index.build_id != old_build
    newer = _build(uri, 500, seed=3, overwrite=True)  # a plain new version (no delete) is followed too
    _check_exact(index.search(QUERIES, K, FILTER, exact=True).ids, *newer)
    assert index.version == 2


def test_deleted_index_is_not_found_rather_than_served_from_memory(tmp_path: Path) -> None:
    uri = (tmp_path / "idx").as_uri()
    _build(uri, 400, seed=1)
    index, client = squash.Index.open(uri), squash.Client(uri)
    index.search(QUERIES, K)
    client.query_batch(QUERIES, K)
    shutil.rmtree(tmp_path / "idx")
    with pytest.raises(squash.IndexNotFoundError):
        index.search(QUERIES, K)
    with pytest.raises(squash.IndexNotFoundError):
        client.query_batch(QUERIES, K)


def _context(role: str) -> HandlerContext:
    from squash.runtime.inprocess import InProcessInvoker

    config = RuntimeConfig()
    return HandlerContext(role, role, config, InProcessInvoker(config))


def test_requests_pinned_to_a_deleted_build_fail_with_index_changed() -> None:
    uri = "memory://rebuild-pinned-build"
    _build(uri, 600, seed=1)
    old = squash.Index.open(uri).build_id
    _delete_everything(uri)
    _build(uri, 300, seed=2)
    stale = IndexRef(uri, 1, old)
    filters = FilterSet.from_user(None, len(QUERIES))
    # A later slice of a split batch whose first slice saw the deleted build.
    with pytest.raises(IndexChangedError, match="rebuilt"):
        coordinate(CoordinatorRequest(stale, QUERIES, filters, K, {}), _context("coordinator"))
    # A processor asked for the deleted build by a coordinator that resolved it before the rebuild.
    probes = np.ones(len(QUERIES), np.int32)
    with pytest.raises(IndexChangedError, match="rebuilt"):
        process(
            ProcessorRequest(stale, QUERIES, filters, K, SearchParams(), partition=0, probes=probes),
            _context("processor"),
        )
