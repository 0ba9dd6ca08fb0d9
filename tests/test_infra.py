"""infra/: the layer ships bytecode the Lambda runtime can use, and CI runs the deployment smoke test.

In the layer build, pip is replaced by a stand-in that writes one small package, so no wheel is downloaded;
the squash copy and the compile step are the real ones.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_layer", REPO / "infra" / "build_layer.py")
assert _spec is not None and _spec.loader is not None
build_layer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_layer)


def _fake_pip(site: Path, arch: str, requirements: tuple[str, ...], *extra: str) -> None:
    package = site / requirements[0].split(">")[0].replace("-", "_")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")


def test_layer_bytecode_is_compiled_for_the_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        build_layer.runtime_python()
    except SystemExit as missing:
        pytest.skip(str(missing))
    monkeypatch.setattr(build_layer, "_pip_install", _fake_pip)
    out = build_layer.build_layer("x86_64", tmp_path / "layer")
    site = out / "python"
    sources = sorted(site.rglob("*.py"))
    assert any(path.parts[-3:] == ("squash", "runtime", "dispatch.py") for path in sources)
    assert not (site / "squash" / "local").exists() and (site / "numpy" / "__init__.py").is_file()
    tag = f"cpython-{build_layer.PYTHON_VERSION.replace('.', '')}"
    for source in sources:
        pyc = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        assert pyc.is_file(), source
        # PEP 552 flags: hash-based (bit 0), source not checked (bit 1 clear), so zip timestamps do not matter.
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01, pyc
    assert {path.name.split(".")[1] for path in site.rglob("*.pyc")} == {tag}
    assert json.loads((out / build_layer.MARKER).read_text())["bytecode"] == build_layer.PYTHON_VERSION
    assert build_layer.layer_arch(out) == "x86_64"


def test_a_layer_without_runtime_bytecode_counts_as_stale(tmp_path: Path) -> None:
    (tmp_path / build_layer.MARKER).write_text(json.dumps({"arch": "x86_64", "python": "3.12"}))
    assert build_layer.layer_arch(tmp_path) is None


def test_ci_runs_the_pinned_deploy_smoke() -> None:
    steps = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    assert "bash infra/smoke_ministack.sh" in steps
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "infra" / "smoke-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {"ministack", "aws-sam-cli"} <= set(pins) and all(version.strip() for version in pins.values())
    script = (REPO / "infra" / "smoke_ministack.sh").read_text()
    assert "smoke-requirements.txt" in script and "timeout" in script and "trap cleanup EXIT" in script
