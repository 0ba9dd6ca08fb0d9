"""Per-function counters, in one place: what they are, their bounds on the wire, how they merge and how a
client's ``info`` flattens them.

Metrics map a function *name* (coordinator, allocator, one per processor slot), never an invocation, to
``{"role": one of ROLES, counter: non-negative number, ...}``; a counter that is zero is left out. So a
response's metrics have at most `MAX_FUNCTIONS` entries of at most ``len(COUNTERS)`` numbers each, however
large the tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from squash.runtime.protocol.wire import fail

ROLES = ("coordinator", "allocator", "processor")
# Per-function counters that travel up the tree; every one is summed except those in MAX_COUNTERS.
COUNTERS = (
    "invocations",  # handler runs
    "cold",  # ... that were a container's first
    "warm",
    "queries",  # queries in the function's own share (a processor: its batch); 0 for a pure coordinator
    "seconds",  # handler time, summed: billed duration
    "max_seconds",  # slowest single invocation
    "billed_ms",  # handler time rounded up to whole milliseconds per invocation, as Lambda bills it
    "cpu_seconds",  # CPU time of the handler's own thread (excludes waiting for a core, children, I/O)
    "critical_ms",  # modelled duration with a core of its own: own CPU + slowest child + one invoke hop
    "model_ms",  # critical_ms rounded up per invocation: the billed time on Lambda without local contention
    "memory_mb",  # the function's memory setting, which prices its billed time
    "partitions",  # partitions the function's own processor calls searched (a processor: 0)
    "plan_seconds",  # partition selection
    "load_seconds",  # reading and decoding index objects
    "scan_seconds",  # search_partition, of which:
    "filter_seconds",  # ... filter evaluation and list choice
    "estimate_seconds",  # ... scalar-code estimates of scanned rows
    "rerank_seconds",  # ... exact distances and top-k
    "wait_seconds",  # waiting for children and processors after the node's own work
    "gets",  # storage read requests made by the function
    "bytes_read",  # bytes those requests returned
    "lists",  # storage list requests (resolving the latest index version)
    "cache_hits",  # processors: partitions found warm; other roles: index metadata found warm
    "cache_misses",
    "evictions",  # partitions dropped to stay under the memory budget
    "retries",  # invocations and storage reads this function retried after a transient error
    "hedges",  # duplicate invocations it started for stragglers
    "retries_denied",  # retries and hedges its retry budget refused (squash.compute.retry.RetryBudget)
)
# Counters merged by maximum: a peak, or a setting that is the same for every invocation of a function.
MAX_COUNTERS = frozenset({"max_seconds", "memory_mb", "critical_ms"})
# Function names one response may report: a deployment's coordinator, allocator and processor slots.
MAX_FUNCTIONS = 128
# Longest function name (a Lambda ARN with a qualifier is under 170 characters).
MAX_NAME_CHARS = 170
# Encoded bytes allowed for one function's entry when sizing a response: its name and the counters that moved.
BYTES_PER_FUNCTION = 1024
# Totals a client's ``info`` sums over roles.
_TOTALS = ("invocations", "cold", "warm", "gets", "bytes_read", "lists", "retries", "hedges", "retries_denied")

Metrics = dict[str, dict[str, Any]]


def own_metrics(function: str, role: str, counters: Mapping[str, float]) -> Metrics:
    """One invocation's metrics: its non-zero counters under its function name."""
    return {function: {"role": role, **{name: value for name, value in counters.items() if value}}}


def check_metrics(metrics: object, kind: str) -> None:
    """Refuse metrics that are not `MAX_FUNCTIONS` names at most, each with a role and known counters."""
    if not isinstance(metrics, dict):
        raise fail(kind, "metrics", "must be an object keyed by function name")
    if len(metrics) > MAX_FUNCTIONS:
        raise fail(kind, "metrics", f"must name at most {MAX_FUNCTIONS} functions, got {len(metrics)}")
    for function, counters in metrics.items():
        field = f"metrics.{function}"
        if len(function) > MAX_NAME_CHARS:
            raise fail(kind, "metrics", f"names a function of {len(function)} characters, over {MAX_NAME_CHARS}")
        if not isinstance(counters, dict) or counters.get("role") not in ROLES:
            raise fail(kind, field, f"must be an object with a role in {ROLES}")
        unknown = sorted(set(counters) - {"role", *COUNTERS})
        if unknown:
            raise fail(kind, field, f"has unknown counter(s) {unknown}")
        for name, value in counters.items():
            if name != "role" and (isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0):
                raise fail(kind, f"{field}.{name}", f"must be a non-negative number, got {value!r}")


def _merge(into: dict[str, Any], name: str, value: float) -> None:
    into[name] = max(into.get(name, 0), value) if name in MAX_COUNTERS else into.get(name, 0) + value


def merge_metrics(parts: Iterable[Metrics]) -> Metrics:
    """Sum per-function counters (max for `MAX_COUNTERS`)."""
    out: Metrics = {}
    for metrics in parts:
        for function, counters in metrics.items():
            into = out.setdefault(function, {"role": counters["role"]})
            for name, value in counters.items():
                if name != "role":
                    _merge(into, name, value)
    return out


def flatten_metrics(metrics: Metrics) -> dict[str, float]:
    """A client's view: ``<role>.<counter>`` for every role and counter, totals over roles (`_TOTALS`), and
    ``function.<name>.<counter>`` for each counter a function reported."""
    info: dict[str, float] = {f"{role}.{name}": 0 for role in ROLES for name in COUNTERS}
    for function, counters in sorted(metrics.items()):
        for name, value in counters.items():
            if name != "role":
                info[f"function.{function}.{name}"] = value
                _merge(info, f"{counters['role']}.{name}", value)
    info.update({name: sum(info[f"{role}.{name}"] for role in ROLES) for name in _TOTALS})
    return info
