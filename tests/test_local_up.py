"""``squash local up`` as a person runs it: from any folder, with the checkout's template, ready to query."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest

import squash
from squash.errors import InvalidInputError
from squash.local import cli
from squash.local.template import read_template


def _wait_for(path: Path, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"squash local up did not become ready:\n{log.read_text()}"
        time.sleep(0.05)


@pytest.mark.slow
def test_up_from_another_folder_creates_the_bucket_and_names_the_coordinator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not (tmp_path / "template.yaml").exists()
    env_file, log = tmp_path / ".squash-local.env", tmp_path / "up.log"
    command = [sys.executable, "-m", "squash.cli", "local"]
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [*command, "up", "--workers", "1", "--bucket", "idx"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(env_file, up, log)
        for line in env_file.read_text().splitlines():
            name, value = line.removeprefix("export ").split("=", 1)
            monkeypatch.setenv(name, value)
        printed = log.read_text()
        (coordinator,) = re.findall(r'squash\.Client\("s3://idx/indexes/NAME", function="([^"]+)"\)', printed)
        assert coordinator == "local-coordinator"
        boto3.client("s3").head_bucket(Bucket="idx")  # created, and named in the output

        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(300, 16)).astype("float32")
        squash.build_index("s3://idx/indexes/t", vectors, {"price": rng.uniform(0, 100, 300)}, partitions=2)
        hits = squash.Client("s3://idx/indexes/t", function=coordinator).query(vectors[7], k=5)
        expected = squash.Index.open("s3://idx/indexes/t").search(vectors[7:8], k=5)
        assert hits.ids.tolist() == expected.ids[0].tolist() and hits.ids[0] == 7

        down = subprocess.run([*command, "down"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=15) == 0
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGKILL)
            up.wait()
    assert not env_file.exists()


def test_without_any_template_the_error_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "CHECKOUT_TEMPLATE", tmp_path / "absent" / "template.yaml")
    with pytest.raises(InvalidInputError, match="--template"):
        cli._template(None)
    assert cli._template(tmp_path / "mine.yaml") == tmp_path / "mine.yaml"
    with pytest.raises(InvalidInputError, match="cannot read the template"):
        read_template(tmp_path / "mine.yaml")
    for bad in ("Idx", "ab", "a..b", "-idx", "x" * 64):
        with pytest.raises(InvalidInputError, match="bucket"):
            cli._bucket(bad)
    assert cli._bucket("squash-local.2") == "squash-local.2"
