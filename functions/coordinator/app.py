"""Coordinator function: pin the index version, run the allocator tree, return results and metrics."""

from squash.runtime.lambda_app import lambda_handler as _app

# Built once per container (INIT): warm invocations reuse the invoker, the store handles and the DRE caches.
lambda_handler = _app("coordinator")
