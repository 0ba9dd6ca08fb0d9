"""Raw vectors read on demand: the rows equal the stored ones, corruption is caught, a processor that reads
them answers as one that holds them, and its warm footprint is the codes, not the vectors."""

from __future__ import annotations

import numpy as np
import pytest

import squash
from squash.config import RuntimeConfig
from squash.datasets import exact_knn
from squash.errors import CorruptObjectError, InvalidInputError
from squash.format.reader import open_index
from squash.pipeline import build_index
from squash.search.prepared import PreparedPartition
from squash.storage import as_store

N, D = 6000, 128


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(N, D)) * np.linspace(3, 0.5, D)).astype(np.float32)
    attrs = {"a": rng.integers(0, 50, N), "b": rng.random(N)}
    uri = f"file://{tmp_path_factory.mktemp('rows')}/idx"
    build_index(uri, x, attrs, partitions=3, seed=1)
    return uri, x, attrs


def test_ranged_rows_equal_the_stored_vectors(stored: tuple[str, np.ndarray, dict[str, np.ndarray]]) -> None:
    uri, x, _ = stored
    index = open_index(uri)
    held = index.load_partition(1)
    ranged = index.load_partition(1, hold_vectors=False).vectors
    rng = np.random.default_rng(1)
    for shape in [(7,), (5, 9), (0,), (3, 0)]:
        rows = rng.integers(0, held.size, size=shape)
        np.testing.assert_array_equal(ranged[rows], np.asarray(held.vectors)[rows])
    np.testing.assert_array_equal(np.asarray(held.vectors), x[held.ids])  # and the build's own rows
    with pytest.raises(IndexError):
        ranged[np.array([held.size])]


def test_a_corrupted_row_is_reported_when_read(stored: tuple[str, np.ndarray, dict[str, np.ndarray]]) -> None:
    uri, _, _ = stored
    index = open_index(uri)
    entry = index.manifest.partitions[0]
    header = index.partition_header(0)
    section = header.sections["vectors"]
    store = as_store(uri)
    data = bytearray(store.get(entry.key))
    row_bytes = D * 4
    data[section.offset + 5 * row_bytes + 3] ^= 0xFF  # row 5
    original = bytes(store.get(entry.key))
    try:
        store.put(entry.key, bytes(data))
        rows = open_index(uri).load_partition(0, hold_vectors=False).vectors
        np.testing.assert_array_equal(rows[np.array([4, 6])].shape, (2, D))  # other rows still read
        with pytest.raises(CorruptObjectError, match="row 5"):
            rows[np.array([2, 5])]
    finally:
        store.put(entry.key, original)


def test_a_processor_reading_rows_answers_as_one_holding_them(
    stored: tuple[str, np.ndarray, dict[str, np.ndarray]],
) -> None:
    uri, x, attrs = stored
    queries = np.random.default_rng(2).normal(size=(30, D)).astype(np.float32)
    flt = {"a": {"$lt": 10}}
    answers = {}
    for mode in ("memory", "ranged"):
        client = squash.Client(uri, config=RuntimeConfig(processor_functions=("p0", "p1"), rerank_vectors=mode))
        answers[mode] = [client.query_batch(queries, 10, f) for f in (None, flt)]
    for held, ranged in zip(answers["memory"], answers["ranged"], strict=True):
        np.testing.assert_array_equal(held.ids, ranged.ids)
        np.testing.assert_array_equal(held.distances, ranged.distances)
    truth = exact_knn(x, queries, 10, attrs["a"] < 10)[0]
    found = answers["ranged"][1].ids
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]) >= 0.9


def test_warm_bytes_without_the_vectors_are_under_half_the_raw_vectors(
    stored: tuple[str, np.ndarray, dict[str, np.ndarray]],
) -> None:
    uri, _, _ = stored
    index = open_index(uri)
    raw = sum(entry.rows for entry in index.manifest.partitions) * D * 4
    held = sum(PreparedPartition(index.load_partition(p)).nbytes for p in range(3))
    ranged = sum(PreparedPartition(index.load_partition(p, hold_vectors=False)).nbytes for p in range(3))
    assert held > raw
    assert ranged <= 0.5 * raw, ranged / raw


def test_auto_holds_the_vectors_while_a_slot_s_partitions_fit_its_cache() -> None:
    config = RuntimeConfig(processor_functions=("p0", "p1"), memory_mb=1000, cache_fraction=0.5)
    budget = config.cache_budget
    assert config.holds_vectors(budget // 2, n_partitions=4)  # two per slot fit
    assert not config.holds_vectors(budget // 2 + 1, n_partitions=4)
    assert config.holds_vectors(budget, n_partitions=2)
    assert RuntimeConfig(rerank_vectors="memory").holds_vectors(10 * budget, 100)
    assert not RuntimeConfig(rerank_vectors="ranged").holds_vectors(1, 1)
    assert RuntimeConfig.from_env({"SQUASH_RERANK_VECTORS": "ranged"}).rerank_vectors == "ranged"
    with pytest.raises(InvalidInputError, match="rerank_vectors must be one of auto, memory, ranged"):
        RuntimeConfig(rerank_vectors="disk")
