"""A deployed function container against careless and hostile callers.

- A warm coordinator asked about thousands of index names keeps one S3 client and bounded caches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from squash.compute.inprocess import InProcessInvoker
from squash.config import RuntimeConfig
from squash.errors import IndexNotFoundError
from squash.handlers import _STORES_KEPT, HandlerContext, handle
from squash.storage import open_store

EVENTS = Path(__file__).parent / "events"
BUCKET = "squash-deployed"


def _event(role: str, uri: str) -> dict[str, Any]:
    event = json.loads((EVENTS / f"{role}_request.json").read_text())
    event["index"]["uri"] = uri
    return event


@pytest.fixture
def s3_bucket(aws_env: None) -> Iterator[str]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield BUCKET


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
    config = RuntimeConfig()
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
