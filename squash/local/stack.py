"""`LocalStack`: S3 (moto server) and Lambda (`LambdaService`) on loopback, configured by environment.

Application code keeps calling ``boto3.client("s3")`` and ``boto3.client("lambda")`` with no endpoint: while
the stack runs, this process's environment points boto3 at it, and every worker inherits the same variables,
so a handler that fans out to another function reaches the local service unchanged.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from squash.access import ANY, check_roots
from squash.config import ENV_INDEX_ROOTS
from squash.errors import InvalidInputError
from squash.local.lambda_service import LambdaService
from squash.local.template import DEFAULT_ACCOUNT, DEFAULT_REGION, FunctionSpec, load_functions

# Variables that must not pair with the dummy keys: a real session token or a named profile.
_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE")


class LocalStack:
    """Context manager running S3 and Lambda locally, without Docker or credentials.

    Parameters
    ----------
    template
        SAM template whose ``AWS::Serverless::Function`` resources become local functions.
    functions
        Extra (or, without a template, all) function specs.
    parameters
        Template parameter overrides.
    workers
        Warm workers per function (capped by each function's reserved concurrency).
    prewarm
        True to start every worker up front, or the names of the functions to pre-warm.
    export_env
        Set the endpoint variables in ``os.environ`` while the stack runs (restored on exit).
    worker_output
        ``"files"``: worker stdout/stderr in ``<scratch_dir>/logs/<function>.log``; ``"console"``: this
        process's own stdout/stderr.
    scratch_dir
        Folder for worker ``TMPDIR``s and logs; a temporary folder (deleted on exit) by default.
    index_roots
        The index roots the functions may open (``SQUASH_INDEX_ROOTS``, see `squash.access`), as a deployed
        stack's ``IndexBucket``/``IndexPrefix``; None lets them open any index their workers can reach, as
        the embedded `squash.Client` does.

    After ``__enter__``: ``s3_endpoint_url``, ``lambda_endpoint_url``, ``env`` (the exported variables),
    ``lambda_service``, ``functions`` (name -> `FunctionSpec`) and ``scratch_dir``.
    """

    def __init__(
        self,
        template: str | Path | None = None,
        *,
        functions: Iterable[FunctionSpec] = (),
        parameters: Mapping[str, str] | None = None,
        workers: int = 2,
        prewarm: bool | Iterable[str] = False,
        region: str = DEFAULT_REGION,
        export_env: bool = True,
        worker_output: Literal["files", "console"] = "files",
        scratch_dir: str | Path | None = None,
        index_roots: Iterable[str] | None = None,
    ) -> None:
        self.index_roots = None if index_roots is None else tuple(index_roots)
        if self.index_roots is not None:
            check_roots(self.index_roots)
        specs = list(functions)
        if template is not None:
            specs = load_functions(template, parameters=parameters, region=region) + specs
        elif parameters:
            raise InvalidInputError("parameters need a template")
        self.functions = {spec.name: spec for spec in specs}
        self.region = region
        self._workers = workers
        self._prewarm = prewarm
        self._export_env = export_env
        self._worker_output = worker_output
        self._scratch_arg = scratch_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._moto: Any = None
        self._saved_env: dict[str, str | None] = {}
        self.scratch_dir = Path()
        self.s3_endpoint_url = ""
        self.lambda_endpoint_url = ""
        self.env: dict[str, str] = {}
        self.lambda_service: LambdaService | None = None

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self._scratch_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="squash-local-")
            self.scratch_dir = Path(self._tmp.name)
        else:
            self.scratch_dir = Path(self._scratch_arg)
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        # moto's server logs every request through werkzeug at INFO.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.s3_endpoint_url = f"http://{host}:{port}"
        self.env = {
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # botocore's default aws-chunked checksum stream makes moto puts several times slower.
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            ENV_INDEX_ROOTS: ANY if self.index_roots is None else ",".join(self.index_roots),
        }
        log_dir = self.scratch_dir / "logs" if self._worker_output == "files" else None
        self.lambda_service = LambdaService(
            self.functions.values(),
            scratch_dir=self.scratch_dir,
            workers=self._workers,
            env=self.env,
            log_dir=log_dir,
            region=self.region,
            account_id=DEFAULT_ACCOUNT,
        ).start()
        self.lambda_endpoint_url = self.lambda_service.endpoint_url
        self.env["AWS_ENDPOINT_URL_LAMBDA"] = self.lambda_endpoint_url
        if self._export_env:
            self._apply_env()
        if self._prewarm:
            names = None if self._prewarm is True else list(self._prewarm)
            self.lambda_service.prewarm(names)

    def _apply_env(self) -> None:
        for name in (*self.env, *_CLEARED):
            self._saved_env.setdefault(name, os.environ.get(name))
        for name in _CLEARED:
            os.environ.pop(name, None)
        os.environ.update(self.env)

    def close(self) -> None:
        """Stop the workers, the Lambda service and moto; restore the environment. Safe to call twice."""
        try:
            if self.lambda_service is not None:
                self.lambda_service.close()
            if self._moto is not None:
                self._moto.stop()
                self._moto = None
        finally:
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved_env.clear()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def client(self, service_name: str, **kwargs: Any) -> Any:
        """A boto3 client for ``"s3"`` or ``"lambda"`` aimed at this stack explicitly (no env needed)."""
        import boto3

        endpoints = {"s3": self.s3_endpoint_url, "lambda": self.lambda_endpoint_url}
        options = {
            "endpoint_url": endpoints[service_name],
            "region_name": self.region,
            "aws_access_key_id": self.env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": self.env["AWS_SECRET_ACCESS_KEY"],
        }
        return boto3.client(service_name, **{**options, **kwargs})

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-function invocation counters (see `LambdaService.stats`)."""
        return self.lambda_service.stats() if self.lambda_service is not None else {}

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no Lambda invocation is running (see `LambdaService.wait_idle`)."""
        if self.lambda_service is not None:
            self.lambda_service.wait_idle(timeout)

    def worker_pids(self) -> list[int]:
        """Pids of the live Lambda workers."""
        return self.lambda_service.worker_pids() if self.lambda_service is not None else []
