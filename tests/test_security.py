"""Static checks of the package source (not the tests): no code execution from data, no shell, no secrets logged.

Parsed with `ast`, so docstrings that merely mention pickle or eval do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "squash").rglob("*.py"), *(REPO / "functions").rglob("*.py")])
BANNED_CALLS = {"eval", "exec"}
BANNED_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve"}
BANNED_ATTRIBUTES = {("os", "system"), ("os", "popen")}
SAFE_LOADERS = ("SafeLoader", "CSafeLoader")
SECRET_NAMES = ("SECRET", "SESSION_TOKEN", "PASSWORD")
LOG_CALLS = {"print", "debug", "info", "warning", "error", "exception", "critical", "write"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _problems(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    # Loader classes defined in this file (possibly inside a function), by name -> base names.
    classes = {n.name: [_name(b) for b in n.bases] for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} imports {n}" for n in names if n.split(".")[0] in BANNED_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in BANNED_CALLS:
            found.append(f"{where} calls {func.id}()")
        if isinstance(func, ast.Attribute) and (_name(func.value), func.attr) in BANNED_ATTRIBUTES:
            found.append(f"{where} calls {_name(func.value)}.{func.attr}()")
        for keyword in node.keywords:
            truthy = isinstance(keyword.value, ast.Constant) and keyword.value.value is True
            if keyword.arg in {"shell", "allow_pickle"} and truthy:
                found.append(f"{where} passes {keyword.arg}=True")
        if isinstance(func, ast.Attribute) and func.attr == "load" and _name(func.value) == "yaml":
            found += _unsafe_yaml(node, classes, where)
        if _name(func) in LOG_CALLS:
            text = ast.unparse(node).upper()
            found += [f"{where} may log a secret ({s})" for s in SECRET_NAMES if s in text]
    return found


def _unsafe_yaml(node: ast.Call, classes: dict[str, list[str]], where: str) -> list[str]:
    """``yaml.load`` is safe only with SafeLoader or a class of this file derived from it."""
    loader = next((k.value for k in node.keywords if k.arg == "Loader"), node.args[1] if len(node.args) > 1 else None)
    if loader is None:
        return [f"{where} calls yaml.load without a Loader"]
    name, seen = _name(loader), set()
    while name not in SAFE_LOADERS and name in classes and name not in seen:
        seen.add(name)
        name = next((base for base in classes[name] if base in SAFE_LOADERS or base in classes), "")
    if name in SAFE_LOADERS:
        return []
    return [f"{where} calls yaml.load with {_name(loader)}, not a SafeLoader"]


def test_sources_are_found() -> None:
    assert len(SOURCES) > 20 and any(p.parts[-2:] == ("runtime", "dispatch.py") for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_execution_shell_or_logged_secrets(path: Path) -> None:
    assert _problems(path) == []


def test_the_scanner_catches_what_it_bans(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport subprocess, yaml, os\neval('1')\nsubprocess.run('ls', shell=True)\n"
        "yaml.load(open('x'))\nos.system('ls')\nprint(os.environ['AWS_SECRET_ACCESS_KEY'])\n"
    )
    problems = _problems(bad, tmp_path)
    for expected in ("imports pickle", "calls eval", "shell=True", "without a Loader", "os.system", "secret"):
        assert any(expected in p for p in problems), (expected, problems)
