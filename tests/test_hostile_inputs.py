"""Each bad input a review found escaping as a raw TypeError / ValueError / OverflowError / RecursionError /
UnicodeError now ends in a clear `SquashError`, and nothing a Lambda payload cannot carry is ever sent.

The cases: non-finite knobs, huge timeouts and deadlines, deeply nested filters, versions past the largest,
lone surrogates in attributes, filters and URIs, NaN and infinity in filters and events. The generator of
hostile values that found the rest lives in tests/test_fuzz.py (values in tests/hostile.py).
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import numpy as np
import pytest
from hostile import nested_filter

import squash
from squash.config import RuntimeConfig
from squash.errors import FilterError, InvalidInputError
from squash.filter import MAX_DEPTH, compile_filter
from squash.pipeline import build_index
from squash.runtime.context import HandlerContext
from squash.runtime.dispatch import handle
from squash.runtime.inprocess import InProcessInvoker
from squash.runtime.protocol import MAX_TIMEOUT, CoordinatorRequest, IndexRef, encode_event
from squash.runtime.tree import TreeShape
from squash.search.params import SearchParams
from squash.search.queries import FilterSet

DIM = 8
N = 300
KNOBS = [name for name in SearchParams().to_dict() if name != "exact"]


@pytest.fixture(scope="module")
def stored() -> tuple[str, squash.Index, squash.Client]:
    uri = f"memory://hostile-{uuid.uuid4().hex}"
    rng = np.random.default_rng(1)
    attrs = {"price": rng.integers(0, 100, N), "color": np.array(["red", "green"])[rng.integers(0, 2, N)]}
    build_index(uri, rng.normal(size=(N, DIM)).astype(np.float32), attrs, partitions=3, seed=0)
    return uri, squash.Index.open(uri), squash.Client(uri)


def _queries() -> np.ndarray:
    return np.ones((2, DIM), np.float32)


class _Recording:
    """An invoker that records what it is asked to send and forwards it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.config = inner.config
        self.sent: list[bytes] = []

    def invoke(self, function: str, payload: bytes) -> dict[str, Any]:
        self.sent.append(payload)
        return self.inner.invoke(function, payload)  # type: ignore[no-any-return]


# --- the cases found by review ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("knob", KNOBS)
def test_non_finite_knobs_are_refused_everywhere(stored: Any, knob: str, value: float) -> None:
    _, index, client = stored
    with pytest.raises(InvalidInputError, match=f"knob '{knob}' must be a finite number|{knob} must be"):
        SearchParams.from_knobs({knob: value})
    with pytest.raises(InvalidInputError):
        index.search(_queries(), 3, **{knob: value})
    with pytest.raises(InvalidInputError):
        client.query_batch(_queries(), 3, depth=0, **{knob: value})


@pytest.mark.parametrize("timeout", [1e10, 1e300, MAX_TIMEOUT + 1, 10**400])
def test_timeout_over_the_limit_is_refused(stored: Any, timeout: float) -> None:
    with pytest.raises(InvalidInputError, match=f"up to {MAX_TIMEOUT:,}"):
        stored[2].query_batch(_queries(), 3, timeout=timeout)


def test_timeout_at_the_limit_is_accepted(stored: Any) -> None:
    assert stored[2].query_batch(_queries(), 3, timeout=MAX_TIMEOUT).ids.shape == (2, 3)


@pytest.mark.parametrize("budget_ms", [10**30, 2**63, 2**64])
def test_event_with_an_extreme_budget_is_refused(stored: Any, budget_ms: int) -> None:
    uri, _, client = stored
    request = CoordinatorRequest(IndexRef(uri), _queries(), FilterSet.from_user(None, 2), 3, {}, TreeShape(1, 1))
    event = {**json.loads(json.dumps(request.to_event())), "budget_ms": budget_ms}
    ctx = HandlerContext("coordinator", "squash-coordinator", client.config, client.invoker)
    with pytest.raises(InvalidInputError, match="budget_ms"):
        handle("coordinator", event, ctx)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 5_000])
def test_deeply_nested_filters_are_filter_errors(stored: Any, depth: int) -> None:
    _, index, client = stored
    expr = nested_filter(depth)
    with pytest.raises(FilterError, match=f"limit of {MAX_DEPTH} levels"):
        index.search(_queries(), 3, filter=expr)
    with pytest.raises(FilterError, match=f"limit of {MAX_DEPTH} levels"):
        client.query_batch(_queries(), 3, filter=expr)
    with pytest.raises(FilterError, match=f"limit of {MAX_DEPTH} levels"):
        compile_filter(expr, index.meta.schema, index.meta.attr_quantizer)


@pytest.mark.parametrize("version", [10**10, 2**63, 2**70])
def test_versions_out_of_range_are_invalid_input(stored: Any, version: int) -> None:
    uri, _, client = stored
    with pytest.raises(InvalidInputError, match="index version must be an integer in 1"):
        squash.Index.open(uri, version=version)
    with pytest.raises(InvalidInputError, match=r"index[. ]version"):
        squash.Client(uri, version=version).query_batch(_queries(), 3)
    event = CoordinatorRequest(IndexRef(uri), _queries(), FilterSet.from_user(None, 2), 3, {}).to_event()
    event["index"]["version"] = version
    ctx = HandlerContext("coordinator", "squash-coordinator", client.config, client.invoker)
    with pytest.raises(InvalidInputError, match=r"index[. ]version"):
        handle("coordinator", event, ctx)


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
def test_lone_surrogates_in_attributes_are_refused_at_build(text: str) -> None:
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    for attributes, what in [
        ({text: np.arange(40)}, "attribute name"),
        ({"c": np.array([text, "a"] * 20)}, "category"),
    ]:
        with pytest.raises(InvalidInputError, match=f"{what} .* is not valid Unicode"):
            squash.Index.build(x, attributes, partitions=1)
        with pytest.raises(InvalidInputError, match=f"{what} .* is not valid Unicode"):
            build_index(f"memory://hostile-{uuid.uuid4().hex}", x, attributes, partitions=1)


@pytest.mark.parametrize("expr", [{"\ud800": 1}, {"color": "\ud800"}, {"color": {"$in": ["red", "\udc00"]}}])
def test_lone_surrogates_in_filters_are_refused_before_sending(stored: Any, expr: Any) -> None:
    uri, index, client = stored
    recording = _Recording(client.invoker)
    with pytest.raises(FilterError, match="not valid Unicode"):
        index.search(_queries(), 3, filter=expr)
    with pytest.raises(FilterError, match="not valid Unicode"):
        squash.Client(uri, invoker=recording).query_batch(_queries(), 3, filter=expr)
    assert recording.sent == []


@pytest.mark.parametrize("uri", ["memory://bad\ud800", "file:///tmp/bad\x00name", "file:///tmp/bad%00name"])
def test_store_uris_with_control_characters_or_surrogates_are_refused(uri: str) -> None:
    x = np.ones((4, 2), np.float32)
    with pytest.raises(InvalidInputError, match="control character or invalid Unicode"):
        squash.Index.open(uri)
    with pytest.raises(InvalidInputError, match="control character or invalid Unicode"):
        build_index(uri, x, partitions=1)


# --- nothing a Lambda payload cannot carry is sent ---------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [{"price": {"$lt": math.nan}}, {"price": {"$in": [1, math.inf]}}, {"$or": [{"price": -math.inf}, {"price": 2}]}],
)
def test_non_finite_filter_operands_are_refused_before_sending(stored: Any, expr: Any) -> None:
    uri, index, client = stored
    recording = _Recording(client.invoker)
    with pytest.raises(FilterError, match="not strict JSON"):
        squash.Client(uri, invoker=recording).query_batch(_queries(), 3, filter=expr)
    assert recording.sent == []
    with pytest.raises(FilterError, match="not strict JSON"):
        index.search(_queries(), 3, filter=expr)


@pytest.mark.parametrize("bad", [math.nan, math.inf, "\ud800"])
def test_events_encode_only_as_strict_json(bad: Any) -> None:
    # Every payload an invoker sends is one `encode_event` made (`split_request`, the client).
    with pytest.raises(InvalidInputError, match="not strict JSON"):
        encode_event({"squash": 1, "kind": "coordinator_request", "k": bad})


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_the_in_process_invoker_refuses_what_lambda_refuses(constant: str) -> None:
    payload = f'{{"squash": 1, "kind": "coordinator_request", "k": {constant}}}'.encode()
    with pytest.raises(InvalidInputError, match="not strict JSON"):
        InProcessInvoker(RuntimeConfig()).invoke("squash-coordinator", payload)
