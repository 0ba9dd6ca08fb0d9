"""``squash build``, ``squash info`` and ``squash gc``: build an index from files, describe a stored index,
delete what no recent version uses.

`register` adds the subcommands to the main parser; each sets ``handler(args) -> exit code``, as
`squash.cli` expects.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any

from squash.errors import InvalidInputError
from squash.format.reader import list_versions, load_manifest
from squash.format.writer import collect_garbage
from squash.model import Metric
from squash.pipeline import build_index
from squash.search.effort import TOP_RUNG
from squash.storage import open_store

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``build``, ``info`` and ``gc`` subcommands to ``subparsers`` (from ``add_subparsers``)."""
    build = subparsers.add_parser(
        "build",
        help="build an index from vector files and store it",
        description="Build an index and publish it at --out as a new version.",
    )
    build.add_argument(
        "--vectors",
        required=True,
        nargs="+",
        metavar="FILE",
        help=".npy, .fvecs, .bvecs, .ivecs, .parquet, .arrow or .feather (several are concatenated)",
    )
    build.add_argument("--attributes", metavar="FILE", help=".parquet, .arrow or .feather, one row per vector")
    build.add_argument(
        "--out", required=True, metavar="URI", help="memory://, file:///path, a path or s3://bucket/prefix"
    )
    build.add_argument("--metric", default="l2", choices=[m.value for m in Metric])
    build.add_argument("--partitions", type=int, help="number of partitions (default: about 100k vectors each)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--target-recall", type=float, default=0.95, help="recall@10 the calibrated defaults aim for (default 0.95)"
    )
    build.add_argument("--workers", type=int, help="threads for the build (default: one per core)")
    build.add_argument("--overwrite", action="store_true", help="publish a new version over an existing index")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(handler=_build)

    info = subparsers.add_parser("info", help="describe a stored index", description="Describe a stored index.")
    info.add_argument("uri", metavar="URI")
    info.add_argument("--version", type=int, help="a published version (default: the latest)")
    info.set_defaults(handler=_info)

    gc = subparsers.add_parser(
        "gc",
        help="delete old versions and the objects of failed or killed builds",
        description="Delete manifests older than the latest --keep versions, the objects of builds none of "
        "them use (killed builds included) and abandoned temporary files, all older than --min-age.",
    )
    gc.add_argument("uri", metavar="URI")
    gc.add_argument("--keep", type=int, default=2, help="latest versions to keep (default 2)")
    gc.add_argument(
        "--min-age",
        type=_age,
        default=timedelta(hours=1),
        metavar="AGE",
        help="spare builds younger than this, as 90s, 30m, 1h or 2d (default 1h); longer than any build runs",
    )
    gc.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    gc.set_defaults(handler=_gc)


def _age(text: str) -> timedelta:
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age such as 90s, 30m, 1h or 2d")
    return timedelta(seconds=float(match.group(1)) * _AGE_UNITS[match.group(2)])


def _build(args: argparse.Namespace) -> int:
    vectors = args.vectors[0] if len(args.vectors) == 1 else args.vectors
    report = build_index(
        args.out,
        vectors,
        args.attributes,
        overwrite=args.overwrite,
        metric=args.metric,
        partitions=args.partitions,
        seed=args.seed,
        workers=args.workers,
        progress=not args.quiet,
        target_recall=args.target_recall,
    )
    print(
        f"built {report.uri} version {report.version}: {report.n_vectors} vectors x {report.dim} dims, "
        f"{report.n_partitions} partitions, {_size(report.total_bytes)} "
        f"({report.bytes_per_vector:.1f} bytes/vector) in {report.seconds['total']:.1f} s"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    store = open_store(args.uri)
    m = load_manifest(store, args.version)
    versions = list_versions(store)
    raw = m.dim * (1 if m.vector_dtype == "|u1" else 4)
    lines = [
        f"index        {store.uri}",
        f"version      {m.version} (published: {', '.join(map(str, versions))})",
        f"build        {m.build_id}, created {m.created}",
        f"vectors      {m.n_vectors}",
        f"dims         {m.dim} (kept as {'uint8' if m.vector_dtype == '|u1' else 'float32'} for re-ranking)",
        f"metric       {m.metric.value}",
        f"partitions   {m.n_partitions}",
        f"stored       {_size(m.stored_bytes)}: {m.stored_bytes / m.n_vectors:.1f} bytes/vector "
        f"(raw vectors alone: {raw} bytes/vector)",
        f"routing      {_size(m.routing.size)}",
        "attributes   " + (", ".join(_attribute(f) for f in m.schema.fields) or "none"),
        "parameters   " + ", ".join(f"{k}={v}" for k, v in sorted(m.params.items()) if k != "calibration"),
        *_calibration(m.params.get("calibration")),
    ]
    seconds = m.build.get("seconds")
    if isinstance(seconds, dict):
        lines.append("build time   " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    lines.append("partition         rows        bytes")
    lines.extend(f"{i:>9} {e.rows:>12} {e.size:>12}" for i, e in enumerate(m.partitions))
    print("\n".join(lines))
    return 0


def _calibration(calibration: Any) -> list[str]:
    """The calibration table: recall@k per effort rung for each kind of query, and its cost."""
    if not isinstance(calibration, dict):
        return ["calibration  none (built before calibration existed: effort knobs at their defaults)"]
    lines = [
        f"calibration  target recall@{calibration['k']} {calibration['target']}, {calibration['seconds']:.1f} s; "
        "recall per effort rung (r0, r2, ...) on sample queries drawn from the index"
    ]
    for kind, rows in calibration["recall"].items():
        table = ", ".join(f"r{rung} {mean:.3f} (>= {assured:.3f})" for rung, mean, assured in rows) or "-"
        faster = calibration["exact_faster"].get(kind)
        exact = f"; the exact search is faster from r{faster} on" if faster is not None and faster <= TOP_RUNG else ""
        lines.append(f"  {kind:<10} {table}{exact} ({calibration['sample'][kind]} queries)")
    return lines


def _gc(args: argparse.Namespace) -> int:
    store = open_store(args.uri)
    garbage = collect_garbage(store, keep=args.keep, min_age=args.min_age, dry_run=args.dry_run)
    if not garbage and not store.list():
        raise InvalidInputError(f"nothing is stored at {store.uri}; check the URI")
    verb = "would delete" if args.dry_run else "deleted"
    for info in garbage:
        print(f"{verb} {info.size:>12} {info.key}")
    freed = sum(info.size for info in garbage)
    print(f"{verb} {len(garbage)} objects, {_size(freed)} ({freed} bytes) {'to free' if args.dry_run else 'freed'}")
    return 0


def _attribute(spec: Any) -> str:
    if spec.categories:
        return f"{spec.name} ({spec.type.value}, {len(spec.categories)} values)"
    return f"{spec.name} ({spec.type.value})"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
