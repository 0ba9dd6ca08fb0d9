"""Processor function: search one partition, kept warm in this container (DRE)."""

from squash.runtime.lambda_app import lambda_handler as _app

# Built once per container (INIT): warm invocations reuse the invoker, the store handles and the DRE caches.
lambda_handler = _app("processor")
