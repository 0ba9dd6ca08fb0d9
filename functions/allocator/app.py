"""Allocator function: start the subtree, plan this node's queries, fan out to processors, merge."""

from squash.runtime.lambda_app import lambda_handler as _app

# Built once per container (INIT): warm invocations reuse the invoker, the store handles and the DRE caches.
lambda_handler = _app("allocator")
