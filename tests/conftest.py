"""Shared fixtures: real datasets from ../shared (skipped with a message when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Folder of a ../shared dataset, or skip the test saying how to get it."""
    path = SHARED_DATA / name
    if not (path / "base.npy").exists():
        pytest.skip(f"{path} is absent: this test needs the shared datasets (../shared/data, present in CI)")
    return path


@pytest.fixture(scope="session")
def sift5k() -> dict[str, np.ndarray]:
    path = shared_dataset("sift-ngt-5k")
    return {name: np.load(path / f"{name}.npy") for name in ("base", "queries", "gt_ids", "gt_d2")}


@pytest.fixture(scope="session")
def fashion() -> dict[str, np.ndarray]:
    path = shared_dataset("fashion-mnist-784")
    names = ("base", "queries", "gt_ids", "gt_d2", "base_attrs", "query_attrs")
    return {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in names}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and no endpoint override, so boto3 talks only to the in-process mock."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
