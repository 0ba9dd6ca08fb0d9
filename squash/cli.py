"""The ``squash`` command line: each subcommand lives in its own module and registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys

from squash.errors import SquashError

# name -> (module, one-line help); `squash bench NAME ...` passes its arguments to module.run(argv).
BENCHMARKS = {
    "cost": ("squash.bench.cost", "QPS, recall and $ per query vs allocators; cost vs S3 Vectors, turbopuffer, EC2"),
    "kernels": ("squash.bench.kernels", "numpy vs compiled SIMD kernels: code scan, 4-bit tables, re-rank, Hamming"),
    "osq": ("squash.bench.osq", "OSQ recall and encode speed vs faiss SQ/PQ at equal bytes"),
    "partition": ("squash.bench.partition", "balanced k-means time, balance and neighbour locality"),
    "recall": ("squash.bench.recall", "recall@10, its estimate and QPS at default settings, old defaults, hard cases"),
    "search": ("squash.bench.search", "filtered QPS vs recall@10: Squash, faiss IVF, hnswlib, numpy"),
    "soak": ("squash.bench.soak", "N concurrent clients on the local stack for M seconds: errors, latency, RSS"),
}
# Modules with register(subparsers) adding their own subcommands.
COMMAND_MODULES = ("squash.demo", "squash.cli_index", "squash.local.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="squash", description="Serverless filtered vector search.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    bench = sub.add_parser("bench", help="run a benchmark script (see `squash bench --list`)")
    bench.add_argument("name", nargs="?", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.add_argument("--list", action="store_true", help="list the benchmarks")
    bench.set_defaults(handler=_run_bench)
    return parser


def _run_bench(args: argparse.Namespace) -> int:
    if args.list or args.name is None:
        for name, (_, text) in sorted(BENCHMARKS.items()):
            print(f"{name:12s} {text}")
        return 0
    module = importlib.import_module(BENCHMARKS[args.name][0])
    return int(module.run(args.args) or 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SquashError as exc:
        print(f"squash: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
