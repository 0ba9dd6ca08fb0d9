"""Build the dependencies layer (``infra/layer/``, the template's ``DependenciesLayer``) without a container.

pip downloads manylinux wheels for the Lambda runtime's Python and architecture (``--platform``,
``--only-binary``), so neither Docker nor python3.12 is needed, and the ``squash`` package is copied from
this checkout. Only the query path's dependencies go in: pyarrow and threadpoolctl serve index builds, which
run outside Lambda, and boto3 comes with the runtime::

    python infra/build_layer.py                 # x86_64, Python 3.12
    python infra/build_layer.py --arch arm64    # deploy with Architecture=arm64 too
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYER = REPO / "infra" / "layer"
MARKER = ".squash-layer.json"
PYTHON_VERSION = "3.12"  # the template's Runtime
REQUIREMENTS = ("numpy>=1.26", "msgpack>=1.0", "aws-lambda-powertools>=3.0")
# Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34): any of these wheel tags loads there.
_PLATFORMS = {
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"),
    "arm64": ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64"),
}
# Parts of the package the functions never import (local emulation, benchmarks, the bundled sample).
_NOT_SHIPPED = ("__pycache__", "*.pyc", "local", "bench", "data")


def build_layer(arch: str = "x86_64", out: Path = LAYER) -> Path:
    """Write the layer to ``out`` (replacing it): ``out/python/`` is what Lambda puts on ``sys.path``."""
    if arch not in _PLATFORMS:
        raise ValueError(f"arch must be one of {sorted(_PLATFORMS)}, got {arch!r}")
    if out.exists():
        shutil.rmtree(out)
    site = out / "python"
    platforms = [arg for tag in _PLATFORMS[arch] for arg in ("--platform", tag)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(site),
            *platforms,
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            "--only-binary=:all:",
            *REQUIREMENTS,
        ],
        check=True,
    )
    shutil.copytree(REPO / "squash", site / "squash", ignore=shutil.ignore_patterns(*_NOT_SHIPPED))
    (out / MARKER).write_text(json.dumps({"arch": arch, "python": PYTHON_VERSION}) + "\n")
    return out


def layer_arch(out: Path = LAYER) -> str | None:
    """The architecture the layer at ``out`` was built for, or None when there is none."""
    try:
        return str(json.loads((out / MARKER).read_text())["arch"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(_PLATFORMS), default="x86_64", help="Lambda architecture")
    parser.add_argument("--out", type=Path, default=LAYER, help="layer folder (the template's ContentUri)")
    args = parser.parse_args(argv)
    out = build_layer(args.arch, args.out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"layer: {out} ({args.arch}, Python {PYTHON_VERSION}, {size / 1e6:.0f} MB unzipped; Lambda allows 250)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
