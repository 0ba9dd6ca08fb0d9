"""End to end through the local serverless stack built from the real ``template.yaml``.

boto3 -> local coordinator -> allocators -> processors, each a warm awslambdaric worker running
``functions/<role>/app.py``, reading an index that `build_index` wrote to the moto S3 server. Answers must be
identical to `Index.search` on the same stored index and to the embedded `Client`.

Cost: one stack per module; workers start lazily (coordinator, up to 2 allocators, 4 processor slots).
Throttling and timeouts of the Lambda service are covered with purpose-built handlers in
tests/test_local_lambda.py: the real functions answer too fast to hit them cheaply.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import squash
from squash.datasets import exact_knn, synthetic_clustered
from squash.local import LocalStack
from squash.pipeline import build_index

pytestmark = pytest.mark.slow

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"
BUCKET = "squash-e2e"
PARTITIONS = 4
COLORS = np.array(["red", "green", "blue", "grey"])
FILTERS: list[Any] = [
    None,
    {"price": {"$lt": 30}},
    {"color": {"$in": ["red", "blue"]}, "score": {"$gte": 0.5}},
    {"$or": [{"price": {"$gte": 90}}, {"color": "grey"}]},
]


@dataclass(frozen=True)
class Deployment:
    stack: LocalStack
    uri: str
    base: np.ndarray
    attrs: dict[str, np.ndarray]
    queries: np.ndarray

    @property
    def coordinator(self) -> str:
        (name,) = (spec.name for spec in self.stack.functions.values() if spec.logical_id == "Coordinator")
        return name

    def client(self, uri: str | None = None) -> squash.Client:
        return squash.Client(uri or self.uri, function=self.coordinator)


def _build(uri: str, n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    data = synthetic_clustered(n, 32, n_queries=24, clusters=12, attributes=0, seed=seed)
    rng = np.random.default_rng(seed)
    attrs = {
        "price": rng.integers(0, 100, n),
        "score": rng.random(n),
        "color": COLORS[rng.integers(0, len(COLORS), n)],
    }
    build_index(uri, data.base, attrs, partitions=PARTITIONS)
    return data.base, attrs, data.queries


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # Module-scoped, not session-scoped: the stack's exported endpoints must not outlive these tests.
    scratch = tmp_path_factory.mktemp("squash-e2e")
    with LocalStack(TEMPLATE, workers=2, scratch_dir=scratch, index_roots=[f"s3://{BUCKET}/indexes/"]) as stack:
        stack.client("s3").create_bucket(Bucket=BUCKET)
        uri = f"s3://{BUCKET}/indexes/e2e"
        base, attrs, queries = _build(uri, 2400, seed=0)
        yield Deployment(stack, uri, base, attrs, queries)


def _mask(expr: Any, attrs: dict[str, np.ndarray]) -> np.ndarray:
    """The rows matching one of FILTERS, evaluated directly on the raw attributes."""
    price, score, color = attrs["price"], attrs["score"], attrs["color"]
    masks = [
        np.ones(len(price), dtype=bool),
        price < 30,
        np.isin(color, ["red", "blue"]) & (score >= 0.5),
        (price >= 90) | (color == "grey"),
    ]
    return masks[FILTERS.index(expr)]


def test_deployed_embedded_and_index_search_agree(deployment: Deployment) -> None:
    queries = deployment.queries
    filters = [FILTERS[i % len(FILTERS)] for i in range(len(queries))]
    expected = squash.Index.open(deployment.uri).search(queries, k=10, filter=filters)
    embedded = squash.Client(deployment.uri).query_batch(queries, k=10, filter=filters)
    client = deployment.client()
    direct = client.query_batch(queries, k=10, filter=filters)  # depth 0: the coordinator calls processors
    tree = client.query_batch(queries, k=10, filter=filters, branching=2, depth=1)
    assert (direct.info["depth"], tree.info["depth"], tree.info["allocators"]) == (0, 1, 2)
    assert tree.info["allocator.invocations"] == 2
    for result in (embedded, direct, tree):
        np.testing.assert_array_equal(result.ids, expected.ids)
        np.testing.assert_array_equal(result.distances, expected.distances)
        for name, values in expected.stats.items():
            np.testing.assert_array_equal(result.stats[name], values)
    # Filters hold, and the answers are close to exact filtered search.
    hits = total = 0
    for expr in FILTERS:
        rows = [i for i, f in enumerate(filters) if f == expr]
        mask = _mask(expr, deployment.attrs)
        truth, _ = exact_knn(deployment.base, queries[rows], 10, mask)
        found = tree.ids[rows]
        assert mask[found[found >= 0]].all()
        hits += sum(len(set(a) & set(b)) for a, b in zip(found, truth, strict=True))
        total += truth.size
    assert hits / total >= 0.9


def test_warm_query_reads_nothing_on_processors(deployment: Deployment) -> None:
    # A fresh index (new URI): processor caches miss even if earlier tests warmed the containers.
    uri = f"s3://{BUCKET}/indexes/warm"
    _, _, queries = _build(uri, 800, seed=1)
    client = deployment.client(uri)
    first = client.query(queries[0], k=5, filter={"price": {"$lt": 50}})
    second = client.query(queries[0], k=5, filter={"price": {"$lt": 50}})
    np.testing.assert_array_equal(first.ids, second.ids)
    calls = first.info["processor.invocations"]
    assert calls == second.info["processor.invocations"] >= 1
    assert first.info["processor.cache_misses"] == calls
    assert first.info["processor.gets"] > 0 and first.info["processor.bytes_read"] > 0
    assert second.info["processor.cache_hits"] == calls and second.info["processor.cold"] == 0
    assert second.info["processor.gets"] == second.info["processor.bytes_read"] == 0


def test_rebuilt_index_is_never_served_from_warm_containers(deployment: Deployment) -> None:
    # `aws s3 rm --recursive` then a new build at the same URI: versions restart at 1, and warm coordinator,
    # allocator and processor containers must search the new build, not their caches of the deleted one.
    uri = f"s3://{BUCKET}/indexes/rebuild"
    base, attrs, queries = _build(uri, 1600, seed=2)
    client = deployment.client(uri)
    tree = {"branching": 2, "depth": 1, "exact": True}
    client.query_batch(queries, k=10, filter=FILTERS[1], **tree)
    deployment.stack.wait_idle()  # a hedged call still running would fail on the deleted objects
    s3 = deployment.stack.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="indexes/rebuild/"):
        for item in page.get("Contents", ()):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    base, attrs, _ = _build(uri, 400, seed=3)
    result = client.query_batch(queries, k=10, filter=FILTERS[1], **tree)
    deployment.stack.wait_idle()
    assert result.info["version"] == 1 and result.info["processor.cold"] == 0, result.info  # warm containers
    truth, _ = exact_knn(base, queries, 10, _mask(FILTERS[1], attrs))
    np.testing.assert_array_equal(result.ids, truth)


def test_service_counters_match_reported_metrics(deployment: Deployment) -> None:
    client = deployment.client()
    # Warm first: a slow cold call could be hedged. A hedge's losing invocation reports no metrics and is
    # not waited for, so the service may count it after the query returns: wait for it before reading.
    client.query_batch(deployment.queries[:6], k=10, branching=2, depth=1)
    deployment.stack.wait_idle()
    before = deployment.stack.stats()
    result = client.query_batch(deployment.queries[:6], k=10, branching=2, depth=1)
    deployment.stack.wait_idle()
    after = deployment.stack.stats()
    made = {name: after[name]["invocations"] - before[name]["invocations"] for name in after}
    reported = {name: result.info.get(f"function.{name}.invocations", 0) for name in after}
    assert sum(made.values()) == sum(reported.values()) + result.info["hedges"]
    for name in after:
        assert reported[name] <= made[name] <= reported[name] + result.info["hedges"], name
        assert after[name]["errors"] == 0, name


def test_errors_cross_the_wire_with_their_class(deployment: Deployment) -> None:
    client = deployment.client()
    with pytest.raises(squash.FilterError, match="nope"):
        client.query(deployment.queries[0], k=5, filter={"nope": {"$lt": 1}})
    with pytest.raises(squash.InvalidInputError, match="dimensions"):
        client.query(np.zeros(7, dtype=np.float32), k=5)
    with pytest.raises(squash.IndexNotFoundError):
        deployment.client(f"s3://{BUCKET}/indexes/absent").query(deployment.queries[0], k=5)
    with pytest.raises(squash.InvocationError, match="ResourceNotFound"):
        squash.Client(deployment.uri, function="no-such-function").query(deployment.queries[0], k=5)


def test_functions_refuse_indexes_outside_their_roots(deployment: Deployment, tmp_path: Path) -> None:
    local = tmp_path / "index"
    build_index(str(local), deployment.base[:200], partitions=1)
    other = "s3://squash-e2e-other/indexes/e2e"
    deployment.stack.client("s3").create_bucket(Bucket="squash-e2e-other")
    build_index(other, deployment.base[:200], partitions=1)
    for uri in (local.as_uri(), str(local), other, f"s3://{BUCKET}/indexes/../indexes/e2e", f"s3://{BUCKET}/other"):
        with pytest.raises(squash.AccessDeniedError, match=f"s3://{BUCKET}/indexes/"):
            deployment.client(uri).query(deployment.queries[0], k=5)
