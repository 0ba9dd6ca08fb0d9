"""A deployed function container against careless and hostile callers.

- It opens only the index roots it was configured with (``SQUASH_INDEX_ROOTS``), at every role, before any
  storage request: no local files, no in-process stores, no other bucket, no path tricks (a confused
  deputy would search them with its own permissions).
- A warm coordinator asked about thousands of index names keeps one S3 client and bounded caches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import squash
from squash.config import RuntimeConfig
from squash.errors import AccessDeniedError, IndexNotFoundError, InvalidInputError
from squash.pipeline import build_index
from squash.runtime.context import _STORES_KEPT, HandlerContext
from squash.runtime.dispatch import handle
from squash.runtime.inprocess import InProcessInvoker
from squash.storage import ObjectStore, open_store

EVENTS = Path(__file__).parent / "events"
BUCKET = "squash-deployed"
ROOT = f"s3://{BUCKET}/indexes/prefix"
DEPLOYED = {"SQUASH_INDEX_ROOTS": f"{ROOT}, s3://{BUCKET}-other/"}
ROLES = ("coordinator", "allocator", "processor")


def _event(role: str, uri: str) -> dict[str, Any]:
    event = json.loads((EVENTS / f"{role}_request.json").read_text())
    event["index"]["uri"] = uri
    return event


class _Recorder:
    """An ``open_store`` that records what it was asked to open and opens nothing."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, uri: str) -> ObjectStore:
        self.opened.append(uri)
        raise IndexNotFoundError(f"recorder: {uri} opened")


REFUSED = [
    "file:///etc",
    "/etc/passwd",
    "relative/path",
    "file://localhost/tmp/index",
    "memory://squash-events",
    f"s3://{BUCKET}-evil/indexes/prefix",
    "s3://other-bucket/indexes/prefix",
    f"s3://{BUCKET}/indexes/pre",  # a prefix of the root, not under it
    f"s3://{BUCKET}/indexes/prefix2",  # extends the root's last segment
    f"s3://{BUCKET}/indexes/prefix-x/a",
    f"s3://{BUCKET}/indexes/prefix/../other",
    f"s3://{BUCKET}/indexes/prefix/./a",
    f"s3://{BUCKET}/indexes//prefix",
    f"s3://{BUCKET}//indexes/prefix",
    f"s3://{BUCKET}/indexes/prefix//a",
    f"s3://{BUCKET}/indexes/prefix/%2e%2e/other",
    f"s3://{BUCKET}/indexes/%70refix",
    f"s3://{BUCKET}/indexes/prefix/a\\..\\..\\b",
    f"s3://{BUCKET}/indexes/prefix/a\x00",
    f"s3://{BUCKET.upper()}/indexes/prefix",
    f"s3://{BUCKET}:443/indexes/prefix",
    f"s3://user@{BUCKET}/indexes/prefix",
    f"s3://{BUCKET}",
    f"s3://{BUCKET}/indexes",
    f"https://{BUCKET}.s3.amazonaws.com/indexes/prefix",
]
ALLOWED = [
    ROOT,
    ROOT + "/",
    ROOT + "/name",
    ROOT + "/team/name.v2",
    "S3://" + ROOT.removeprefix("s3://") + "/name",
    f"s3://{BUCKET}-other",
    f"s3://{BUCKET}-other/anything/below",
]


@pytest.mark.parametrize("role", ROLES)
def test_a_deployed_function_refuses_every_location_outside_its_roots(role: str) -> None:
    config = RuntimeConfig.from_env(DEPLOYED)
    recorder = _Recorder()
    ctx = HandlerContext(role, f"squash-{role}", config, InProcessInvoker(config), open_store=recorder)
    for uri in REFUSED:
        with pytest.raises(AccessDeniedError, match="s3://squash-deployed/indexes/prefix") as info:
            handle(role, _event(role, uri), ctx)
        assert "s3://squash-deployed-other/" in str(info.value), uri
    assert recorder.opened == []  # refused before any storage request
    for uri in ALLOWED:
        with pytest.raises(IndexNotFoundError, match="recorder"):
            handle(role, _event(role, uri), ctx)
    assert recorder.opened == ALLOWED


def test_without_configured_roots_a_deployed_function_opens_nothing() -> None:
    config = RuntimeConfig.from_env({})
    assert config.index_roots == ()
    ctx = HandlerContext("coordinator", "c", config, InProcessInvoker(config), open_store=_Recorder())
    with pytest.raises(AccessDeniedError, match="SQUASH_INDEX_ROOTS"):
        handle("coordinator", _event("coordinator", ROOT), ctx)
    assert RuntimeConfig.from_env({"SQUASH_INDEX_ROOTS": "*"}).index_roots is None
    for bad in ("s3://", "s3://Bad_Bucket/x", "s3://b/../x", "ftp://x/y", "memory://"):
        with pytest.raises(InvalidInputError, match="index root"):
            RuntimeConfig.from_env({"SQUASH_INDEX_ROOTS": bad})


def test_file_roots_compare_resolved_paths(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "indexes", tmp_path / "private"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    config = RuntimeConfig(index_roots=(str(allowed),))
    ctx = HandlerContext("coordinator", "c", config, InProcessInvoker(config), open_store=_Recorder())
    for uri in (str(allowed / "link"), f"{allowed}/../private", str(outside), f"{allowed}x"):
        with pytest.raises(AccessDeniedError):
            handle("coordinator", _event("coordinator", uri), ctx)
    with pytest.raises(IndexNotFoundError, match="recorder"):
        handle("coordinator", _event("coordinator", (allowed / "a").as_uri()), ctx)


@pytest.fixture
def s3_bucket(aws_env: None) -> Iterator[str]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield BUCKET


def test_the_allowed_root_answers_at_every_role(s3_bucket: str) -> None:
    """Embedded runtime configured as deployed: coordinator, allocators and processors all check and pass."""
    rng = np.random.default_rng(0)
    uri = f"{ROOT}/small"
    build_index(uri, rng.normal(size=(400, 8)), partitions=4)
    config = RuntimeConfig(index_roots=(ROOT,), processor_functions=("p0", "p1"))
    result = squash.Client(uri, config=config).query_batch(rng.normal(size=(3, 8)), k=5, branching=2, depth=1)
    assert result.ids.shape == (3, 5) and result.info["allocator.invocations"] == 2
    assert result.info["processor.invocations"] >= 2
    with pytest.raises(AccessDeniedError, match="not under an allowed index root"):
        squash.Client(f"s3://{BUCKET}/indexes/other", config=config).query_batch(rng.normal(size=(1, 8)), k=5)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_warm_coordinator_asked_about_many_names_keeps_one_client(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    built = []
    real_client = boto3.client

    def counting_client(service: str, *args: Any, **kwargs: Any) -> Any:
        built.append(service)
        return real_client(service, *args, **kwargs)

    monkeypatch.setattr(boto3, "client", counting_client)
    config = RuntimeConfig(index_roots=(f"s3://{BUCKET}",))
    ctx = HandlerContext("coordinator", "c", config, InProcessInvoker(config), open_store=open_store)

    def ask(names: range) -> None:
        for i in names:
            with pytest.raises(IndexNotFoundError, match=f"missing-{i}"):
                handle("coordinator", _event("coordinator", f"s3://{BUCKET}/missing-{i}"), ctx)

    ask(range(20))  # warm: the first client and moto's own state
    before = _rss_mb()
    ask(range(20, 1020))
    grown = _rss_mb() - before
    assert built.count("s3") <= 1
    assert len(ctx.stores.lru_keys()) == _STORES_KEPT
    assert len(ctx.indexes.lru_keys()) == 0 and ctx.partitions.used == 0
    assert grown < 40, f"RSS grew {grown:.0f} MB over 1,000 index names"


def test_an_embedded_runtime_asked_about_many_memory_names_holds_nothing() -> None:
    from squash.storage import memory

    config = RuntimeConfig()
    ctx = HandlerContext("coordinator", "c", config, InProcessInvoker(config), open_store=open_store)
    namespaces = len(memory._NAMESPACES)
    for i in range(1000):
        with pytest.raises(IndexNotFoundError):
            handle("coordinator", _event("coordinator", f"memory://squash-missing-{i}"), ctx)
    assert len(memory._NAMESPACES) == namespaces
    assert len(ctx.stores.lru_keys()) == _STORES_KEPT
