"""Deploy Squash with AWS SAM and upload an index: layer, ``sam build``, ``sam deploy``, index, check.

Run from the project venv (it uses the ``squash`` package to build or copy the index) with AWS credentials
and region configured the usual way, the SAM CLI, and a python3.12 (on PATH or pyenv's: it compiles the layer,
and ``sam build`` validates the runtime's interpreter even though the functions have no requirements)::

    python infra/deploy.py                                  # stack "squash", bundled SIFT demo index
    python infra/deploy.py --index file:///data/my-index --index-name products --check
    python infra/deploy.py --skip-deploy --index ./idx      # only upload to an existing stack

Every step talks to AWS through boto3 and the SAM CLI, so setting ``AWS_ENDPOINT_URL`` aims all of it at an
emulator (see infra/smoke_ministack.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "infra"))

from build_layer import build_layer, layer_arch, runtime_python  # noqa: E402

TEMPLATE = REPO / "template.yaml"
SAMCONFIG = REPO / "infra" / "samconfig.toml"
BUILT = REPO / ".aws-sam" / "build"


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def _check_build(logical_ids: list[str]) -> None:
    """Refuse to deploy an empty or partial build (a failed build can leave source folders to be deployed)."""
    missing = [name for name in logical_ids if not (BUILT / name / "app.py").is_file()]
    if not (BUILT / "template.yaml").is_file() or missing:
        raise SystemExit(f"sam build output in {BUILT} is incomplete (missing: {missing or 'template.yaml'})")


def _stack_outputs(stack_name: str) -> dict[str, str]:
    import boto3

    stack = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def _copy_index(source: str, destination: str) -> int:
    """Copy every object of the index at ``source`` to ``destination``; manifests last, as a build writes."""
    from squash.format.keys import MANIFEST_PREFIX
    from squash.storage import open_store

    src, dst = open_store(source), open_store(destination)
    keys = sorted(src.list(), key=lambda key: key.startswith(MANIFEST_PREFIX))
    if not any(key.startswith(MANIFEST_PREFIX) for key in keys):
        raise SystemExit(f"no index at {source} (no {MANIFEST_PREFIX} objects)")
    for key in keys:
        dst.put(key, src.get(key))
    return len(keys)


def _upload(args: argparse.Namespace, uri: str) -> None:
    if args.index:
        count = _copy_index(args.index, uri)
        print(f"copied {count} objects from {args.index} to {uri}")
        return
    from squash.datasets import bundled_sift
    from squash.demo import demo_attributes
    from squash.pipeline import build_index

    data = bundled_sift()
    report = build_index(uri, data.base, demo_attributes(len(data.base)), partitions=8, overwrite=args.overwrite)
    print(f"built the bundled SIFT sample (attributes a0..a3) at {uri}: version {report.version}")


def _check(uri: str, coordinator: str, *, demo: bool) -> None:
    """One query through the deployed coordinator: filtered on the demo index, else a zero vector."""
    import numpy as np

    import squash
    from squash.datasets import bundled_sift

    if demo:
        query, expr = bundled_sift().queries[0], {"a0": {"$lt": 0.5}}
    else:
        query, expr = np.zeros(squash.Index.open(uri).dim, dtype=np.float32), None
    started = time.perf_counter()
    hits = squash.Client(uri, function=coordinator).query(query, k=5, filter=expr)
    seconds = time.perf_counter() - started
    print(
        f"check: {coordinator} answered ids {hits.ids.tolist()} in {seconds:.2f} s "
        f"({int(hits.info['invocations'])} invocations)"
    )
    if len(hits) == 0:
        raise SystemExit("check failed: the query returned no results")
    if demo:
        # The small demo index is cheap to search here too: the deployment must answer exactly the same.
        expected = squash.Index.open(uri).search(query, k=5, filter=expr)
        if expected.ids[0].tolist() != hits.ids.tolist():
            raise SystemExit(f"check failed: in-process search of {uri} gives {expected.ids[0].tolist()}")
        print("check: identical to squash.Index.search on the same stored index")


def _deploy(args: argparse.Namespace) -> None:
    if args.rebuild_layer or layer_arch() != args.arch:
        build_layer(args.arch)
    # sam build looks the Runtime's interpreter up on PATH, where a pyenv shim may stand for an inactive one.
    os.environ["PATH"] = f"{runtime_python().parent}{os.pathsep}{os.environ.get('PATH', '')}"
    from squash.local.template import read_template

    logical_ids = [
        name for name, r in read_template(TEMPLATE)["Resources"].items() if r["Type"] == "AWS::Serverless::Function"
    ]
    _run([args.sam, "build", "--template-file", str(TEMPLATE), "--config-file", str(SAMCONFIG)])
    _check_build(logical_ids)
    overrides = [f"Architecture={args.arch}", *args.parameter]
    command = [
        args.sam, "deploy", "--config-file", str(SAMCONFIG), "--stack-name", args.stack_name,
        "--parameter-overrides", *overrides,
    ]  # fmt: skip
    if args.region:
        command += ["--region", args.region]
    _run(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack-name", default="squash", help="CloudFormation stack (prefix of function names)")
    parser.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    parser.add_argument("--arch", choices=["x86_64", "arm64"], default="x86_64", help="Lambda architecture")
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE", help="template parameter")
    parser.add_argument("--sam", default="sam", help="SAM CLI executable")
    parser.add_argument("--rebuild-layer", action="store_true", help="rebuild infra/layer even if it exists")
    parser.add_argument("--skip-deploy", action="store_true", help="only upload the index to an existing stack")
    parser.add_argument("--index", metavar="URI", help="existing index to copy (path, file://, s3://); default: "
                        "build the bundled SIFT sample")  # fmt: skip
    parser.add_argument("--index-name", default="demo", help="index name under the stack's IndexPrefix")
    parser.add_argument("--overwrite", action="store_true", help="publish a new version over an existing index")
    parser.add_argument("--check", action="store_true", help="run one filtered query through the deployment")
    args = parser.parse_args(argv)
    if args.region:
        # One setting for every boto3 client here (stack outputs, S3 upload, the check's Lambda client).
        os.environ["AWS_DEFAULT_REGION"] = args.region
    if not args.skip_deploy:
        _deploy(args)
    outputs = _stack_outputs(args.stack_name)
    uri = outputs["IndexUriPrefix"] + args.index_name
    _upload(args, uri)
    if args.check:
        _check(uri, outputs["CoordinatorFunction"], demo=args.index is None)
    print(json.dumps({"index": uri, "coordinator": outputs["CoordinatorFunction"]}, indent=2))
    print(f"query it: squash.Client({uri!r}, function={outputs['CoordinatorFunction']!r}).query(vector, k=10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
