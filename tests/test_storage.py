"""Tests of squash.storage: one battery over the memory, local-disk and S3 (moto) stores, then specifics."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from squash.errors import (
    InvalidInputError,
    ObjectNotFoundError,
    PreconditionFailedError,
    StorageError,
    ThrottledError,
)
from squash.storage import LocalStore, MemoryStore, ObjectStore, S3Store, open_store
from squash.storage.base import get_coalesced
from squash.storage.faults import Fault, FaultInjectingStore

BUCKET = "squash-storage-test"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def s3_store(aws_env: None) -> Iterator[S3Store]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        store = open_store(f"s3://{BUCKET}/some/prefix")
        assert isinstance(store, S3Store)
        yield store


@pytest.fixture(params=["memory", "file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "memory":
        return open_store(f"memory://test-{uuid.uuid4().hex}")
    if request.param == "file":
        return open_store(str(tmp_path / "root"))
    return request.getfixturevalue("s3_store")


# ---------------------------------------------------------------- the battery, over every store


def test_put_get_round_trip(store: ObjectStore) -> None:
    data = _blob(1000)
    info = store.put("a/b/obj.bin", data)
    assert (info.key, info.size) == ("a/b/obj.bin", 1000)
    assert info.etag
    assert store.get("a/b/obj.bin") == data
    store.put("a/b/obj.bin", b"replaced")
    assert store.get("a/b/obj.bin") == b"replaced"


def test_ranged_get(store: ObjectStore) -> None:
    data = bytes(range(100))
    store.put("obj", data)
    cases = {(10, 20): data[10:20], (0, 100): data, (99, 100): data[99:], (90, 200): data[90:]}
    # Empty ranges, and ranges starting at or past the end, read nothing.
    cases |= {r: b"" for r in [(0, 0), (50, 50), (100, 100), (100, 110), (150, 160)]}
    for byte_range, expected in cases.items():
        assert store.get("obj", byte_range) == expected, byte_range


def test_ranged_get_of_empty_object(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.get("empty", (0, 10)) == b""
    assert store.head("empty").size == 0


def test_invalid_range_rejected(store: ObjectStore) -> None:
    store.put("obj", b"0123456789")
    for byte_range in [(-1, 5), (5, 3), (1,), "0-5", (0.0, 1)]:
        with pytest.raises(InvalidInputError):
            store.get("obj", byte_range)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            store.get_many("obj", [byte_range])  # type: ignore[list-item]


def test_get_many_coalesces(store: ObjectStore) -> None:
    size = 2_200_000
    data = _blob(size, seed=1)
    store.put("big", data)
    far = size - 1000
    # Two clusters more than every store's coalescing gap apart, with overlaps, a duplicate, an empty
    # range and one running past the end; given out of order.
    ranges = [(far + 10, far + 5000), (0, 10), (20, 30), (5, 25), (0, 10), (far, far + 8), (15, 15)]
    store.stats.reset()
    parts = store.get_many("big", ranges)
    assert parts == [data[s:e] for s, e in ranges]
    assert store.stats.gets == 2
    assert store.stats.bytes_read == 30 + 1000
    assert store.get_many("big", []) == []
    assert store.get_many("big", [(7, 7)]) == [b""]
    assert store.stats.gets == 2


def test_head(store: ObjectStore) -> None:
    info = store.put("h", b"hello")
    head = store.head("h")
    assert head == info
    assert store.head("h").etag == head.etag
    store.put("h", b"hello, world")
    assert store.head("h").size == 12
    assert store.head("h").etag != info.etag


def test_list_with_prefixes(store: ObjectStore) -> None:
    keys = ["b", "a/2", "a/1", "ab", "a/sub/3", "a/sub2/4", "c/x"]
    for key in keys:
        store.put(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("") == sorted(keys)
    assert store.list("a/") == ["a/1", "a/2", "a/sub/3", "a/sub2/4"]
    assert store.list("a") == ["a/1", "a/2", "a/sub/3", "a/sub2/4", "ab"]
    assert store.list("a/sub") == ["a/sub/3", "a/sub2/4"]
    assert store.list("a/sub/") == ["a/sub/3"]
    assert store.list("a/1") == ["a/1"]
    assert store.list("zzz") == []
    assert store.list("b/") == []
    assert store.list("nope/deeper/") == []


def test_list_info_matches_list_and_head(store: ObjectStore) -> None:
    for key in ["m/v1", "m/v2", "other"]:
        store.put(key, key.encode() * 3)
    infos = store.list_info("m/")
    assert [i.key for i in infos] == store.list("m/") == ["m/v1", "m/v2"]
    assert infos == [store.head("m/v1"), store.head("m/v2")]
    assert [i.size for i in infos] == [12, 12]
    store.delete("m/v1")
    store.put("m/v1", b"rewritten!!!")  # same size: only the etag tells the new object from the old
    again = store.list_info("m/")
    assert again[0].size == 12 and again[0].etag != infos[0].etag and again[1] == infos[1]
    assert store.list_info("zzz/") == []


def test_delete(store: ObjectStore) -> None:
    store.put("d/1", b"x")
    store.put("d/2", b"y")
    store.delete("d/1")
    assert store.list("d/") == ["d/2"]
    with pytest.raises(ObjectNotFoundError):
        store.get("d/1")
    store.delete("d/1")
    store.delete("never/was")


def test_missing_key_raises_not_found(store: ObjectStore) -> None:
    store.put("present", b"x")
    key = "missing/part-0007.bin"
    calls = {
        "get": lambda: store.get(key),
        "ranged get": lambda: store.get(key, (0, 10)),
        "get_many": lambda: store.get_many(key, [(0, 1), (5, 9)]),
        "head": lambda: store.head(key),
    }
    for name, call in calls.items():
        with pytest.raises(ObjectNotFoundError) as excinfo:
            call()
        assert excinfo.value.key == key, name
        assert key in str(excinfo.value), name


def test_put_if_absent_winner_and_loser(store: ObjectStore) -> None:
    info = store.put_if_absent("manifest/v1", b"first")
    assert info.size == 5
    store.stats.reset()
    with pytest.raises(PreconditionFailedError) as excinfo:
        store.put_if_absent("manifest/v1", b"second")
    assert excinfo.value.key == "manifest/v1"
    assert store.stats.puts == 0
    assert store.get("manifest/v1") == b"first"


class _SerializedPuts:
    """A client wrapper that runs one PutObject at a time.

    moto checks ``If-None-Match`` and then writes without holding a lock, so concurrent conditional puts can
    all succeed there (real S3 decides atomically). Serialising puts lets the race test check our side.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def put_object(self, **kwargs: Any) -> Any:
        with self._lock:
            return self._client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_concurrent_put_if_absent_has_one_winner(store: ObjectStore) -> None:
    if isinstance(store, S3Store):
        store = S3Store(store.bucket, store.prefix, client=_SerializedPuts(store.client))
    threads = 8
    barrier = threading.Barrier(threads)
    winners: list[int] = []
    losers: list[int] = []
    errors: list[BaseException] = []

    def race(i: int) -> None:
        barrier.wait()
        try:
            store.put_if_absent("lock", b"writer-%d" % i)
            winners.append(i)
        except PreconditionFailedError:
            losers.append(i)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=race, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len(winners) == 1
    assert len(losers) == threads - 1
    assert store.get("lock") == b"writer-%d" % winners[0]
    assert store.list() == ["lock"]


def test_stats_count_requests_and_bytes(store: ObjectStore) -> None:
    store.stats.reset()
    store.put("s", _blob(1000))
    assert store.stats.snapshot() == {"gets": 0, "bytes_read": 0, "puts": 1, "bytes_written": 1000}
    store.get("s")
    store.get("s", (10, 30))
    store.get("s", (5, 5))
    store.get("s", (990, 2000))
    assert store.stats.snapshot() == {"gets": 3, "bytes_read": 1030, "puts": 1, "bytes_written": 1000}
    store.stats.reset()
    assert store.stats.snapshot() == {"gets": 0, "bytes_read": 0, "puts": 0, "bytes_written": 0}


def test_stats_are_thread_safe(store: ObjectStore) -> None:
    store.put("t", b"0123456789")
    store.stats.reset()

    def read() -> None:
        for _ in range(4):
            store.get("t", (0, 3))

    workers = [threading.Thread(target=read) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert store.stats.gets == 32
    assert store.stats.bytes_read == 96


INVALID_KEYS = ["", "/abs", "../escape", "a/../../b", "a//b", "a/./b", "a/", "a\\b", "a\x00b"]


def test_invalid_keys_and_prefixes_rejected(store: ObjectStore) -> None:
    for key in INVALID_KEYS:
        for call in (store.get, store.head, store.delete, lambda k: store.put(k, b"x")):
            with pytest.raises(InvalidInputError):
                call(key)
    for prefix in ["/", "/a", "../", "a/../", "a//", "a\\"]:
        with pytest.raises(InvalidInputError):
            store.list(prefix)
    assert store.list() == []


# ---------------------------------------------------------------- get_coalesced, exactly


def test_get_coalesced_merges_within_gap() -> None:
    data = bytes(range(256)) * 4
    requests: list[tuple[int, int]] = []

    def get(key: str, byte_range: tuple[int, int]) -> bytes:
        requests.append(byte_range)
        return data[byte_range[0] : byte_range[1]]

    ranges = [(100, 110), (0, 10), (10, 20), (21, 30), (105, 120), (500, 500)]
    assert get_coalesced(get, "k", ranges, max_gap=0) == [data[s:e] for s, e in ranges]
    assert requests == [(0, 20), (21, 30), (100, 120)]
    requests.clear()
    assert get_coalesced(get, "k", ranges, max_gap=1) == [data[s:e] for s, e in ranges]
    assert requests == [(0, 30), (100, 120)]
    requests.clear()
    get_coalesced(get, "k", ranges, max_gap=70)
    assert requests == [(0, 120)]


# ---------------------------------------------------------------- memory store


def test_memory_stores_share_data_by_name() -> None:
    name = f"shared-{uuid.uuid4().hex}"
    first, second = open_store(f"memory://{name}"), open_store(f"memory://{name}")
    first.put("k", b"v")
    assert second.get("k") == b"v"
    assert open_store(f"memory://{name}-other").list() == []
    assert first.uri == f"memory://{name}"


def test_memory_store_copies_mutable_input() -> None:
    store = MemoryStore(f"copy-{uuid.uuid4().hex}")
    buf = bytearray(b"abc")
    store.put("k", buf)
    buf[0] = ord("z")
    assert store.get("k") == b"abc"


# ---------------------------------------------------------------- local store


def test_local_store_keeps_keys_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalStore(root)
    for key in ("../outside", "a/../../outside", "/tmp/outside", "..", "a/.."):
        with pytest.raises(InvalidInputError):
            store.put(key, b"x")
    with pytest.raises(InvalidInputError):
        store.put("x.squash-tmp", b"x")
    assert list(tmp_path.iterdir()) == []


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/1", b"one")
    store.put("a/1", b"uno")
    store.put_if_absent("a/2", b"two")
    with pytest.raises(PreconditionFailedError):
        store.put_if_absent("a/2", b"dos")
    assert _all_files(tmp_path) == ["a/1", "a/2"]
    assert store.list() == ["a/1", "a/2"]


def test_local_failed_write_keeps_old_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    store.put("obj", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated disk failure")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    for write in (store.put, store.put_if_absent):
        with pytest.raises(StorageError) as excinfo:
            write("obj", b"new")
        assert not isinstance(excinfo.value, ObjectNotFoundError | PreconditionFailedError)
        assert "simulated disk failure" in str(excinfo.value)
    monkeypatch.undo()
    assert store.get("obj") == b"old"
    assert _all_files(tmp_path) == ["obj"]


def test_local_list_ignores_stray_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("p/real", b"x")
    (tmp_path / "p" / ".real.0123abcd.squash-tmp").write_bytes(b"half-written")
    assert store.list() == ["p/real"]


def test_local_key_through_a_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"file")
    with pytest.raises(StorageError) as excinfo:
        store.put("a/b", b"x")
    assert not isinstance(excinfo.value, ObjectNotFoundError)
    assert str(tmp_path) in str(excinfo.value)
    with pytest.raises(ObjectNotFoundError):
        store.get("a/b")
    store.put("d/x", b"x")
    with pytest.raises(ObjectNotFoundError):
        store.get("d")
    with pytest.raises(ObjectNotFoundError):
        store.head("d")


def test_local_other_os_errors_are_not_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    calls = [
        (lambda: store.get("loop"), "loop"),
        (lambda: store.head("loop"), "loop"),
        (lambda: store.get("x" * 300), "x" * 300),
        (lambda: store.put("x" * 300, b"v"), "x" * 300),
    ]
    for call, name in calls:
        with pytest.raises(StorageError) as excinfo:
            call()
        assert not isinstance(excinfo.value, ObjectNotFoundError)
        assert str(tmp_path / name) in str(excinfo.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_local_permission_error_is_not_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("secret", b"x")
    (tmp_path / "secret").chmod(0)
    try:
        with pytest.raises(StorageError) as excinfo:
            store.get("secret")
        assert not isinstance(excinfo.value, ObjectNotFoundError)
        assert str(tmp_path / "secret") in str(excinfo.value)
    finally:
        (tmp_path / "secret").chmod(0o644)


# ---------------------------------------------------------------- S3 store


def _stubbed_store() -> tuple[S3Store, Any]:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(retries={"max_attempts": 1}))
    return S3Store(BUCKET, "pre", client=client), client


@pytest.mark.parametrize(
    ("method", "code", "status", "call", "expected"),
    [
        ("get_object", "SlowDown", 503, lambda s: s.get("k"), ThrottledError),
        ("put_object", "SlowDown", 503, lambda s: s.put("k", b"x"), ThrottledError),
        ("get_object", "ServiceUnavailable", 503, lambda s: s.get("k"), ThrottledError),
        (
            "put_object",
            "PreconditionFailed",
            412,
            lambda s: s.put_if_absent("k", b"x"),
            PreconditionFailedError,
        ),
        (
            "put_object",
            "ConditionalRequestConflict",
            409,
            lambda s: s.put_if_absent("k", b"x"),
            PreconditionFailedError,
        ),
        ("head_object", "404", 404, lambda s: s.head("k"), ObjectNotFoundError),
        ("get_object", "NoSuchKey", 404, lambda s: s.get("k"), ObjectNotFoundError),
        ("get_object", "AccessDenied", 403, lambda s: s.get("k"), StorageError),
        ("get_object", "NoSuchBucket", 404, lambda s: s.get("k"), StorageError),
    ],
)
def test_s3_errors_are_translated(
    aws_env: None, method: str, code: str, status: int, call: Any, expected: type[StorageError]
) -> None:
    from botocore.stub import Stubber

    store, client = _stubbed_store()
    with Stubber(client) as stub:
        stub.add_client_error(method, service_error_code=code, http_status_code=status)
        with pytest.raises(StorageError) as excinfo:
            call(store)
    assert type(excinfo.value) is expected
    assert excinfo.value.key == "k"
    if expected is StorageError:
        assert all(part in str(excinfo.value) for part in ("pre/k", BUCKET, code))


def test_s3_ranged_get_sends_inclusive_range(aws_env: None) -> None:
    import io

    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    store, client = _stubbed_store()
    with Stubber(client) as stub:
        body = StreamingBody(io.BytesIO(b"abcd"), 4)
        stub.add_response("get_object", {"Body": body}, {"Bucket": BUCKET, "Key": "pre/k", "Range": "bytes=10-13"})
        stub.add_client_error("get_object", service_error_code="InvalidRange", http_status_code=416)
        assert store.get("k", (10, 14)) == b"abcd"
        assert store.get("k", (500, 600)) == b""
        stub.assert_no_pending_responses()


def test_s3_transport_errors_become_storage_errors() -> None:
    from botocore.exceptions import EndpointConnectionError

    class Unreachable:
        def get_object(self, **kwargs: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    store = S3Store(BUCKET, client=Unreachable())
    with pytest.raises(StorageError) as excinfo:
        store.get("k")
    assert type(excinfo.value) is StorageError
    assert f"s3://{BUCKET}/k" in str(excinfo.value)


def test_s3_default_client_configuration(aws_env: None) -> None:
    store = S3Store(BUCKET)
    config = store.client.meta.config
    assert config.max_pool_connections == 64
    assert config.retries["mode"] == "standard"
    assert store.client is store.client


def test_s3_keys_are_relative_to_prefix(s3_store: S3Store) -> None:
    import boto3

    s3_store.put("x/y", b"1")
    raw = boto3.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [o["Key"] for o in raw] == ["some/prefix/x/y"]
    assert s3_store.list() == ["x/y"]
    assert S3Store(BUCKET, "some").list() == ["prefix/x/y"]
    assert S3Store(BUCKET).list("some/prefix/") == ["some/prefix/x/y"]


def test_s3_moto_supports_conditional_writes(s3_store: S3Store) -> None:
    """The installed moto honours ``If-None-Match: *`` (sequentially; see `_SerializedPuts`)."""
    s3_store.put_if_absent("once", b"1")
    with pytest.raises(PreconditionFailedError):
        s3_store.put_if_absent("once", b"2")
    assert s3_store.get("once") == b"1"


# ---------------------------------------------------------------- open_store


def test_open_store_unknown_scheme_lists_supported() -> None:
    with pytest.raises(InvalidInputError) as excinfo:
        open_store("gs://bucket/x")
    message = str(excinfo.value)
    assert "'gs'" in message
    assert all(scheme in message for scheme in ("memory://", "file://", "s3://"))


@pytest.mark.parametrize("uri", ["", "memory://", "s3://", "s3:///prefix", "file://host/x", "file://relative"])
def test_open_store_rejects_malformed_uris(uri: str) -> None:
    with pytest.raises(InvalidInputError):
        open_store(uri)


def test_open_store_rejects_s3_client_for_other_schemes() -> None:
    with pytest.raises(InvalidInputError):
        open_store("memory://x", s3_client=object())


def test_open_store_file_uris_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "with space#and hash"
    plain = open_store(str(root))
    assert isinstance(plain, LocalStore)
    assert plain.uri == root.as_uri()
    again = open_store(plain.uri)
    assert isinstance(again, LocalStore)
    assert again.root == str(root)
    plain.put("k", b"v")
    assert again.get("k") == b"v"
    relative = open_store("relative/dir")
    assert isinstance(relative, LocalStore)
    assert relative.root == os.path.abspath("relative/dir")


def test_open_store_s3_uri(aws_env: None) -> None:
    store = open_store("s3://bucket/pre/fix/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == ("bucket", "pre/fix", "s3://bucket/pre/fix")
    assert open_store("s3://bucket").uri == "s3://bucket"


def test_import_is_light() -> None:
    code = "import sys, squash.storage; assert not {'boto3', 'botocore', 'pyarrow'} & set(sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)


# ---------------------------------------------------------------- fault injection


def test_faults_fire_on_nth_call() -> None:
    inner = MemoryStore(f"faults-{uuid.uuid4().hex}")
    inner.put("k", b"data")
    store = FaultInjectingStore(inner, [Fault(ops=frozenset({"get"}), nth=2, error=ThrottledError)])
    assert store.get("k") == b"data"
    with pytest.raises(ThrottledError) as excinfo:
        store.get("k")
    assert excinfo.value.key == "k"
    assert store.get("k") == b"data"
    assert store.uri == inner.uri
    assert store.stats is inner.stats


def test_faults_match_keys_and_flip_bytes() -> None:
    inner = MemoryStore(f"faults-{uuid.uuid4().hex}")
    inner.put("part/1", b"\x00\x00\x00")
    inner.put("meta", b"\x00\x00\x00")
    store = FaultInjectingStore(
        inner,
        [
            Fault(ops=frozenset({"put"}), keys=lambda k: k.startswith("part/"), error=StorageError),
            Fault(ops=frozenset({"get", "get_many"}), keys=lambda k: k == "meta", flip_byte=1),
        ],
    )
    with pytest.raises(StorageError):
        store.put("part/2", b"x")
    store.put("other", b"x")
    assert store.get("part/1") == b"\x00\x00\x00"
    assert store.get("meta") == b"\x00\x01\x00"
    assert store.get_many("meta", [(0, 2), (2, 3), (1, 1)]) == [b"\x00\x01", b"\x01", b""]
    assert inner.get("meta") == b"\x00\x00\x00"
