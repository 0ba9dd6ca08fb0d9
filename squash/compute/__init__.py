"""Compute backends behind the `Invoker` interface: in-process threads or AWS Lambda.

`squash.compute.inprocess` and `squash.compute.aws_lambda` are imported on demand, so importing this
package loads neither the handlers nor boto3.
"""

from squash.compute.base import Invoker, remote_error

__all__ = ["Invoker", "remote_error"]
