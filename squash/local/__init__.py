"""Run Squash's AWS parts on loopback without Docker: moto's S3 server and a local Lambda service.

`LocalStack` starts both and points boto3 at them through environment variables; `LambdaService` is the
Lambda emulator alone; `load_functions` reads function specs from a SAM template. ``squash local up`` runs a
stack from the command line. PyYAML (installed with ``moto[server]``) is needed to read templates.
"""

from __future__ import annotations

from squash.local.lambda_service import LambdaService
from squash.local.stack import LocalStack
from squash.local.template import FunctionSpec, load_functions

__all__ = ["FunctionSpec", "LambdaService", "LocalStack", "load_functions"]
