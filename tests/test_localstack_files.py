"""The files for LocalStack users (localstack/): they parse and hold what the README promises.

No Docker here: only syntax and wiring are checked (compose YAML, the init script under ``bash -n``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

FOLDER = Path(__file__).resolve().parents[1] / "localstack"
INIT_SCRIPT = FOLDER / "init" / "ready.d" / "10-squash-bucket.sh"


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    compose = yaml.safe_load((FOLDER / "docker-compose.yml").read_text(encoding="utf-8"))
    assert set(compose["services"]) == {"localstack"}
    return compose["services"]["localstack"]


def test_compose_service_ports_and_environment(service: dict[str, Any]) -> None:
    assert service["image"].startswith("localstack/localstack:")
    # The edge port, bound to loopback only: the emulator accepts any credentials.
    assert service["ports"] == ["127.0.0.1:4566:4566"]
    env = service["environment"]
    assert {"SERVICES", "LOCALSTACK_AUTH_TOKEN", "AWS_DEFAULT_REGION", "SQUASH_BUCKET"} <= set(env)
    assert {"s3", "lambda", "cloudformation", "iam"} <= set(env["SERVICES"].split(","))


def test_compose_mounts_the_init_folder(service: dict[str, Any]) -> None:
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock"
    assert (FOLDER / mounts["/etc/localstack/init/ready.d"]).resolve() == INIT_SCRIPT.parent


def test_init_script_is_valid_bash_and_secures_the_bucket() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    subprocess.run([bash, "-n", str(INIT_SCRIPT)], check=True)
    assert INIT_SCRIPT.stat().st_mode & 0o111, "LocalStack runs only executable init scripts"
    text = INIT_SCRIPT.read_text(encoding="utf-8")
    assert "set -euo pipefail" in text
    assert "put-public-access-block" in text and "put-bucket-encryption" in text
