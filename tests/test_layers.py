"""The package's layers (README.md, "Architecture"): every module imports only its own layer or lower ones.

Every import counts, deferred and type-only ones included: a deferred upward import is still a loop in the
design. A module in no layer fails too, so a new module is placed on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "squash"

# Bottom to top; a name is a top-level module or package of `squash`.
LAYERS = {
    "core": {
        "errors",
        "validation",
        "config",
        "access",
        "attributes",
        "model",
        "storage",
        "osq",
        "filter",
        "format",
        "partition",
        "ingest",
        "datasets",
        "costs",
    },
    "search": {"search"},
    "build": {"calibration", "build", "pipeline"},
    "compute": {"compute"},
    "runtime": {"runtime"},
    "interface": {"__init__", "client", "index", "cli", "cli_index", "demo", "bench", "local"},
}
RANK = {name: rank for rank, names in enumerate(LAYERS.values()) for name in names}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def _top(module: str) -> str | None:
    """The top-level part of ``squash`` that ``module`` names (None: not squash; "__init__": the package)."""
    parts = module.split(".")
    if parts[0] != "squash":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every squash import in ``path`` (under ``root``), resolving relative ones and
    ``from squash import x``."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "squash" else [base]
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found if _top(name) is not None]


def _layer_of(path: Path, package: Path) -> str:
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def violations(paths: list[Path], package: Path = PACKAGE) -> list[str]:
    """Every import in ``paths`` (modules of ``package``) that goes up a layer, or that comes from or reaches
    a module in no layer."""
    root = package.parent
    found = []
    for path in paths:
        mine = _layer_of(path, package)
        if mine not in RANK:
            found.append(f"{path.relative_to(root)} is in no layer of tests/test_layers.py")
            continue
        for line, module in imports_of(path, root):
            target = _top(module)
            assert target is not None
            if target not in RANK:
                found.append(f"{path.relative_to(root)}:{line} imports {module}, in no layer")
            elif RANK[target] > RANK[mine]:
                found.append(
                    f"{path.relative_to(root)}:{line} ({LAYER_OF[mine]}) imports {module} ({LAYER_OF[target]}), "
                    "a layer above it"
                )
    return found


def test_no_module_imports_a_layer_above_it() -> None:
    assert violations(sorted(PACKAGE.rglob("*.py"))) == []


def test_compute_never_imports_the_runtime() -> None:
    """Within the layers, the rule that broke before: transports sit below the handlers they carry."""
    assert all(
        not name.startswith("squash.runtime") for p in (PACKAGE / "compute").rglob("*.py") for _, name in imports_of(p)
    )


def test_function_apps_import_only_the_lambda_entry_point() -> None:
    for app in sorted((ROOT / "functions").glob("*/app.py")):
        assert [name for _, name in imports_of(app)] == ["squash.runtime.lambda_app"], app


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("compute/upward.py", "from squash.runtime.dispatch import handle\n", "(compute) imports squash.runtime"),
        ("search/upward.py", "def f():\n    import squash.client\n", "(search) imports squash.client"),
        ("format/upward.py", "from squash import search\n", "(core) imports squash.search"),
        ("runtime/upward.py", "from squash import nowhere\n", "in no layer"),
        ("elsewhere.py", "import numpy\n", "is in no layer"),
    ],
)
def test_the_check_names_an_upward_import(tmp_path: Path, module: str, source: str, complaint: str) -> None:
    """The check itself can fail: planted upward imports (deferred ones too) are each reported."""
    path = tmp_path / "squash" / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    found = violations([path], tmp_path / "squash")
    assert len(found) == 1 and complaint in found[0], found
