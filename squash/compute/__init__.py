"""Transports behind the `Invoker` interface (`squash.compute.aws_lambda`: AWS Lambda's Invoke API) and the
retry, deadline and fan-out primitives every caller shares (`squash.compute.retry`).

Nothing here imports the runtime above it: the in-process transport, which dispatches to the handlers,
is `squash.runtime.inprocess`. `squash.compute.aws_lambda` is imported on demand, so importing this
package does not load boto3.
"""

from squash.compute.base import Invoker, remote_error

__all__ = ["Invoker", "remote_error"]
