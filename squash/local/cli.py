"""``squash local up`` / ``squash local down``: a local S3 + Lambda stack for people, in the foreground.

``up`` runs the functions of ``template.yaml`` (this folder's, else the one of the checkout the squash package
runs from), creates an index bucket, prints the ``export`` lines to use from another shell and the coordinator
to pass to `squash.Client`, and writes the exports to an env file (default ``.squash-local.env``, sourceable
with ``. .squash-local.env``) next to a pid file (``.squash-local.pid``); both are removed when the stack
stops. ``down`` stops the stack named by the pid file.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from squash.errors import InvalidInputError

if TYPE_CHECKING:
    from squash.local.stack import LocalStack

DEFAULT_ENV_FILE = Path(".squash-local.env")
DEFAULT_BUCKET = "squash-local"
# The template of the checkout this package runs from (an editable or source install); a wheel has none.
CHECKOUT_TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``squash local up`` and ``squash local down``."""
    local = subparsers.add_parser("local", help="run S3 and Lambda locally without Docker (up / down)")
    actions = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start moto S3 and the Lambda service from a SAM template")
    up.add_argument("--template", type=Path, help="SAM template (default: ./template.yaml, else the squash checkout's)")
    up.add_argument("--bucket", default=DEFAULT_BUCKET, help=f"S3 bucket to create for indexes ({DEFAULT_BUCKET})")
    up.add_argument("--workers", type=int, default=2, help="warm workers per function (default 2)")
    up.add_argument("--prewarm", action="store_true", help="start every worker before serving")
    up.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE", help="template parameter override")
    up.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help="where to write the exports")
    up.set_defaults(handler=_up)
    down = actions.add_parser("down", help="stop the stack started by `squash local up`")
    down.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help="env file `up` wrote")
    down.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for it to stop")
    down.set_defaults(handler=_down)


def _template(path: Path | None) -> Path:
    """``--template``, else ./template.yaml, else the checkout's."""
    if path is not None:
        return path
    for candidate in (Path("template.yaml"), CHECKOUT_TEMPLATE):
        if candidate.is_file():
            return candidate
    raise InvalidInputError(
        f"no template.yaml in {Path.cwd()} nor at {CHECKOUT_TEMPLATE}: pass --template PATH (a Squash checkout's "
        "template.yaml, or one written by `python infra/generate_template.py --out PATH`)"
    )


def _bucket(name: str) -> str:
    """``--bucket``, checked against S3's naming rules before anything starts."""
    if not _BUCKET_NAME.fullmatch(name) or ".." in name:
        raise InvalidInputError(
            f"--bucket {name!r} is not an S3 bucket name: 3-63 lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def _coordinator(stack: LocalStack) -> str | None:
    """The name of the template's coordinator function (logical id ``Coordinator``), if it has one."""
    return next((name for name, spec in stack.functions.items() if spec.logical_id == "Coordinator"), None)


def _pid_file(env_file: Path) -> Path:
    return env_file.with_suffix(".pid")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An exited process its parent has not reaped yet still answers kill(0); on Linux, check for a zombie.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # One stop request is enough; a second signal must not cut the cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    from squash.local.stack import LocalStack

    pid_file = _pid_file(args.env_file)
    pid = _read_pid(pid_file)
    if pid is not None and _running(pid):
        raise InvalidInputError(f"a local stack is already running (pid {pid}); stop it with `squash local down`")
    bucket = _bucket(args.bucket)
    parameters = dict(item.split("=", 1) for item in args.parameter if "=" in item)
    if len(parameters) != len(args.parameter):
        raise InvalidInputError("--parameter takes KEY=VALUE")
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and workers would inherit that.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    stack = LocalStack(
        _template(args.template),
        parameters=parameters,
        workers=args.workers,
        prewarm=args.prewarm,
        worker_output="console",
    )
    try:
        with stack:
            stack.client("s3").create_bucket(Bucket=bucket)
            exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in stack.env.items())
            pid_file.write_text(f"{os.getpid()}\n")
            staging = args.env_file.with_name(args.env_file.name + ".tmp")
            staging.write_text(exports)
            # Written last and atomically: its presence means the stack is ready.
            staging.replace(args.env_file)
            print(f"# squash local stack (pid {os.getpid()}): functions {', '.join(stack.functions)}")
            print(exports, end="")
            uri = f"s3://{bucket}/indexes/NAME"
            print(f"# index bucket {bucket}: squash build ... --out {uri}")
            coordinator = _coordinator(stack)
            if coordinator is not None:
                print(f'# then: squash.Client("{uri}", function="{coordinator}")')
            print(f"# or: . {args.env_file}    stop with Ctrl-C or `squash local down`", flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        print("# squash local stack stopped", file=sys.stderr)
    finally:
        args.env_file.unlink(missing_ok=True)
        if _read_pid(pid_file) == os.getpid():
            pid_file.unlink(missing_ok=True)
    return 0


def _down(args: argparse.Namespace) -> int:
    pid_file = _pid_file(args.env_file)
    pid = _read_pid(pid_file)
    if pid is None or not _running(pid):
        pid_file.unlink(missing_ok=True)
        args.env_file.unlink(missing_ok=True)
        print("squash: no local stack is running", file=sys.stderr)
        return 0 if pid is not None else 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _running(pid):
        if time.monotonic() > deadline:
            print(f"squash: local stack (pid {pid}) still running after {args.timeout} s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"squash: local stack (pid {pid}) stopped")
    return 0
