"""What the Lambda apps write to CloudWatch Logs: one structured line and one bounded EMF blob per invocation.

The apps run in this process on the canned events, with stdout captured as Lambda would ship it; the bytes
counted here are what `squash.costs.Prices.log_bytes_per_invocation` charges for.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import squash
from squash.config import RuntimeConfig
from squash.costs import Prices
from squash.errors import InvalidInputError, InvocationTimeoutError
from squash.runtime import lambda_app
from squash.runtime.inprocess import InProcessInvoker
from squash.runtime.protocol import CoordinatorRequest, ProcessorRequest, ProcessorResponse
from squash.search.scan import search_partition

REPO = Path(__file__).resolve().parents[1]
EVENTS = Path(__file__).parent / "events"
REQUEST_ID = "8f507cfc-9fd1-4697-b07a-ac58fc914c95"
# On Lambda every invocation has a trace header, traced or not.
TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"
# Lambda's own lines per invocation (text log format), as documented; REPORT gains "Init Duration" when cold.
PLATFORM_LINES = (
    f"START RequestId: {REQUEST_ID} Version: $LATEST\n"
    f"END RequestId: {REQUEST_ID}\n"
    f"REPORT RequestId: {REQUEST_ID}\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory Size: 2048 MB\t"
    "Max Memory Used: 142 MB\t\n"
)
# A bounded invocation: the line and the blob together (the unbounded metrics were 1.6 KB alone).
MAX_APP_BYTES = 900
MAX_METRICS = 8


@dataclass
class _LambdaContext:
    function_name: str = "squash-processor-0"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 2048
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:squash-processor-0"
    aws_request_id: str = REQUEST_ID
    remaining_ms: int = 30_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, index_uri: str) -> None:
    # A Powertools Logger keeps the stream of the first Logger of its name (one per process on Lambda).
    for role in ("coordinator", "allocator", "processor"):
        logger = logging.getLogger(f"squash-{role}")
        logger.handlers.clear()
        for attribute in ("init", "powertools_handler"):
            logger.__dict__.pop(attribute, None)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "squash-processor-0")
    monkeypatch.setenv("SQUASH_INDEX_ROOTS", index_uri)  # a deployed function opens only its configured roots
    monkeypatch.setenv("_X_AMZN_TRACE_ID", TRACE_HEADER)
    monkeypatch.delenv(lambda_app.ENV_TRACING, raising=False)


@pytest.fixture(scope="module")
def index_uri() -> str:
    """An index the canned events can search (version 1), at a URI of this module's own."""
    uri = f"memory://lambda-app-{uuid.uuid4().hex}"
    dim = ProcessorRequest.from_event(json.loads((EVENTS / "processor_request.json").read_text())).queries.shape[1]
    rng = np.random.default_rng(3)
    n = 600
    attributes = {"price": rng.uniform(0, 100, n), "color": rng.choice(["red", "blue", "green"], n)}
    squash.build_index(uri, rng.normal(size=(n, dim)).astype("float32"), attributes, partitions=2)
    return uri


def _event(role: str, uri: str) -> dict[str, Any]:
    event = json.loads((EVENTS / f"{role}_request.json").read_text())
    index = {**event["index"], "uri": uri}
    if index["build"] is not None:  # each build has a fresh id; the canned one is a placeholder
        index["build"] = squash.Index.open(uri).build_id
    return {**event, "index": index}


def _processor_app() -> Any:
    """functions/processor/app.py, imported as Lambda's INIT would."""
    spec = importlib.util.spec_from_file_location("processor_app", REPO / "functions" / "processor" / "app.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app


def _invocation_output(capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The log line, the EMF blob and the bytes one invocation wrote (exactly two lines)."""
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 2, out
    records = [json.loads(line) for line in lines]
    (emf,) = [r for r in records if "_aws" in r]
    (line,) = [r for r in records if "_aws" not in r]
    return line, emf, len(out.encode())


def test_each_invocation_logs_one_structured_line_and_bounded_emf(
    index_uri: str, lambda_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _processor_app()
    capsys.readouterr()
    request = ProcessorRequest.from_event(_event("processor", index_uri))
    index = squash.Index.open(index_uri)
    filters = request.filters.compile(index.meta)
    expected = search_partition(index.partition(0), request.queries, filters, request.k, request.params, index.metric)
    for i in range(3):
        response = ProcessorResponse.from_event(app.lambda_handler(_event("processor", index_uri), _LambdaContext()))
        line, emf, size = _invocation_output(capsys)
        assert size <= MAX_APP_BYTES
        assert line["message"] == "invocation" and line["level"] == "INFO"
        assert (line["request_id"], line["role"], line["partition"], line["cold"]) == (
            REQUEST_ID,
            "processor",
            0,
            i == 0,
        )
        assert line["duration_ms"] > 0 and line["queries"] == 2
        assert line.get("cache_misses", 0) == int(i == 0) and line.get("cache_hits", 0) == int(i > 0)
        assert "xray_trace_id" not in line  # nothing is traced
        (directive,) = emf["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Squash" and directive["Dimensions"] == [["service"]]
        assert [m["Name"] for m in directive["Metrics"]] == list(lambda_app.METRICS)
        assert len(directive["Metrics"]) <= MAX_METRICS
        counters = response.metrics["squash-processor-0"]
        assert emf["cold"] == [float(i == 0)] and emf["gets"] == [float(counters.get("gets", 0))]
        np.testing.assert_array_equal(response.ids, expected.ids)
        np.testing.assert_array_equal(response.distances, expected.distances)


def test_log_price_charges_the_measured_bytes(
    index_uri: str, lambda_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _processor_app()
    app.lambda_handler(_event("processor", index_uri), _LambdaContext())  # the cold one writes a little more
    capsys.readouterr()
    app.lambda_handler(_event("processor", index_uri), _LambdaContext())
    *_, size = _invocation_output(capsys)
    measured = size + len(PLATFORM_LINES.encode())
    assert Prices().log_bytes_per_invocation == pytest.approx(measured, rel=0.15)


def test_coordinator_line_counts_partitions_and_a_failure_is_one_error_line(
    index_uri: str, lambda_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = RuntimeConfig(processor_functions=("p0", "p1"))
    invoker = InProcessInvoker(config)
    handler = lambda_app.lambda_handler("coordinator", invoker.context(config.coordinator_function))
    capsys.readouterr()
    event = _event("coordinator", index_uri)
    handler(event, _LambdaContext())
    line, emf, _ = _invocation_output(capsys)
    request = CoordinatorRequest.from_event(event)
    assert line["role"] == "coordinator" and line["queries"] == request.n_queries
    assert 1 <= line["partitions"] <= 2 and line["plan_ms"] > 0 and emf["queries"] == [float(request.n_queries)]

    with pytest.raises(InvalidInputError):
        handler({**event, "k": 0}, _LambdaContext())
    (failure,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert failure["level"] == "ERROR" and failure["message"] == "invocation failed"
    assert (failure["request_id"], failure["role"], failure["error"]) == (
        REQUEST_ID,
        "coordinator",
        "InvalidInputError",
    )


def test_tracing_wraps_the_handler_only_when_active(
    index_uri: str, lambda_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("aws_xray_sdk", reason="the X-Ray SDK is not installed")
    config = RuntimeConfig(processor_functions=("p0", "p1"))
    context = InProcessInvoker(config).context("p0")
    assert not hasattr(lambda_app.lambda_handler("processor", context), "__wrapped__")
    monkeypatch.setenv(lambda_app.ENV_TRACING, "Active")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")  # no daemon to send segments to here
    traced = lambda_app.lambda_handler("processor", context)
    assert hasattr(traced, "__wrapped__")
    assert ProcessorResponse.from_event(traced(_event("processor", index_uri), _LambdaContext())).ids.shape == (2, 10)


def test_lambda_time_limit_bounds_the_deadline(index_uri: str, lambda_env: None) -> None:
    app = _processor_app()
    generous = {**_event("processor", index_uri), "budget_ms": 60_000}
    assert ProcessorResponse.from_event(app.lambda_handler(generous, _LambdaContext(remaining_ms=30_000))).ids.size
    # The budget allows a minute, but Lambda stops this invocation now: it must not start the search.
    with pytest.raises(InvocationTimeoutError, match="deadline passed"):
        app.lambda_handler(generous, _LambdaContext(remaining_ms=0))
