"""Build the dependencies layer (``infra/layer/``, the template's ``DependenciesLayer``) without a container.

pip downloads manylinux wheels for the Lambda runtime's Python and architecture (``--platform``,
``--only-binary``), so no Docker is needed, and the ``squash`` package is copied from this checkout. Only the
query path's dependencies go in: pyarrow and threadpoolctl serve index builds, which run outside Lambda, and
boto3 comes with the runtime. The X-Ray SDK (imported only with the template's ``Tracing=Active``) goes in
without its botocore, which the runtime has.

Every module is compiled to bytecode by a python3.12 here (`runtime_python`): /opt is read-only on Lambda,
so bytecode of another version (pip compiles with the interpreter running it) is ignored and every cold
start would compile the whole layer again. Hash-checked ``.pyc`` files stay valid whatever timestamps the
zip gives the sources::

    python infra/build_layer.py                 # x86_64, Python 3.12
    python infra/build_layer.py --arch arm64    # deploy with Architecture=arm64 too
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYER = REPO / "infra" / "layer"
MARKER = ".squash-layer.json"
PYTHON_VERSION = "3.12"  # the template's Runtime
REQUIREMENTS = ("numpy>=1.26", "msgpack>=1.0", "aws-lambda-powertools>=3.0")
WITHOUT_DEPENDENCIES = ("aws-xray-sdk>=2.12", "wrapt>=1.14")
# Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34): any of these wheel tags loads there.
_PLATFORMS = {
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"),
    "arm64": ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64"),
}
# Parts of the package the functions never import (local emulation, benchmarks, the bundled sample).
_NOT_SHIPPED = ("__pycache__", "*.pyc", "local", "bench", "data")


def runtime_python() -> Path:
    """A python3.12 interpreter that runs: on PATH (a pyenv shim of an inactive version does not), then pyenv's.

    Raises:
        SystemExit: there is none; says how to get one.
    """
    candidates = [shutil.which(f"python{PYTHON_VERSION}")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(map(str, pyenv_root.glob(f"versions/{PYTHON_VERSION}.*/bin/python{PYTHON_VERSION}")))
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.decode().strip() == str(tuple(map(int, PYTHON_VERSION.split(".")))):
            return Path(candidate)
    raise SystemExit(
        f"no python{PYTHON_VERSION} found (on PATH or in {pyenv_root}/versions): the layer's bytecode must match "
        f"the Runtime python{PYTHON_VERSION}; install it (e.g. `pyenv install {PYTHON_VERSION}` or apt) and retry"
    )


def _pip_install(site: Path, arch: str, requirements: tuple[str, ...], *extra: str) -> None:
    platforms = [arg for tag in _PLATFORMS[arch] for arg in ("--platform", tag)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            "--target",
            str(site),
            *platforms,
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            "--only-binary=:all:",
            *extra,
            *requirements,
        ],
        check=True,
    )


def build_layer(arch: str = "x86_64", out: Path = LAYER) -> Path:
    """Write the layer to ``out`` (replacing it): ``out/python/`` is what Lambda puts on ``sys.path``."""
    if arch not in _PLATFORMS:
        raise ValueError(f"arch must be one of {sorted(_PLATFORMS)}, got {arch!r}")
    python = runtime_python()
    if out.exists():
        shutil.rmtree(out)
    site = out / "python"
    _pip_install(site, arch, REQUIREMENTS)
    _pip_install(site, arch, WITHOUT_DEPENDENCIES, "--no-deps")
    shutil.copytree(REPO / "squash", site / "squash", ignore=shutil.ignore_patterns(*_NOT_SHIPPED))
    compile_all = [str(python), "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash"]
    subprocess.run([*compile_all, str(site)], check=True)
    (out / MARKER).write_text(json.dumps(_marker(arch)) + "\n")
    return out


def _marker(arch: str) -> dict[str, str]:
    return {"arch": arch, "python": PYTHON_VERSION, "bytecode": PYTHON_VERSION}


def layer_arch(out: Path = LAYER) -> str | None:
    """The architecture the layer at ``out`` was built for, or None when there is none or it is stale."""
    try:
        marker = json.loads((out / MARKER).read_text())
        return str(marker["arch"]) if marker == _marker(marker["arch"]) else None
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(_PLATFORMS), default="x86_64", help="Lambda architecture")
    parser.add_argument("--out", type=Path, default=LAYER, help="layer folder (the template's ContentUri)")
    parser.add_argument(
        "--which-python", action="store_true", help=f"print the python{PYTHON_VERSION} used, build nothing"
    )
    args = parser.parse_args(argv)
    if args.which_python:
        print(runtime_python())
        return 0
    out = build_layer(args.arch, args.out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"layer: {out} ({args.arch}, Python {PYTHON_VERSION}, {size / 1e6:.0f} MB unzipped; Lambda allows 250)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
