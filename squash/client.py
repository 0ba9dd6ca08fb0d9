"""``squash.Client``: query a stored index, embedded in this process or through deployed functions.

Both modes run the same coordinator -> allocator -> processor code (`squash.runtime`) and exchange the same
JSON events (`squash.runtime.protocol`); only the `Invoker` differs: threads here, or AWS Lambda.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from squash.compute.base import Invoker
from squash.compute.retry import Deadline, FanOut, RetryBudget, RetryPolicy, retrying
from squash.config import RuntimeConfig
from squash.errors import IncompleteResultError, InvalidInputError, InvocationTimeoutError, SquashError
from squash.runtime.calls import call
from squash.runtime.protocol import (
    MAX_TIMEOUT,
    CoordinatorRequest,
    CoordinatorResponse,
    IndexRef,
    Missing,
    encode_event,
    flatten_metrics,
    split_request,
)
from squash.runtime.tree import TreeShape
from squash.search.queries import FilterSet
from squash.search.result import Hits, SearchResult
from squash.validation import as_vectors

# Function names a deployed coordinator's response may report metrics for (its slot count is not known here);
# only sizes the response estimate that decides whether to split a batch.
_DEPLOYED_FUNCTIONS = 128
# Seconds a query may take, end to end, unless the caller passes ``timeout``.
DEFAULT_TIMEOUT = 60.0


class Client:
    """Query the index at ``uri`` through the serverless query tree.

    ``Client(uri)`` runs the coordinator, allocators and processors as threads of this process, with the
    same code, payloads and per-processor-slot warm caches as on Lambda. ``Client(uri, function=...)`` (or
    `Client.deployed`) invokes a deployed coordinator function by name or ARN.

    Args:
        uri: the index location (``memory://``, ``file://``, a path, or ``s3://``; deployed functions must
            be able to read it).
        function: name or ARN of a deployed coordinator; None for the embedded mode.
        version: the index version to search; None searches the latest at each call.
        config: embedded runtime settings (processor slots, memory budget, payload limit, tree defaults).
        invoker: the transport to use instead of the default one (tests, custom clients).
        lambda_client: a boto3 Lambda client for the deployed mode.

    Raises:
        InvalidInputError: conflicting or malformed arguments (the message names them).

    Example:
        >>> import numpy as np, squash
        >>> from squash.pipeline import build_index
        >>> x = np.random.default_rng(0).normal(size=(2000, 16)).astype("float32")
        >>> _ = build_index("memory://client-doc", x, {"price": np.arange(2000) % 50}, partitions=4)
        >>> client = squash.Client("memory://client-doc")
        >>> client.query_batch(x[:3], k=5, filter={"price": {"$lt": 10}}).ids.shape
        (3, 5)
        >>> client.query(x[0], k=5).ids.shape
        (5,)
    """

    def __init__(
        self,
        uri: str,
        *,
        function: str | None = None,
        version: int | None = None,
        config: RuntimeConfig | None = None,
        invoker: Invoker | None = None,
        lambda_client: Any = None,
    ) -> None:
        from squash.runtime.inprocess import InProcessInvoker

        conflicts = [
            (
                config is not None and not isinstance(config, RuntimeConfig),
                f"config must be a squash.config.RuntimeConfig, got {type(config).__name__}",
            ),
            (lambda_client is not None and function is None, "lambda_client applies only with function=..."),
            (lambda_client is not None and invoker is not None, "pass invoker or lambda_client, not both"),
            (
                config is not None and function is not None,
                "config configures the embedded runtime; a deployed coordinator (function=...) reads its "
                "configuration from its environment",
            ),
            (
                config is not None and invoker is not None,
                "pass config or invoker, not both (the invoker has one)",
            ),
        ]
        for conflict, message in conflicts:
            if conflict:
                raise InvalidInputError(f"Client: {message}")
        if not isinstance(uri, str) or not uri:
            raise InvalidInputError(f"Client: uri must be a non-empty string, got {uri!r}")
        if function is not None and (not isinstance(function, str) or not function):
            raise InvalidInputError(f"Client: function must be a function name or ARN, got {function!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise InvalidInputError(f"Client: version must be a positive integer or None, got {version!r}")
        self.uri = uri
        self.version = version
        if isinstance(getattr(invoker, "config", None), RuntimeConfig):
            config = invoker.config  # type: ignore[union-attr]  # an in-process invoker or a wrapper of one
        self.config = config or RuntimeConfig()
        self.function = function or self.config.coordinator_function
        if invoker is None and function is not None:
            from squash.compute.aws_lambda import LambdaInvoker

            invoker = LambdaInvoker(lambda_client, read_timeout=self.config.invoke_timeout)
        self.invoker: Invoker = invoker or InProcessInvoker(self.config)
        self._functions = 3 + len(self.config.processor_functions) if function is None else _DEPLOYED_FUNCTIONS

    @classmethod
    def deployed(cls, uri: str, *, function: str, version: int | None = None, lambda_client: Any = None) -> Client:
        """A client of the coordinator function ``function`` (name or ARN) deployed on AWS Lambda."""
        return cls(uri, function=function, version=version, lambda_client=lambda_client)

    def __repr__(self) -> str:
        return f"Client({self.uri!r}, function={self.function!r}, version={self.version!r})"

    def query(self, vector: Any, k: int = 10, filter: Any = None, **options: Any) -> Hits:
        """Top-k of one vector (d,) among vectors matching ``filter``: row views ids (k,), distances (k,).

        Takes the same options as `query_batch`.
        """
        try:
            ndim = np.ndim(vector)
        except ValueError as exc:  # a ragged sequence
            raise InvalidInputError(f"query takes one numeric vector (d,); could not convert it ({exc})") from None
        if ndim != 1:
            raise InvalidInputError(
                f"query takes one vector (d,), got shape {np.shape(vector)}; use query_batch for (nq, d)"
            )
        return self.query_batch(np.asarray(vector)[None, :], k, filter, **options)[0]

    def query_batch(
        self,
        vectors: Any,
        k: int = 10,
        filter: Any = None,
        *,
        branching: int | None = None,
        depth: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        allow_partial: bool = False,
        **knobs: Any,
    ) -> SearchResult:
        """Top-k of each of ``vectors`` (nq, d) among vectors matching ``filter``.

        Args:
            vectors: a batch (nq, d) (or one vector (d,)), any numeric dtype.
            k: results per query (1..1000).
            filter: None, one filter for every query, or a list with one filter per query.
            branching, depth: the allocator tree (b, L); both None lets the coordinator choose (about one
                allocator per 50 queries; depth 0, no allocators, for small batches). ``depth=0`` alone
                makes the coordinator call the processors itself.
            timeout: seconds the whole query may take (at most 3,600), measured on this machine's clock
                and sent as a remaining-time budget, so a caller's clock skew does not matter; every level
                stops waiting and retrying in time, and the query then fails with `InvocationTimeoutError`.
            allow_partial: return results even if some partitions could not be searched, with
                ``complete`` False for the queries that missed one; by default that raises
                `IncompleteResultError` naming the partitions.
            **knobs: search parameters, see `squash.SearchParams`.

        Returns:
            A `SearchResult`: ``ids`` int64 (nq, k) padded with -1, exact ``distances`` float32 (nq, k),
            per-query ``stats`` int64 (nq,) for each of ``STAT_FIELDS``, and run ``info``: ``seconds``
            (wall time), ``version``, ``branching``, ``depth``, ``allocators``, ``coordinator_calls`` (more
            than 1 when the batch was split to fit the payload limit); totals ``invocations``, ``cold``,
            ``warm``, ``gets``, ``bytes_read``, ``lists``, ``retries``, ``hedges``, ``retries_denied``
            (retries the retry budget refused; the client's own retries of the coordinator included); per role
            ``<role>.<counter>`` (for example ``processor.cache_hits``, ``allocator.seconds``,
            ``processor.max_seconds``); per function ``function.<name>.<counter>`` for the counters it did
            not leave at zero. Counters are listed in
            `squash.runtime.protocol.COUNTERS`. ``complete`` (bool (nq,)) is False only for the queries that missed
            a partition, which ``allow_partial=True`` alone lets through.
        """
        started = time.perf_counter()
        deadline = Deadline.after(_timeout(timeout))
        if not isinstance(allow_partial, bool):
            raise InvalidInputError(f"allow_partial must be True or False, got {allow_partial!r}")
        queries = as_vectors(vectors, name="queries")
        request = CoordinatorRequest(
            IndexRef(self.uri, self.version),
            queries,
            FilterSet.from_user(filter, queries.shape[0]),
            k,
            knobs,
            _shape(branching, depth),
        )
        request.validate()  # the caller's batch enters here: nothing is sent that a function would refuse
        budget = RetryBudget.of(self.config)
        responses: list[CoordinatorResponse] = []
        for part, payload in split_request(request, self.config.payload_limit, self._functions):
            if responses:
                # Later slices of a split batch must search the build the first one found.
                part = replace(part, index=IndexRef(self.uri, responses[0].version, responses[0].build))
                payload = encode_event(part.to_event())
            responses.append(self._call(part, payload, deadline, budget))
        response = CoordinatorResponse.concat(responses)
        if response.missing and not allow_partial:
            raise _incomplete(response.missing)
        info = _run_info(response, time.perf_counter() - started, len(responses), budget)
        return SearchResult(
            response.ids, response.distances, dict(response.stats), info, response.complete, response.recall_estimate
        )

    def _call(
        self, part: CoordinatorRequest, payload: bytes, deadline: Deadline, budget: RetryBudget
    ) -> CoordinatorResponse:
        """Invoke the coordinator, retrying transient errors, waiting no longer than the deadline."""
        policy = RetryPolicy.of(self.config)
        callee = deadline.earlier(self.config.deadline_margin)
        # Checked here, before a thread starts: a timeout too short to start anything fails the same way on
        # any machine, not by whichever of the caller and the call thread loses a race.
        callee.budget_ms(self.function)
        attempt = partial(call, self.invoker, self.function, part, payload, callee)
        (outcome,) = FanOut(
            [partial(retrying, attempt, policy, deadline, self.function, budget)], limit=1, deadline=deadline
        ).results()
        if isinstance(outcome, SquashError):
            raise outcome
        return outcome


def _timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidInputError(f"timeout must be a positive number of seconds up to {MAX_TIMEOUT:,}, got {timeout!r}")
    return float(timeout)


def _incomplete(missing: tuple[Missing, ...]) -> SquashError:
    """The error for a batch some of whose partitions were not searched, naming each of them once."""
    first = {m.partition: m for m in reversed(missing)}
    partitions = tuple(sorted(first))
    message = "; ".join(first[p].message for p in partitions)
    if all(m.error == InvocationTimeoutError.__name__ for m in missing):
        return InvocationTimeoutError(f"the query deadline passed before every partition was searched: {message}")
    return IncompleteResultError(message, partitions=partitions)


def _shape(branching: int | None, depth: int | None) -> TreeShape | None:
    for name, value in (("branching", branching), ("depth", depth)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInputError(f"{name} must be an integer or None, got {value!r}")
    if branching is None and depth is None:
        return None
    if depth == 0 and branching is None:
        return TreeShape(1, 0)
    if branching is None or depth is None:
        raise InvalidInputError(
            f"pass branching and depth together (got branching={branching!r}, depth={depth!r}); "
            "depth=0 alone skips the allocators"
        )
    return TreeShape(branching, depth)


def _run_info(response: CoordinatorResponse, seconds: float, calls: int, budget: RetryBudget) -> dict[str, float]:
    """The run's figures, the per-function metrics flattened (`flatten_metrics`), and the client's own
    retries of the coordinator added to the totals."""
    info: dict[str, float] = {
        "seconds": seconds,
        "version": response.version,
        "branching": response.shape.branching,
        "depth": response.shape.depth,
        "allocators": response.shape.allocators,
        "coordinator_calls": calls,
        **flatten_metrics(response.metrics),
    }
    info["retries"] += budget.retries
    info["retries_denied"] += budget.denied
    return info
