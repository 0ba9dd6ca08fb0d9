"""Helpers shared by the benchmark scripts: environment header, tables, recall."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata

import numpy as np


def environment_header(params: dict[str, object]) -> str:
    """Machine, versions and parameters, printed at the top of every run."""
    versions = []
    for package in ("numpy", "faiss-cpu", "hnswlib", "moto", "boto3"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"python {sys.version.split()[0]}; " + ", ".join(versions),
        "parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()),
    ]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        return str(value)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true top-k present in its found top-k (ignoring -1 padding)."""
    hits = 0
    total = 0
    for f, t in zip(found, truth, strict=True):
        want = set(int(v) for v in t[:k] if v >= 0)
        hits += len(want & set(int(v) for v in f[:k]))
        total += len(want)
    return hits / max(total, 1)
