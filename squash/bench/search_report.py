"""Tables and plots of ``squash bench search``: recall-QPS curves, QPS at target recalls, footprints."""

from __future__ import annotations

import cProfile
import math
import pstats
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from squash.bench.common import markdown_table
from squash.bench.peers import PEERS
from squash.bench.workloads import K, Workload
from squash.index import Index

TARGETS = (0.90, 0.95, 0.99)
# The label of Squash's point without knobs: what the build's calibration chooses per kind of query.
DEFAULT = "default (no knobs)"
SQ8 = "faiss IVF-SQ8"


@dataclass
class Point:
    """One measured sweep setting; ``info`` holds engine timings and result checks."""

    label: str
    recall: float
    qps: float
    queries: int
    info: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Footprint:
    """Bytes per vector of one dataset's Squash index, and what its first search after opening costs."""

    dataset: str
    shape: tuple[int, int]
    object_bytes: float
    warm_bytes: float
    # Warm bytes of a processor that reads the raw vectors by ranged reads instead of holding them.
    ranged_bytes: float
    # Per batch ("unfiltered", "1% ..."): seconds to open, of the first search (loading what it visits), to
    # load every partition, of the first search after that, and the median of warm searches.
    first_query: dict[str, tuple[float, float, float, float, float]] = field(default_factory=dict)


Curves = dict[str, list[Point]]


def frontier(points: Sequence[Point]) -> list[Point]:
    """Pareto frontier, ascending recall (so descending QPS)."""
    best = -1.0
    keep = []
    for p in sorted(points, key=lambda p: (-p.recall, -p.qps)):
        if p.qps > best:
            keep.append(p)
            best = p.qps
    return keep[::-1]


def qps_at(points: Sequence[Point], target: float) -> float | None:
    """QPS at ``target`` recall, log-interpolated between the frontier points around it."""
    front = frontier(points)
    for i, p in enumerate(front):
        if p.recall >= target:
            if i == 0:
                return p.qps
            lo = front[i - 1]
            t = (target - lo.recall) / (p.recall - lo.recall)
            return math.exp(math.log(lo.qps) + t * (math.log(p.qps) - math.log(lo.qps)))
    return None


def point_at(points: Sequence[Point], target: float) -> Point | None:
    """The fastest measured point reaching ``target``."""
    reached = [p for p in points if p.recall >= target]
    return max(reached, key=lambda p: p.qps) if reached else None


# ---------------------------------------------------------------- reporting


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def default_point(curves: Curves) -> Point:
    return next(p for p in curves["Squash"] if p.label == DEFAULT)


def _peer_best(curves: Curves, target: float) -> float | None:
    peers = [q for name, pts in curves.items() if name != "Squash" and (q := qps_at(pts, target)) is not None]
    return max(peers) if peers else None


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None:
        return "—"
    return "no peer value" if theirs is None else f"{ours / theirs:.2f}x"


def results_table(work_curves: list[tuple[Workload, Curves]]) -> str:
    """Per workload: each system's QPS at the target recalls, Squash's default point, Squash's ratios."""
    headers = ["workload", "system", *[f"QPS@{t}" for t in TARGETS], "max recall", "queries/point"]
    rows = []
    for work, curves in work_curves:
        for name, points in curves.items():
            rows.append(
                [
                    work.label,
                    name,
                    *[_fmt(qps_at(points, t)) for t in TARGETS],
                    f"{max(p.recall for p in points):.4f}",
                    _span(sorted({p.queries for p in points})),
                ]
            )
        d = default_point(curves)
        reached = [_fmt(d.qps) if d.recall >= t else "—" for t in TARGETS]
        label = f"Squash {DEFAULT}, estimate {d.info['estimate']:.3f}"
        rows.append([work.label, label, *reached, f"{d.recall:.4f}", str(d.queries)])
        ours = [qps_at(curves["Squash"], t) for t in TARGETS]
        best = [_ratio(q, _peer_best(curves, t)) for q, t in zip(ours, TARGETS, strict=True)]
        sq8 = [_ratio(q, qps_at(curves.get(SQ8, []), t)) for q, t in zip(ours, TARGETS, strict=True)]
        rows.append([work.label, "**Squash / best peer**", *best, "", ""])
        rows.append([work.label, f"**Squash / {SQ8}**", *sq8, "", ""])
    return markdown_table(headers, rows)


SUMMARY_HEADERS = ["dataset", "workload", "Squash", *PEERS]
SUMMARY_HEADERS += ["Squash / best peer", "Squash / IVF-SQ8", "Squash / hnswlib", "Squash default: recall, QPS"]


def summary_rows(name: str, work_curves: list[tuple[Workload, Curves]], target: float = 0.95) -> list[list[str]]:
    """One row per workload: QPS at ``target`` recall per system, Squash's ratios, and its default point."""
    rows = []
    for work, curves in work_curves:
        qps = {system: qps_at(points, target) for system, points in curves.items()}
        d = default_point(curves)
        rows.append(
            [
                name,
                f"{work.selectivity:.1%} {work.label}",
                *(_fmt(qps.get(system)) for system in ("Squash", *PEERS)),
                _ratio(qps["Squash"], _peer_best(curves, target)),
                _ratio(qps["Squash"], qps.get(SQ8)),
                _ratio(qps["Squash"], qps.get("hnswlib")),
                f"{d.recall:.3f}, {_fmt(d.qps)}",
            ]
        )
    return rows


def footprint_table(footprints: Sequence[Footprint]) -> str:
    """Bytes per vector: raw float32, Squash's stored partition objects, and its warm prepared partitions."""
    rows = []
    for f in footprints:
        raw = 4 * f.shape[1]
        rows.append(
            [
                f.dataset,
                f"{f.shape[0]:,} x {f.shape[1]}",
                f"{raw:,}",
                f"{f.object_bytes:,.0f}",
                f"{f.warm_bytes:,.0f}",
                f"{f.object_bytes / raw:.2f}",
                f"{f.warm_bytes / raw:.2f}",
                f"{f.ranged_bytes:,.0f}",
                f"{f.ranged_bytes / raw:.2f}",
            ]
        )
    headers = ["dataset", "rows x dim", "float32 B/vector", "objects B/vector", "warm B/vector"]
    ratios = ["objects / float32", "warm / float32", "warm without vectors B/vector", "without vectors / float32"]
    return markdown_table([*headers, *ratios], rows)


def first_query_table(footprints: Sequence[Footprint]) -> str:
    """The first search of a batch on a freshly opened index against the median warm search of it."""
    rows = [
        [
            f.dataset,
            batch,
            f"{opened:.3f}",
            f"{first:.3f}",
            f"{load:.3f}",
            f"{loaded:.3f}",
            f"{warm:.3f}",
            f"{first / warm:.1f}x",
            f"{loaded / warm:.1f}x",
        ]
        for f in footprints
        for batch, (opened, first, load, loaded, warm) in f.first_query.items()
    ]
    headers = ["dataset", "batch", "open s", "first search s", "load s", "first after load s", "warm s (median)"]
    return markdown_table([*headers, "first / warm", "first after load / warm"], rows)


def time_table(work_curves: list[tuple[Workload, Curves]]) -> str:
    """Where Squash's time goes at its fastest point with recall >= 0.95."""
    headers = [
        "workload",
        "knobs",
        "recall",
        "QPS",
        "plan %",
        "filter %",
        "estimates %",
        "re-rank %",
        "rest %",
        "partitions",
        "filtered",
        "estimated",
        "reranked",
        "exact scans",
        "checks (viol/count/dup)",
    ]
    rows = []
    for work, curves in work_curves:
        p = point_at(curves["Squash"], 0.95)
        if p is None:
            rows.append([work.label, "never reaches 0.95", *[""] * 13])
            continue
        total = p.queries / p.qps
        shares = [p.info[name] / total for name in ("plan_s", "filter_s", "estimate_s", "rerank_s")]
        rows.append(
            [
                work.label,
                p.label,
                f"{p.recall:.4f}",
                _fmt(p.qps),
                *(f"{100 * share:.0f}" for share in shares),
                f"{100 * (1 - sum(shares)):.0f}",
                f"{p.info['mean partitions']:.2f}",
                f"{p.info['mean filtered']:,.0f}",
                f"{p.info['mean estimated']:,.0f}",
                f"{p.info['mean reranked']:,.0f}",
                f"{p.info['mean exact_scans']:.2f}",
                f"{p.info['violations']:.0f}/{p.info['wrong_count']:.0f}/{p.info['duplicates']:.0f}",
            ]
        )
    return markdown_table(headers, rows)


def profile_top(index: Index, queries: NDArray[np.float32], work: Workload, knobs: dict[str, Any]) -> str:
    """cProfile top-10 by own time of one Squash search call."""
    chunk = work.filters[: len(queries)]
    profiler = cProfile.Profile()
    profiler.enable()
    index.search(queries, K, None if chunk[0] is None else chunk, **knobs)
    profiler.disable()
    stats = pstats.Stats(profiler).sort_stats("tottime")
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    lines = []
    for func in stats.fcn_list[:10]:  # type: ignore[attr-defined]
        calls, _, tottime, cumtime, _ = stats.stats[func]  # type: ignore[attr-defined]
        path, line, name = func
        where = f"{Path(path).name}:{line}({name})" if line else name
        lines.append(f"    {tottime:7.3f} s {100 * tottime / total:5.1f}%  cum {cumtime:7.3f} s  {calls:>7}  {where}")
    return "\n".join(lines)


def plot(out: Path, dataset: str, selectivity: float, work_curves: list[tuple[Workload, Curves]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(work_curves), figsize=(6 * len(work_curves), 4.5), squeeze=False)
    for ax, (work, curves) in zip(axes[0], work_curves, strict=True):
        for name, points in curves.items():
            # The frontier as a line, every measured point as a faint marker of the same colour.
            front = frontier(points)
            style = {"linewidth": 2.5, "color": "black"} if name == "Squash" else {}
            (line,) = ax.plot([p.recall for p in front], [p.qps for p in front], marker="o", label=name, **style)
            ax.scatter([p.recall for p in points], [p.qps for p in points], color=line.get_color(), alpha=0.3, s=12)
        d = default_point(curves)
        ax.scatter([d.recall], [d.qps], marker="*", s=180, color="red", zorder=5, label=f"Squash {DEFAULT}")
        for t in TARGETS:
            ax.axvline(t, color="grey", linewidth=0.5, linestyle=":")
        ax.set_yscale("log")
        ax.set_xlim(0.5, 1.005)
        ax.set_xlabel(f"recall@{K}")
        ax.set_ylabel("queries per second (1 thread)")
        ax.set_title(f"{dataset}, {selectivity:.1%}: {work.label}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{dataset}-{selectivity * 100:g}pct.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
