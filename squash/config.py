"""Runtime configuration of the query functions: one frozen dataclass, read from the environment once.

On Lambda every function reads the same variables (set in ``template.yaml``); embedded clients build a
`RuntimeConfig` directly. Variable names are the ``ENV_*`` constants below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from squash.access import ANY, check_roots
from squash.errors import InvalidInputError

# Lambda's limit on a synchronous (RequestResponse) request or response payload.
MAX_PAYLOAD = 6_291_456

ENV_COORDINATOR = "SQUASH_COORDINATOR_FUNCTION"
ENV_ALLOCATOR = "SQUASH_ALLOCATOR_FUNCTION"
ENV_PROCESSORS = "SQUASH_PROCESSOR_FUNCTIONS"
ENV_PROCESSOR_PREFIX = "SQUASH_PROCESSOR_PREFIX"
ENV_PROCESSOR_COUNT = "SQUASH_PROCESSOR_COUNT"
ENV_MEMORY = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"
ENV_CACHE_FRACTION = "SQUASH_CACHE_FRACTION"
ENV_QUERIES_PER_ALLOCATOR = "SQUASH_QUERIES_PER_ALLOCATOR"
ENV_MAX_FAN_OUT = "SQUASH_MAX_FAN_OUT"
ENV_INVOKE_TIMEOUT = "SQUASH_INVOKE_TIMEOUT"
ENV_INDEX_ROOTS = "SQUASH_INDEX_ROOTS"
ENV_ALLOCATOR_CONCURRENCY = "SQUASH_ALLOCATOR_CONCURRENCY"
ENV_PROCESSOR_CONCURRENCY = "SQUASH_PROCESSOR_CONCURRENCY"
ENV_RERANK_VECTORS = "SQUASH_RERANK_VECTORS"
RERANK_VECTORS = ("auto", "memory", "ranged")

_DEFAULT_SLOTS = 10


@dataclass(frozen=True)
class RuntimeConfig:
    """How the coordinator, allocator and processor functions find and size each other.

    Attributes:
        coordinator_function: name (or ARN) of the coordinator function.
        allocator_function: name (or ARN) of the allocator function.
        processor_functions: the processor "slots"; partition p always goes to slot ``p % len(...)``.
        memory_mb: memory of one function container (Lambda's ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``).
        cache_fraction: share of ``memory_mb`` a container may fill with cached partitions.
        rerank_vectors: where a processor reads the raw vectors it re-ranks from: ``memory`` (held with
            the partition), ``ranged`` (read row by row from the partition object, so the container holds
            only codes, ids and attributes: `squash.format.rows`), or ``auto``: held when every partition
            of the slot fits the cache whole (`holds_vectors`).
        queries_per_allocator: the default tree gives each allocator about this many queries.
        max_branching: widest default tree level (children per node).
        max_allocators: the default tree never has more allocators than this.
        max_fan_out: most concurrent invocations one node makes (and HTTP connections it keeps).
        payload_limit: largest request or response in bytes; bigger query batches are split.
        invoke_timeout: seconds to wait for one synchronous invocation; above every function timeout.
        retry_attempts: tries of one invocation that fails with a retryable error (throttling, timeout, 5xx).
        retry_base_delay: first backoff in seconds; each retry doubles the cap, with full jitter. No SDK backoff
            sits underneath (botocore's retries are off), and a throttled call retried within tens of
            milliseconds meets the same full concurrency: 4 clients on 2 local coordinator workers failed
            17.6% of batches at 0.05 s, 4.4% at 0.25 s.
        retry_max_delay: cap on one backoff in seconds.
        retry_budget_ratio: extra calls (retries and hedges) one node may make per call it makes...
        retry_budget_floor: ...plus this many, for one request (`squash.compute.retry.RetryBudget`).
        hedge_min_seconds: a processor call running longer than this and than its siblings' p95 gets a
            duplicate; the first answer wins (processors are idempotent).
        deadline_margin: seconds each level keeps back from its deadline to send its answer up.
        index_roots: the only index locations the functions open (``s3://bucket/prefix`` and what lies
            under it, see `squash.access`); None opens any location, as the caller could itself (embedded).
        allocator_concurrency: the allocator function's reserved concurrency (None: unlimited); the
            coordinator never starts a tree needing more allocators at once.
        processor_concurrency: each processor slot's reserved concurrency (None: unlimited); the coordinator
            never starts a tree that could call one slot more often at once.
    """

    coordinator_function: str = "squash-coordinator"
    allocator_function: str = "squash-allocator"
    processor_functions: tuple[str, ...] = tuple(f"squash-processor-{i}" for i in range(_DEFAULT_SLOTS))
    memory_mb: int = 2048
    cache_fraction: float = 0.6
    rerank_vectors: str = "auto"
    queries_per_allocator: int = 50
    max_branching: int = 10
    max_allocators: int = 256
    max_fan_out: int = 64
    payload_limit: int = MAX_PAYLOAD
    invoke_timeout: float = 910.0
    retry_attempts: int = 4
    retry_base_delay: float = 0.25
    retry_max_delay: float = 2.0
    retry_budget_ratio: float = 0.2
    retry_budget_floor: int = 3
    hedge_min_seconds: float = 1.0
    deadline_margin: float = 0.05
    index_roots: tuple[str, ...] | None = None
    allocator_concurrency: int | None = None
    processor_concurrency: int | None = None

    def __post_init__(self) -> None:
        names = (self.coordinator_function, self.allocator_function, *self.processor_functions)
        checks = [
            (all(isinstance(n, str) and n for n in names), "function names must be non-empty strings"),
            (len(self.processor_functions) >= 1, "processor_functions needs at least one function"),
            (len(set(names)) == len(names), "every function name must be distinct"),
            (self.memory_mb >= 128, "memory_mb must be >= 128"),
            (0.0 < self.cache_fraction <= 1.0, "cache_fraction must be in (0, 1]"),
            (self.rerank_vectors in RERANK_VECTORS, f"rerank_vectors must be one of {', '.join(RERANK_VECTORS)}"),
            (self.queries_per_allocator >= 1, "queries_per_allocator must be >= 1"),
            (self.max_branching >= 1, "max_branching must be >= 1"),
            (self.max_allocators >= 1, "max_allocators must be >= 1"),
            (self.max_fan_out >= 1, "max_fan_out must be >= 1"),
            (self.payload_limit >= 1024, "payload_limit must be >= 1024 bytes"),
            (self.invoke_timeout > 0, "invoke_timeout must be > 0"),
            (self.retry_attempts >= 1, "retry_attempts must be >= 1"),
            (0 <= self.retry_base_delay <= self.retry_max_delay, "need 0 <= retry_base_delay <= retry_max_delay"),
            (self.hedge_min_seconds > 0, "hedge_min_seconds must be > 0"),
            (0 <= self.retry_budget_ratio <= 1, "retry_budget_ratio must be in [0, 1]"),
            (self.retry_budget_floor >= 0, "retry_budget_floor must be >= 0"),
            (self.deadline_margin >= 0, "deadline_margin must be >= 0"),
            (
                self.allocator_concurrency is None or self.allocator_concurrency >= 1,
                "allocator_concurrency must be >= 1 or None",
            ),
            (
                self.processor_concurrency is None or self.processor_concurrency >= 1,
                "processor_concurrency must be >= 1 or None",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(f"RuntimeConfig: {message}")
        if self.index_roots is not None:
            check_roots(self.index_roots)

    @property
    def cache_budget(self) -> int:
        """Bytes of partition data a processor container keeps warm."""
        return int(self.memory_mb * (1 << 20) * self.cache_fraction)

    def holds_vectors(self, object_bytes: int, n_partitions: int) -> bool:
        """Whether a processor holds a partition's raw vectors: with ``auto``, when the partitions its slot
        serves, each about ``object_bytes`` in storage, all fit the cache budget whole."""
        if self.rerank_vectors != "auto":
            return self.rerank_vectors == "memory"
        per_slot = -(-n_partitions // len(self.processor_functions))
        return per_slot * object_bytes <= self.cache_budget

    def processor_for(self, partition: int) -> str:
        """The processor slot of ``partition``.

        Lambda sends an invocation to any warm container of the named function and offers no other affinity,
        so function identity is the only way to make "warm" mean "already holds my partition": a slot only
        ever sees partitions congruent to it modulo the slot count, P/S of them, and with S >= P each
        container holds exactly one. Modulo needs no shared state and is stable across index versions.
        """
        return self.processor_functions[partition % len(self.processor_functions)]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        """Read the ``ENV_*`` variables; unset ones keep their defaults, except the index roots.

        Processor slots come from ``SQUASH_PROCESSOR_FUNCTIONS`` (comma-separated names or ARNs) or from
        ``SQUASH_PROCESSOR_PREFIX`` plus ``SQUASH_PROCESSOR_COUNT`` (names prefix0 ... prefix{count-1}).
        ``SQUASH_INDEX_ROOTS`` lists the allowed index roots, comma-separated, or ``*`` for any location; a
        function configured from the environment without it opens no index at all.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if env.get(ENV_COORDINATOR):
            values["coordinator_function"] = env[ENV_COORDINATOR]
        if env.get(ENV_ALLOCATOR):
            values["allocator_function"] = env[ENV_ALLOCATOR]
        listed, prefix = env.get(ENV_PROCESSORS), env.get(ENV_PROCESSOR_PREFIX)
        if listed and prefix:
            raise InvalidInputError(f"set {ENV_PROCESSORS} or {ENV_PROCESSOR_PREFIX}, not both")
        if listed:
            values["processor_functions"] = tuple(n.strip() for n in listed.split(","))
        elif prefix:
            count = _env_number(env, ENV_PROCESSOR_COUNT, int, _DEFAULT_SLOTS)
            values["processor_functions"] = tuple(f"{prefix}{i}" for i in range(int(count)))
        for name, variable, kind in (
            ("memory_mb", ENV_MEMORY, int),
            ("cache_fraction", ENV_CACHE_FRACTION, float),
            ("queries_per_allocator", ENV_QUERIES_PER_ALLOCATOR, int),
            ("max_fan_out", ENV_MAX_FAN_OUT, int),
            ("invoke_timeout", ENV_INVOKE_TIMEOUT, float),
            ("allocator_concurrency", ENV_ALLOCATOR_CONCURRENCY, int),
            ("processor_concurrency", ENV_PROCESSOR_CONCURRENCY, int),
        ):
            if env.get(variable):
                values[name] = _env_number(env, variable, kind, None)
        if env.get(ENV_RERANK_VECTORS):
            values["rerank_vectors"] = env[ENV_RERANK_VECTORS].strip()
        roots = env.get(ENV_INDEX_ROOTS, "").strip()
        values["index_roots"] = None if roots == ANY else tuple(r.strip() for r in roots.split(",") if r.strip())
        return replace(cls(), **values)  # type: ignore[arg-type]


def _env_number(env: Mapping[str, str], variable: str, kind: type, default: object) -> object:
    raw = env.get(variable)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInputError(f"environment variable {variable}={raw!r} is not a valid {kind.__name__}") from None
