"""Processor function: search one partition, kept warm in this container (DRE)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from squash import handlers

logger = Logger(service="squash-processor")
metrics = Metrics(namespace="Squash", service="processor")

# Built once per container: warm invocations reuse the invoker, the store handles and the DRE caches.
CONTEXT = handlers.HandlerContext.from_env("processor", emit=handlers.metric_sink(metrics))


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handlers.handle("processor", event, CONTEXT, remaining_ms=context.get_remaining_time_in_millis())
