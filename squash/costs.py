"""What a query costs on AWS: list prices and the cost model of design/algorithm.md 5.6.

cost of a batch = Σ_functions [ GB × billed seconds × price per GB-s + invocations × price per request
+ cold starts × INIT seconds × GB × price per GB-s + invocations × log bytes per invocation × price per
log GB ] + GETs × price per GET + LISTs × price per LIST,

from the per-function counters the runtime reports (`squash.runtime.protocol.COUNTERS`: ``billed_ms``, ``memory_mb``,
``invocations``, ``cold``, ``gets``, ``lists``). Divide by the batch's queries for $ per query.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from squash.config import RuntimeConfig
from squash.errors import InvalidInputError

ITEMS = ("compute", "init", "requests", "logs", "gets", "lists")


@dataclass(frozen=True)
class Prices:
    """US-East list prices in US$; every number can be overridden with `load_prices`.

    ``init_ms_per_cold_start`` is an assumption, not a price: embedded runs have no INIT phase to measure, so it
    defaults to 0; set it (e.g. 150 ms, a typical Python zip cold start) to charge one per cold invocation.

    ``log_bytes_per_invocation`` is a measurement, not a price: what one warm invocation writes to CloudWatch
    Logs, its `squash.runtime.lambda_app` log line and EMF blob (about 750 bytes) plus Lambda's START, END and REPORT
    lines (about 270). tests/test_lambda_app.py measures it and fails when it drifts. Logs GB are 10^9 bytes.
    """

    date: str = "2026-11-26"
    sources: tuple[str, ...] = (
        "https://aws.amazon.com/lambda/pricing/",
        "https://aws.amazon.com/s3/pricing/",
        "https://aws.amazon.com/cloudwatch/pricing/",
        "https://aws.amazon.com/ec2/pricing/on-demand/",
        "https://aws.amazon.com/s3/vectors/ (pricing on https://aws.amazon.com/s3/pricing/)",
        "https://turbopuffer.com/pricing",
    )
    architecture: str = "x86_64"
    lambda_gb_second_x86_64: float = 0.0000166667
    lambda_gb_second_arm64: float = 0.0000133334
    lambda_request: float = 0.20 / 1e6
    s3_get: float = 0.0004 / 1000
    s3_list: float = 0.005 / 1000
    cloudwatch_logs_per_gb: float = 0.50
    log_bytes_per_invocation: float = 1050.0
    init_ms_per_cold_start: float = 0.0
    # On-demand Linux, us-east-1, approximate (list prices as of the date above).
    ec2_hourly: tuple[tuple[str, float, int], ...] = (("c7g.xlarge", 0.145, 4), ("c6i.xlarge", 0.17, 4))
    s3_vectors_per_query: float = 2.50 / 1e6
    turbopuffer_per_pb: float = 1.0
    turbopuffer_min_gb_per_query: float = 1.28

    @property
    def gb_second(self) -> float:
        """Lambda price per GB-second for ``architecture``."""
        return self.lambda_gb_second_arm64 if self.architecture == "arm64" else self.lambda_gb_second_x86_64

    @property
    def turbopuffer_per_query(self) -> float:
        """turbopuffer's floor per query: the minimum data queried, priced per PB (plus returned bytes)."""
        return self.turbopuffer_min_gb_per_query / 1e6 * self.turbopuffer_per_pb

    def __post_init__(self) -> None:
        if self.architecture not in ("x86_64", "arm64"):
            raise InvalidInputError(f"prices: architecture must be 'x86_64' or 'arm64', got {self.architecture!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float | int) and not isinstance(value, bool) and not (value >= 0):
                raise InvalidInputError(f"prices: {f.name} must be a non-negative number, got {value!r}")


def load_prices(path: str | Path, base: Prices | None = None) -> Prices:
    """``base`` (default `Prices()`) with the fields of the JSON object in ``path`` replaced.

    ``ec2_hourly`` is a list of [instance, $ per hour, vCPUs]; ``sources`` a list of URLs.

    Raises:
        InvalidInputError: the file is unreadable, not a JSON object, or has unknown keys or bad values.
    """
    base = base or Prices()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"price file {path}: cannot read a JSON object ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"price file {path}: must hold a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(Prices)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidInputError(f"price file {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(base, name)
        if isinstance(current, str):
            ok = isinstance(value, str)
        elif name == "sources":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
        elif name == "ec2_hourly":
            ok = isinstance(value, list) and all(
                isinstance(r, list)
                and len(r) == 3
                and isinstance(r[0], str)
                and _number(r[1])
                and isinstance(r[2], int)
                and r[2] > 0
                for r in value
            )
            value = tuple(tuple(r) for r in value) if ok else value
        else:
            ok = _number(value)
        if not ok:
            raise InvalidInputError(f"price file {path}: {name} has the wrong type or value: {value!r}")
        values[name] = value
    return replace(base, **values)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@dataclass(frozen=True)
class CostBreakdown:
    """US$ of one measured run: ``functions`` maps function name -> role and $ per item (`ITEMS`)."""

    queries: int
    functions: dict[str, dict[str, Any]]

    def item(self, name: str) -> float:
        """$ of one item (`ITEMS`) over every function."""
        return sum(f[name] for f in self.functions.values())

    def role(self, role: str) -> float:
        """$ of every function of ``role`` (coordinator, allocator, processor)."""
        return sum(sum(f[i] for i in ITEMS) for f in self.functions.values() if f["role"] == role)

    @property
    def total(self) -> float:
        return sum(self.item(name) for name in ITEMS)

    @property
    def per_query(self) -> float:
        return self.total / max(self.queries, 1)

    @property
    def per_million(self) -> float:
        return self.per_query * 1e6


def estimate(
    run_metrics: Mapping[str, Mapping[str, Any]], prices: Prices, queries: int, *, billed: str = "billed_ms"
) -> CostBreakdown:
    """Cost of a run from its per-function metrics (function name -> {"role", counter: value}).

    ``billed`` names the duration counter to price: ``billed_ms`` (measured handler time, what Lambda
    bills for this run) or ``model_ms`` (own CPU plus the slowest child and an invoke hop: what Lambda
    would bill with a core per container, free of the contention of a small machine running every
    function at once).
    """
    if billed not in ("billed_ms", "model_ms"):
        raise InvalidInputError(f"billed must be 'billed_ms' or 'model_ms', got {billed!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, c in run_metrics.items():
        missing = [k for k in (billed, "memory_mb", "invocations") if k not in c]
        if missing:
            raise InvalidInputError(f"metrics of {name}: missing counter(s) {missing} needed to price it")
        gb = c["memory_mb"] / 1024
        out[name] = {
            "role": c["role"],
            "compute": gb * c[billed] / 1000 * prices.gb_second,
            "init": gb * c.get("cold", 0) * prices.init_ms_per_cold_start / 1000 * prices.gb_second,
            "requests": c["invocations"] * prices.lambda_request,
            "logs": c["invocations"] * prices.log_bytes_per_invocation / 1e9 * prices.cloudwatch_logs_per_gb,
            "gets": c.get("gets", 0) * prices.s3_get,
            "lists": c.get("lists", 0) * prices.s3_list,
        }
    return CostBreakdown(queries, out)


def metrics_from_info(info: Mapping[str, float], config: RuntimeConfig | None = None) -> dict[str, dict[str, Any]]:
    """Per-function metrics back from a `squash.Client` result's ``info`` (``function.<name>.<counter>``).

    Roles come from the function names of ``config`` (the embedded client's); unknown names are processors.
    """
    config = config or RuntimeConfig()
    roles = {config.coordinator_function: "coordinator", config.allocator_function: "allocator"}
    out: dict[str, dict[str, Any]] = {}
    for key, value in info.items():
        if key.startswith("function."):
            name, counter = key[len("function.") :].rsplit(".", 1)
            out.setdefault(name, {"role": roles.get(name, "processor")})[counter] = value
    return out


def ec2_per_million(prices: Prices, qps_per_thread: float) -> list[tuple[str, float, float]]:
    """(instance, $ per 1M queries on one thread, $ per 1M with every vCPU busy) at ``qps_per_thread``."""
    return [
        (name, hourly * 1e6 / qps_per_thread / 3600, hourly * 1e6 / (qps_per_thread * vcpus) / 3600)
        for name, hourly, vcpus in prices.ec2_hourly
    ]
