"""The Lambda entry point of every function (``functions/<role>/app.py``): logs, metrics and traces.

Each invocation writes two lines to CloudWatch Logs besides Lambda's own START/END/REPORT lines, since
every byte is ingested at the Logs price (`squash.costs.Prices.log_bytes_per_invocation`):

- one structured Powertools Logger line, ``"invocation"``: request id, role, partitions, cold or warm,
  queries, timings in ms, storage requests and bytes, cache outcomes and retries (zero counters left out);
- one CloudWatch EMF blob of the few `METRICS`, with the ``service`` (role) dimension only.

A failed invocation logs ``"invocation failed"`` with the error's type and message instead, then raises
as before. X-Ray tracing is off unless ``SQUASH_TRACING=Active`` (the template's ``Tracing`` parameter):
only then is Powertools' Tracer (and the X-Ray SDK) imported, so an untraced cold start pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics

from squash.runtime.context import HandlerContext
from squash.runtime.dispatch import handle

ENV_TRACING = "SQUASH_TRACING"
NAMESPACE = "Squash"
# The CloudWatch metrics of one invocation (name -> unit): each name and unit is repeated in every EMF
# blob, so only what dashboards and alarms need; everything else is in the log line.
METRICS = {
    "billed_ms": "Milliseconds",
    "cold": "Count",
    "queries": "Count",
    "gets": "Count",
    "bytes_read": "Bytes",
    "retries": "Count",
}
# Counters in seconds that the log line shows, in ms, under these names (the scan's parts stay out).
_TIMINGS = {
    "seconds": "duration_ms",
    "cpu_seconds": "cpu_ms",
    "plan_seconds": "plan_ms",
    "load_seconds": "load_ms",
    "scan_seconds": "scan_ms",
    "wait_seconds": "wait_ms",
}
# Other counters the log line shows when not zero (the rest are settings or repeat another field).
_COUNTS = (
    "queries",
    "partitions",
    "gets",
    "bytes_read",
    "lists",
    "cache_hits",
    "cache_misses",
    "evictions",
    "retries",
    "hedges",
)

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def log_fields(role: str, request_id: str, counters: Mapping[str, float], event: Mapping[str, Any]) -> dict[str, Any]:
    """The ``extra`` of one invocation's log line, from the counters the handler reported."""
    fields: dict[str, Any] = {"request_id": request_id, "role": role, "cold": bool(counters.get("cold"))}
    if role == "processor":
        fields["partition"] = event.get("partition")
    fields.update({label: round(counters[name] * 1000, 2) for name, label in _TIMINGS.items() if counters.get(name)})
    fields.update({name: counters[name] for name in _COUNTS if counters.get(name)})
    return fields


def lambda_handler(role: str, context: HandlerContext | None = None) -> LambdaHandler:
    """The ``lambda_handler`` of ``role``, with its container state built now (at INIT on Lambda).

    ``context`` replaces `HandlerContext.from_env` (tests run the app against an in-process invoker).
    """
    tracing = os.environ.get(ENV_TRACING) == "Active"
    # Every line is ingested at a price: no source location, and no trace id when nothing is traced. The log
    # group already names the function, so Powertools' inject_lambda_context keys are left out too.
    logger = Logger(service=f"squash-{role}", location=None, **({} if tracing else {"xray_trace_id": None}))
    metrics = Metrics(namespace=NAMESPACE, service=role)
    reported: dict[str, float] = {}
    container = context or HandlerContext.from_env(role)
    container.emit = reported.update

    def handler(event: dict[str, Any], lambda_context: Any) -> dict[str, Any]:
        # A container runs one invocation at a time, so one dict carries its counters from emit to here.
        reported.clear()
        try:
            remaining_ms = lambda_context.get_remaining_time_in_millis()
            response = handle(role, event, container, remaining_ms=remaining_ms)
        except Exception as exc:
            failure = {"request_id": lambda_context.aws_request_id, "role": role, "error": type(exc).__name__}
            logger.error("invocation failed", extra={**failure, "detail": str(exc)})
            raise
        logger.info("invocation", extra=log_fields(role, lambda_context.aws_request_id, reported, event))
        for name, unit in METRICS.items():
            metrics.add_metric(name=name, unit=unit, value=reported.get(name, 0))
        metrics.flush_metrics()  # a failed invocation has no counters, and Lambda's own Errors metric counts it
        return response

    if not tracing:
        return handler
    from aws_lambda_powertools import Tracer

    tracer = Tracer(service=f"squash-{role}")
    # Responses hold the result arrays: never copy them into trace metadata.
    return tracer.capture_lambda_handler(handler, capture_response=False)
