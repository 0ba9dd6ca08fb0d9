"""Builds that die or cannot write: what a killed build leaves is collected, a refused destination fails fast.

- A build killed with SIGKILL mid-write (no cleanup runs) leaves finished partition objects and, on a local
  store, temporary files; `collect_garbage` and ``squash gc`` find and remove all of it once older than
  ``min_age``, whether or not any version was ever published.
- A destination that refuses writes fails `build_index` in well under a second, before the build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import squash
from squash import cli
from squash.errors import StorageError
from squash.format import collect_garbage, list_versions, open_index
from squash.pipeline import build_index
from squash.storage import LocalStore, S3Store, open_store
from squash.storage.faults import Fault, FaultInjectingStore

# Builds an index in a child process that kills itself (SIGKILL: no cleanup, no finally) while fsyncing
# the temporary file of its third partition object, so finished objects and a half-done write remain.
_KILLED_BUILD = """
import os, signal, stat, sys
import numpy as np
from squash.pipeline import build_index

real_fsync, files = os.fsync, [0]

def fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):
        files[0] += 1
        if files[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)

os.fsync = fsync
vectors = np.random.default_rng(1).normal(size=(6000, 16)).astype("float32")
build_index(sys.argv[1], vectors, partitions=6, overwrite=True, workers=1)
"""


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _folders(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def _kill_a_build(root: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(root)], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()


@pytest.mark.parametrize("published_before", [False, True], ids=["first-build", "rebuild"])
def test_gc_removes_what_a_killed_build_left(tmp_path: Path, published_before: bool) -> None:
    root = tmp_path / "index"
    vectors = np.random.default_rng(0).normal(size=(500, 16)).astype("float32")
    if published_before:
        build_index(str(root), vectors, partitions=2)
    kept, folders = _files(root), _folders(root)
    _kill_a_build(root)
    left = {key: size for key, size in _files(root).items() if key not in kept}
    assert any(key.endswith(".squash-tmp") for key in left) and any(key.endswith(".sqp") for key in left)
    store = open_store(str(root))

    assert collect_garbage(store) == []  # young: it could be a build still writing
    later = datetime.now(UTC) + timedelta(hours=2)
    planned = collect_garbage(store, now=later, dry_run=True)
    assert _files(root) == {**kept, **left}  # a dry run deletes nothing
    deleted = collect_garbage(store, now=later)
    assert deleted == planned
    assert {info.key: info.size for info in deleted} == left
    assert _files(root) == kept and _folders(root) == folders  # emptied folders go too
    if published_before:
        assert list_versions(store) == [1]
        assert open_index(store).meta.n_vectors == 500


def test_squash_gc_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "index"
    vectors = np.random.default_rng(0).normal(size=(400, 8)).astype("float32")
    for _ in range(3):
        build_index(str(root), vectors, partitions=2, overwrite=True)
    before = _files(root)
    assert cli.main(["gc", str(root), "--keep", "1", "--min-age", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert _files(root) == before
    assert out[-1].startswith("would delete 8 objects")  # 2 manifests, 2 x (2 partitions + routing)
    assert cli.main(["gc", root.as_uri(), "--keep", "1", "--min-age", "0s"]) == 0
    out = capsys.readouterr().out.splitlines()
    freed = sum(size for key, size in before.items() if key not in _files(root))
    assert out[-1] == f"deleted 8 objects, {freed / 1024:.1f} KiB ({freed} bytes) freed"
    assert all(line.startswith("deleted ") for line in out) and len(out) == 9
    assert list_versions(open_store(str(root))) == [3]
    assert cli.main(["gc", str(root), "--min-age", "0"]) == 0
    assert capsys.readouterr().out == "deleted 0 objects, 0 B (0 bytes) freed\n"
    assert cli.main(["gc", str(tmp_path / "absent")]) == 2
    assert "nothing is stored" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["gc", str(root), "--min-age", "soon"])
    assert cli.main(["gc", str(root), "--keep", "0"]) == 2


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any build that gets past its destination checks fails the test."""

    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the build ran before the destination was found read-only")

    monkeypatch.setattr("squash.pipeline.build_in_memory", built)


def _refused(destination: Any) -> StorageError:
    vectors = np.random.default_rng(0).normal(size=(300, 8)).astype("float32")
    started = time.perf_counter()
    with pytest.raises(StorageError, match="refuses writes") as info:
        build_index(destination, vectors, partitions=2)
    assert time.perf_counter() - started < 1.0
    return info.value


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="squash-read-only")
        yield client


def test_a_read_only_s3_destination_fails_before_the_build(s3: Any, no_build: None) -> None:
    def deny(**_: Any) -> tuple[Any, dict[str, Any]]:
        error = {"Code": "AccessDenied", "Message": "Access Denied"}
        return SimpleNamespace(status_code=403, headers={}), {"Error": error, "ResponseMetadata": {}}

    s3.meta.events.register("before-call.s3.PutObject", deny)
    error = _refused(S3Store("squash-read-only", "indexes/x", client=s3))
    assert "s3://squash-read-only/indexes/x" in str(error) and "AccessDenied" in str(error)
    assert s3.list_objects_v2(Bucket="squash-read-only").get("KeyCount") == 0


def test_a_store_refusing_puts_fails_before_the_build(no_build: None) -> None:
    inner = open_store("memory://squash-refuses-puts")
    _refused(FaultInjectingStore(inner, [Fault(ops=frozenset({"put", "put_if_absent"}), error=StorageError)]))
    assert inner.list() == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_directory_fails_before_the_build(tmp_path: Path, no_build: None) -> None:
    root = tmp_path / "index"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(squash.SquashError, match="write"):
            build_index(LocalStore(root), np.zeros((10, 4), np.float32))
    finally:
        root.chmod(0o755)


def test_the_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "index"
    root.mkdir()
    build_index(str(root), np.random.default_rng(0).normal(size=(300, 8)), partitions=2)
    store = open_store(str(root))
    (build,) = {key.split("/")[1] for key in store.list("builds/")}
    assert sorted(_files(root)) == sorted(store.list())
    assert not [key for key in store.list() if "probe" in key]
    assert open_index(store).manifest.build_id == build


def test_gc_collects_a_build_that_never_published_on_s3(s3: Any) -> None:
    """A first build that dies before its manifest (here: its publish and its cleanup fail) leaves objects
    that no version references; S3 puts are atomic, so these are whole objects under builds/<id>/."""
    store = open_store("s3://squash-read-only/indexes/never-published")
    dying = FaultInjectingStore(store, [Fault(ops=frozenset({"put_if_absent", "delete"}), error=StorageError)])
    with pytest.raises(StorageError):
        build_index(dying, np.random.default_rng(0).normal(size=(300, 8)), partitions=2)
    left = store.list()
    # 2 partitions, the routing object and the write probe (deletes failed too): all under one build
    assert len(left) == 4 and len({key.split("/")[1] for key in left}) == 1 and list_versions(store) == []
    assert collect_garbage(store) == []
    deleted = collect_garbage(store, now=datetime.now(UTC) + timedelta(hours=2))
    assert sorted(info.key for info in deleted) == left and all(info.size > 0 for info in deleted)
    assert store.list() == []
