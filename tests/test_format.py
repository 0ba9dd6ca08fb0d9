"""Tests of squash.format: the section container, round trips through every store, corruption detection,
the commit protocol (interrupted and concurrent builds), ranged partial reads and garbage collection."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from format_helpers import assert_same_index, assert_same_meta, attributes, clustered

from squash.build import build_in_memory
from squash.errors import (
    CorruptObjectError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidInputError,
    StorageError,
)
from squash.format import collect_garbage, list_versions, open_index, write_index
from squash.format.keys import (
    build_id_of,
    build_prefix,
    manifest_key,
    manifest_version,
    new_build_id,
    partition_key,
    routing_key,
)
from squash.format.partition_object import check_partition_shapes
from squash.format.sections import ALIGNMENT, pack, unpack_all
from squash.model import IndexMeta, PartitionData
from squash.storage import ObjectStore, open_store
from squash.storage.faults import Fault, FaultInjectingStore

BUCKET = "squash-format-test"
Built = tuple[IndexMeta, list[PartitionData]]


@pytest.fixture(scope="module")
def index_a() -> Built:
    return build_in_memory(clustered(seed=0), attributes(seed=0), partitions=3, seed=0)


@pytest.fixture(scope="module")
def index_b() -> Built:
    """A different index (other data, dims, attributes and partition count)."""
    return build_in_memory(clustered(1200, 16, seed=7), {"k": np.arange(1200) % 7}, partitions=2, seed=1)


def memory_store() -> ObjectStore:
    return open_store(f"memory://format-{uuid.uuid4().hex}")


def load_all(uri_or_store: Any, version: int | None = None) -> Built:
    index = open_index(uri_or_store, version)
    return index.meta, [index.load_partition(p) for p in range(index.meta.n_partitions)]


@pytest.fixture
def s3_store(aws_env: None) -> Iterator[ObjectStore]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield open_store(f"s3://{BUCKET}/indexes/a")


# ---------------------------------------------------------------- keys and the container


def test_keys() -> None:
    build_id = new_build_id()
    assert build_id_of(partition_key(build_id, 3)) == build_id
    assert partition_key(build_id, 3) == f"builds/{build_id}/part-00003.sqp"
    assert routing_key(build_id).startswith(build_prefix(build_id))
    assert manifest_key(12) == "manifests/v0000000012.msgpack"
    assert manifest_version(manifest_key(12)) == 12
    assert manifest_version("manifests/v12.msgpack") is None
    assert build_id_of("manifests/v0000000012.msgpack") is None
    with pytest.raises(ValueError):
        partition_key("../evil", 0)


def test_container_round_trip() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "f4": rng.random((7, 3)).astype(np.float32),
        "u1": rng.integers(0, 255, (5, 11), dtype=np.uint8),
        "empty": np.zeros((9, 0), dtype=np.uint8),
        "i8": np.arange(13, dtype=np.int64),
        "f8 strided": rng.random((6, 4))[:, ::2],
        "scalar": np.array(3.5),
    }
    blob, header = pack(b"TESTTEST", {"hello": [1, "x"]}, arrays)
    assert len(blob) == header.total_size and len(blob) % ALIGNMENT == 0
    assert all(s.offset % ALIGNMENT == 0 for s in header.sections.values())
    decoded, out = unpack_all(blob, "k", b"TESTTEST")
    assert decoded == header and decoded.meta == {"hello": [1, "x"]}
    assert list(out) == list(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(out[name], a, strict=True)
        assert not out[name].flags.writeable
    with pytest.raises(CorruptObjectError, match="magic"):
        unpack_all(blob, "k", b"SQSHPART")
    with pytest.raises(TypeError):
        pack(b"TESTTEST", {}, {"bad": np.array(["a"], dtype=object)})


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["memory", "file", "s3"])
def test_round_trip_every_store(kind: str, index_a: Built, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "s3":
        store = request.getfixturevalue("s3_store")
        reader: Any = store
    elif kind == "file":
        store = open_store((tmp_path / "index").as_uri())
        reader = store.uri
    else:
        store = memory_store()
        reader = store.uri
    meta, parts = index_a
    result = write_index(store, meta, parts)
    assert result.version == 1 and list_versions(store) == [1]
    assert_same_index(meta, parts, *load_all(reader))
    index = open_index(reader)
    assert index.version == 1 and index.manifest.build_id == result.manifest.build_id
    assert index.manifest.vector_dtype == "<f4"


def test_round_trip_uint8_vectors_and_no_attributes() -> None:
    x = np.random.default_rng(3).integers(0, 256, (800, 24)).astype(np.uint8)
    meta, parts = build_in_memory(x, partitions=2)
    store = memory_store()
    write_index(store, meta, parts)
    meta2, parts2 = load_all(store)
    assert_same_index(meta, parts, meta2, parts2)
    assert parts2[0].vectors.dtype == np.uint8 and parts2[0].attr_codes.shape == (parts2[0].size, 0)


# ---------------------------------------------------------------- corruption


def _positions(size: int, header_size: int) -> list[int]:
    """Every byte of the fixed prefix and header, a spread through the data, and the last byte."""
    spread = range(header_size, size, max(1, size // 300))
    return sorted({*range(min(header_size, 256)), *range(0, header_size, 7), *spread, size - 1})


def _expect_corrupt(store: ObjectStore, key: str, read: Any) -> None:
    original = store.get(key)
    entry_positions = _positions(len(original), min(len(original), 2048))
    for pos in entry_positions:
        bad = bytearray(original)
        bad[pos] ^= 0x10
        store.put(key, bytes(bad))
        with pytest.raises(CorruptObjectError) as excinfo:
            read()
        assert excinfo.value.key == key and key in str(excinfo.value), (pos, excinfo.value)
    for length in (0, 16, 40, len(original) // 2, len(original) - 1):
        store.put(key, original[:length])
        with pytest.raises(CorruptObjectError) as excinfo:
            read()
        assert excinfo.value.key == key, length
    store.put(key, original)
    read()


def test_flipped_bytes_in_every_object_are_reported(index_a: Built) -> None:
    store = memory_store()
    result = write_index(store, *index_a)
    manifest = result.manifest
    part_key = manifest.partitions[1].key

    def open_it() -> None:
        open_index(store)

    def load_part() -> None:
        open_index(store).load_partition(1)

    def load_ranged() -> None:
        index = open_index(store)
        index.load_sections(1, ["ids", "scalar.codes"])

    _expect_corrupt(store, result.manifest_key, open_it)
    _expect_corrupt(store, manifest.routing.key, open_it)
    _expect_corrupt(store, part_key, load_part)

    # Ranged reads verify what they fetch: a flip in a fetched section or the header is caught.
    index = open_index(store)
    header = index.partition_header(1)
    original = store.get(part_key)
    for name in ("ids", "scalar.codes"):
        s = header.sections[name]
        for pos in (s.offset, s.offset + s.nbytes // 2, s.end - 1):
            bad = bytearray(original)
            bad[pos] ^= 1
            store.put(part_key, bytes(bad))
            with pytest.raises(CorruptObjectError, match=name):
                load_ranged()
    store.put(part_key, original)


@pytest.mark.parametrize("op", ["get", "get_many"])
def test_flips_on_the_wire_are_reported(index_a: Built, op: str) -> None:
    store = memory_store()
    result = write_index(store, *index_a)
    key = result.manifest.partitions[0].key
    for flip in (0, 100, 5_000, 77_777, -1):
        faulty = FaultInjectingStore(store, [Fault(ops=frozenset({op}), keys=key.__eq__, flip_byte=flip)])
        index = open_index(faulty)
        with pytest.raises(CorruptObjectError) as excinfo:
            if op == "get":
                index.load_partition(0)
            else:
                index.load_sections(0, exclude=("vectors",))
        assert excinfo.value.key == key


# ---------------------------------------------------------------- commit protocol


def test_interrupted_build_leaves_previous_version(index_a: Built, index_b: Built) -> None:
    store = memory_store()
    write_index(store, *index_a)
    before = store.list("")
    for fault in (
        Fault(ops=frozenset({"put"}), keys=lambda k: k.endswith("part-00001.sqp"), error=StorageError),
        Fault(ops=frozenset({"put"}), keys=lambda k: k.endswith("routing.sqr"), error=StorageError),
        Fault(ops=frozenset({"put_if_absent"}), error=StorageError),
    ):
        with pytest.raises(StorageError, match="injected"):
            write_index(FaultInjectingStore(store, [fault]), *index_b, overwrite=True)
        assert list_versions(store) == [1]
        assert store.list("") == before  # the failed build removed what it wrote
        assert_same_index(*index_a, *load_all(store))


def test_interrupted_build_without_cleanup_is_invisible(index_a: Built, index_b: Built) -> None:
    """Even if the failed build cannot delete its objects (a crash), readers never see them."""
    store = memory_store()
    write_index(store, *index_a)
    faults = [
        Fault(ops=frozenset({"put"}), keys=lambda k: k.endswith("part-00001.sqp"), error=StorageError),
        Fault(ops=frozenset({"delete"}), error=StorageError),
    ]
    with pytest.raises(StorageError):
        write_index(FaultInjectingStore(store, faults), *index_b, overwrite=True)
    index = open_index(store)
    live = {e.key for e in index.manifest.partitions} | {index.manifest.routing.key}
    orphans = set(store.list("builds/")) - live
    assert orphans and all(build_id_of(k) != index.manifest.build_id for k in orphans)
    assert list_versions(store) == [1]
    assert_same_index(*index_a, *load_all(store))


class _RaceAtPublish:
    """Holds the first ``parties`` conditional puts until all have arrived, so the builds race for one key."""

    def __init__(self, inner: ObjectStore, parties: int) -> None:
        self.inner, self.uri, self.stats = inner, inner.uri, inner.stats
        self._barrier = threading.Barrier(parties, timeout=20)
        self._left = parties
        self._lock = threading.Lock()

    def put_if_absent(self, key: str, data: bytes) -> Any:
        with self._lock:
            wait, self._left = self._left > 0, self._left - 1
        if wait:
            self._barrier.wait()
        return self.inner.put_if_absent(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _race(store: ObjectStore, builds: list[Built], overwrite: bool) -> list[BaseException | None]:
    racing: Any = _RaceAtPublish(store, len(builds))
    outcomes: list[BaseException | None] = [None] * len(builds)

    def run(i: int) -> None:
        try:
            write_index(racing, *builds[i], overwrite=overwrite)
        except BaseException as e:
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(builds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_concurrent_builds_never_mix(kind: str, index_a: Built, index_b: Built, tmp_path: Path) -> None:
    store = memory_store() if kind == "memory" else open_store(str(tmp_path / "idx"))
    assert _race(store, [index_a, index_b], overwrite=True) == [None, None]
    assert list_versions(store) == [1, 2]
    seen = set()
    for version in (1, 2):
        meta, parts = load_all(store, version)
        index = open_index(store, version)
        assert {build_id_of(e.key) for e in index.manifest.partitions} == {index.manifest.build_id}
        which = "a" if meta.dim == index_a[0].dim else "b"
        assert_same_index(*(index_a if which == "a" else index_b), meta, parts)
        seen.add(which)
    assert seen == {"a", "b"}


def test_concurrent_create_only_builds_have_one_winner(index_a: Built, index_b: Built) -> None:
    store = memory_store()
    outcomes = _race(store, [index_a, index_b], overwrite=False)
    assert sorted(type(o).__name__ for o in outcomes) == ["IndexExistsError", "NoneType"]
    assert list_versions(store) == [1]
    winner = index_a if outcomes[0] is None else index_b
    assert_same_index(*winner, *load_all(store))
    index = open_index(store)
    live = {e.key for e in index.manifest.partitions} | {index.manifest.routing.key}
    assert set(store.list("builds/")) == live  # the loser cleaned up


def test_versions_pinning_and_errors(index_a: Built, index_b: Built) -> None:
    store = memory_store()
    with pytest.raises(IndexNotFoundError, match="no index"):
        open_index(store)
    write_index(store, *index_a)
    with pytest.raises(IndexExistsError, match="overwrite"):
        write_index(store, *index_b)
    assert write_index(store, *index_b, overwrite=True).version == 2
    assert_same_meta(index_b[0], open_index(store).meta)
    assert_same_meta(index_a[0], open_index(store, version=1).meta)
    with pytest.raises(IndexNotFoundError, match=r"available: 1, 2"):
        open_index(store, version=3)
    with pytest.raises(InvalidInputError):
        open_index(store).load_partition(5)


# ---------------------------------------------------------------- partial reads


def test_partial_read_fetches_only_needed_sections(index_a: Built) -> None:
    store = memory_store()
    result = write_index(store, *index_a)
    index = open_index(store.uri)
    stats = index.store.stats
    entry = result.manifest.partitions[0]
    header = index.partition_header(0)
    non_vector = [s for name, s in header.sections.items() if name != "vectors"]

    stats.reset()
    arrays = index.load_sections(0, exclude=("vectors",))
    assert set(arrays) == {s.name for s in non_vector}
    needed = header.data_offset + sum(s.end - s.offset for s in non_vector)
    assert stats.gets == 2 and stats.bytes_read == needed
    vectors = header.sections["vectors"]
    assert needed + vectors.end - vectors.offset == entry.size  # everything but the vectors, nothing else

    stats.reset()
    ids = index.load_sections(0, ["ids"])["ids"]
    np.testing.assert_array_equal(ids, index_a[1][0].ids)
    assert stats.bytes_read == header.data_offset + header.sections["ids"].end - header.sections["ids"].offset

    stats.reset()
    index.load_partition(0)
    assert stats.snapshot()["gets"] == 1 and stats.bytes_read == entry.size

    with pytest.raises(InvalidInputError, match="no section"):
        index.load_sections(0, ["nope"])


# ---------------------------------------------------------------- garbage collection


def test_collect_garbage(index_a: Built, index_b: Built) -> None:
    store = memory_store()
    write_index(store, *index_a)
    write_index(store, *index_b, overwrite=True)
    with pytest.raises(StorageError):  # an interrupted build that could not clean up
        write_index(
            FaultInjectingStore(
                store,
                [
                    Fault(ops=frozenset({"put_if_absent"}), error=StorageError),
                    Fault(ops=frozenset({"delete"}), error=StorageError),
                ],
            ),
            *index_a,
            overwrite=True,
        )
    write_index(store, *index_a, overwrite=True)
    builds = {build_id_of(k) for k in store.list("builds/")}
    assert len(builds) == 4

    assert [info.key for info in collect_garbage(store, keep=2)] == [manifest_key(1)]  # young orphans are kept
    deleted = [info.key for info in collect_garbage(store, keep=1, min_age=timedelta(0))]
    assert manifest_key(2) in deleted
    assert list_versions(store) == [3]
    assert {build_id_of(k) for k in store.list("builds/")} == {open_index(store).manifest.build_id}
    assert_same_index(*index_a, *load_all(store))


def test_list_starts_that_do_not_cover_the_rows_are_corrupt(index_a: Built) -> None:
    _, parts = index_a
    part = parts[0]
    for bad in (part.list_starts[::-1].copy(), part.list_starts + 1):
        broken = dataclasses.replace(part, list_starts=bad)
        with pytest.raises(CorruptObjectError, match=r"lists\.starts"):
            check_partition_shapes(broken, {"rows": part.size, "dim": part.rotation.dim}, "part-x")
