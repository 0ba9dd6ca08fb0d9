"""Recall at default settings follows from the data: build-time calibration, recall targets, honest estimates.

Every recall here is measured against numpy brute force (`squash.datasets.exact_knn`) over the rows each
filter admits, evaluated on the raw attributes; no answer of the code under test is its own oracle.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest

import squash
from squash.datasets import exact_knn, synthetic_clustered
from tests.conftest import shared_dataset

K = 10
TARGET = 0.95


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    hits = total = 0
    for found, want in zip(ids, truth, strict=True):
        want = want[want >= 0]
        hits += len(set(found[found >= 0].tolist()) & set(want.tolist()))
        total += len(want)
    return hits / max(total, 1)


def _check(
    index: squash.Index, base: np.ndarray, queries: np.ndarray, filters: list[Any], masks: list[np.ndarray | None]
) -> tuple[float, Any]:
    """Search at defaults; check exact-k and filter satisfaction; return recall against brute force."""
    result = index.search(queries, k=K, filter=filters)
    if all(mask is masks[0] for mask in masks):  # one filter for the batch: one brute-force pass
        truth = exact_knn(base, queries, K, masks[0])[0]
    else:
        truth = np.vstack([exact_knn(base, queries[i : i + 1], K, masks[i])[0] for i in range(len(queries))])
    for i, mask in enumerate(masks):
        found = result.ids[i][result.ids[i] >= 0]
        matching = len(base) if mask is None else int(mask.sum())
        assert len(found) == min(K, matching), i
        assert len(set(found.tolist())) == len(found)
        if mask is not None:
            assert mask[found].all(), i
    return _recall(result.ids, truth), result


def test_readme_example_reaches_the_target_at_defaults() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(100_000, 128)).astype("float32")
    attributes = {
        "price": np.random.default_rng(1).uniform(0, 100, 100_000),
        "category": np.random.default_rng(2).choice(["shoe", "bag", "hat"], 100_000),
    }
    index = squash.Index.build(vectors, attributes, metric="l2")
    queries = np.random.default_rng(3).normal(size=(40, 128)).astype("float32")
    flt = {"price": {"$lt": 20}, "category": {"$in": ["bag", "hat"]}}
    mask = (attributes["price"] < 20) & np.isin(attributes["category"], ["bag", "hat"])
    unfiltered, result = _check(index, vectors, queries, [None] * 40, [None] * 40)
    filtered, _ = _check(index, vectors, queries, [flt] * 40, [mask] * 40)
    assert unfiltered >= TARGET and filtered >= TARGET
    assert np.all(result.recall_estimate >= TARGET)


def _two_far_clusters(n: int, d: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[n // 2 :, 0] += 40.0  # the second cluster, far from the first
    tag = np.zeros(n, dtype=np.int64)
    tag[n // 2 :] = rng.random(n - n // 2) < 0.5  # 25% of the rows, all in the far cluster
    return x.astype(np.float32), {"tag": tag}


@pytest.mark.parametrize("seed", [0, 4, 5])  # 0 and 4 failed before the calibration drew 0/1 filters on one value
def test_far_cluster_filter_reaches_the_target(seed: int) -> None:
    base, attrs = _two_far_clusters(30_000, 32, seed=seed)
    index = squash.Index.build(base, attrs)
    queries = np.random.default_rng(100 + seed).normal(size=(40, 32)).astype(np.float32)  # near the first cluster
    recall, _ = _check(index, base, queries, [{"tag": 1}] * 40, [attrs["tag"] == 1] * 40)
    assert recall >= TARGET


def test_anti_correlated_filters_reach_the_target() -> None:
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, 32)) * 3
    label = rng.integers(0, 30, 60_000)
    base = (centres[label] + rng.normal(size=(60_000, 32))).astype(np.float32)
    group = label % 10
    index = squash.Index.build(base, {"group": group})
    own = rng.integers(0, 30, 40)
    queries = (centres[own] + rng.normal(size=(40, 32))).astype(np.float32)
    other = [int((g % 10 + 5) % 10) for g in own]  # 10% of the rows, none in the query's own cluster
    recall, _ = _check(index, base, queries, [{"group": g} for g in other], [group == g for g in other])
    assert recall >= TARGET


@pytest.fixture(scope="module")
def clustered() -> tuple[squash.Index, np.ndarray, np.ndarray]:
    """A clustered set whose calibration chooses a list scan (not the exact search) at the default target."""
    data = synthetic_clustered(40_000, 48, n_queries=300, clusters=60, attributes=0, seed=11)
    return squash.Index.build(data.base), data.base, data.queries


def test_estimate_matches_recall_on_fresh_queries(clustered: tuple[squash.Index, np.ndarray, np.ndarray]) -> None:
    index, base, queries = clustered  # queries: fresh draws from the same distribution, not rows of base
    result = index.search(queries, k=K)
    assert not result.exact.all()  # the estimate, not a certificate, is under test
    truth, _ = exact_knn(base, queries, K)
    measured = _recall(result.ids, truth)
    assert measured >= TARGET
    assert abs(float(result.recall_estimate.mean()) - measured) <= 0.03


def test_recall_target_is_monotone(clustered: tuple[squash.Index, np.ndarray, np.ndarray]) -> None:
    index, base, queries = clustered
    truth, _ = exact_knn(base, queries, K)
    recalls = [_recall(index.search(queries, k=K, recall_target=t).ids, truth) for t in (0.6, 0.8, 0.95, 0.99)]
    assert all(b >= a for a, b in itertools.pairwise(recalls)), recalls
    assert recalls[-1] >= 0.99 - 0.02


def test_effort_knobs_bypass_the_calibration(clustered: tuple[squash.Index, np.ndarray, np.ndarray]) -> None:
    index, _, queries = clustered
    told = index.search(queries[:5], k=K, probe=1, rerank_depth=10)
    assert np.isnan(told.recall_estimate).all()  # no calibration applies to hand-set effort
    assert np.all(index.search(queries[:5], k=K, exact=True).recall_estimate == 1.0)


@pytest.mark.parametrize("bad", [0.2, 1.0, float("nan"), "high", True])
def test_bad_recall_target_is_refused(clustered: tuple[squash.Index, np.ndarray, np.ndarray], bad: Any) -> None:
    index, _, queries = clustered
    with pytest.raises(squash.InvalidInputError, match="recall_target"):
        index.search(queries[:2], k=K, recall_target=bad)


def test_bad_build_target_is_refused() -> None:
    with pytest.raises(squash.InvalidInputError, match="target_recall"):
        squash.Index.build(np.zeros((50, 4), np.float32), target_recall=1.5)


def test_client_carries_estimates_and_exactness(clustered: tuple[squash.Index, np.ndarray, np.ndarray]) -> None:
    _, base, queries = clustered
    uri = "memory://calibration-client"
    squash.build_index(uri, base, {"price": np.arange(len(base)) % 1000})
    index, client = squash.Index.open(uri), squash.Client(uri)
    filters = [None, {"price": {"$lt": 1}}] * 10  # unfiltered, and 0.1% (answered exactly)
    local = index.search(queries[:20], k=K, filter=filters)
    remote = client.query_batch(queries[:20], k=K, filter=filters, recall_target=0.9)
    again = index.search(queries[:20], k=K, filter=filters, recall_target=0.9)
    np.testing.assert_array_equal(remote.ids, again.ids)
    np.testing.assert_array_equal(remote.recall_estimate, again.recall_estimate)
    np.testing.assert_array_equal(remote.exact, again.exact)
    assert remote.exact[1::2].all() and (remote.recall_estimate[1::2] == 1.0).all()
    single = client.query(queries[1], k=K, filter=filters[1])
    assert single.exact and single.recall_estimate == 1.0
    assert local.recall_estimate[0] >= TARGET


def _shared_filters(name: str) -> list[tuple[str, Any, np.ndarray | None]]:
    """(label, filter, base mask) at about 100%, 10%, 1% and 0.1% from each dataset's real attributes."""
    path = shared_dataset(name)
    if name == "sift-ngt-5k":  # no attributes of its own: a uniform one, seeded
        tag = np.random.default_rng(12).integers(0, 1000, len(np.load(path / "base.npy", mmap_mode="r")))
        return [
            ("unfiltered", None, None),
            ("10% range", {"tag": {"$lt": 100}}, tag < 100),
            ("1% range", {"tag": {"$lt": 10}}, tag < 10),
            ("0.1% value", {"tag": 7}, tag == 7),
        ]
    if name == "fashion-mnist-784":
        attrs = np.load(path / "base_attrs.npy")
        label, pixels = attrs[:, 0], attrs[:, 1]
        lo1, hi1 = np.quantile(pixels, [0.40, 0.41])
        lo2, hi2 = np.quantile(pixels, [0.70, 0.701])
        return [
            ("unfiltered", None, None),
            ("10% label", {"label": 3}, label == 3),
            ("1% range", {"nonzero_pixels": {"$gte": int(lo1), "$lte": int(hi1)}}, (pixels >= lo1) & (pixels <= hi1)),
            ("0.1% range", {"nonzero_pixels": {"$gte": int(lo2), "$lte": int(hi2)}}, (pixels >= lo2) & (pixels <= hi2)),
        ]
    attrs = np.load(path / "base_attrs.npy")
    section, size, team = attrs[:, 0], attrs[:, 2], attrs[:, 5]
    science = json.loads((path / "attr_codes.json").read_text())["sections"].index("science")
    return [
        ("unfiltered", None, None),
        ("7% python", {"section": 2}, section == 2),
        ("2% science team", {"section": science, "team": 1}, (section == science) & (team == 1)),
        ("0.2% huge", {"size": {"$gt": 400_000}}, size > 400_000),
    ]


def _shared_index(name: str) -> tuple[squash.Index, np.ndarray, np.ndarray]:
    path = shared_dataset(name)
    base = np.load(path / "base.npy").astype(np.float32)
    queries = np.load(path / "queries.npy")[:100].astype(np.float32)
    attrs: dict[str, np.ndarray] = {}
    if name == "sift-ngt-5k":
        attrs = {"tag": np.random.default_rng(12).integers(0, 1000, len(base))}
    if name == "fashion-mnist-784":
        raw = np.load(path / "base_attrs.npy")
        attrs = {"label": raw[:, 0], "nonzero_pixels": raw[:, 1]}
    elif name == "debian-packages-e5small-384":
        raw = np.load(path / "base_attrs.npy")
        attrs = {"section": raw[:, 0], "size": raw[:, 2], "team": raw[:, 5]}
    return squash.Index.build(base, attrs or None), base, queries


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("name", ["sift-ngt-5k", "fashion-mnist-784", "debian-packages-e5small-384"])
def test_shared_datasets_reach_the_target_at_defaults(name: str) -> None:
    filters = _shared_filters(name)
    index, base, queries = _shared_index(name)
    for label, flt, mask in filters:
        recall, result = _check(index, base, queries, [flt] * len(queries), [mask] * len(queries))
        assert recall >= TARGET, (name, label, recall)
        estimate = float(result.recall_estimate.mean())
        assert estimate >= TARGET and abs(estimate - recall) <= 0.05, (name, label, estimate, recall)


def test_an_index_built_before_calibration_searches_with_the_knob_defaults(
    clustered: tuple[squash.Index, np.ndarray, np.ndarray],
) -> None:
    from dataclasses import replace

    from squash.search.engine import search

    index, _, queries = clustered
    old = replace(index.meta, params={k: v for k, v in index.meta.params.items() if k != "calibration"})
    result = search(old, index.partition, queries[:20], k=K, filter=None, knobs={})
    expected = search(index.meta, index.partition, queries[:20], k=K, filter=None, knobs={"probe": 32})
    np.testing.assert_array_equal(result.ids, expected.ids)  # SearchParams' defaults, as before calibration
    assert np.isnan(result.recall_estimate).all()


@pytest.mark.parametrize(
    "stored",
    [
        {"target": 0.95},
        {"target": "x", "recall": {}, "exact_faster": {}},
        {"target": 0.9, "recall": {"9%": []}, "exact_faster": {}},
    ],
)
def test_a_malformed_calibration_is_a_corrupt_object(
    clustered: tuple[squash.Index, np.ndarray, np.ndarray], stored: dict[str, Any]
) -> None:
    from dataclasses import replace

    from squash.search.engine import search

    index, _, queries = clustered
    bad = replace(index.meta, params={**index.meta.params, "calibration": stored})
    with pytest.raises(squash.CorruptObjectError, match="calibration"):
        search(bad, index.partition, queries[:2], k=K, filter=None, knobs={})


def test_a_rung_counts_only_if_every_costlier_measured_rung_meets_the_target_too() -> None:
    from squash.search.effort import EXACT, Calibration

    table = {"10%": [(0, 0.98, 0.97), (2, 0.96, 0.94), (4, 0.98, 0.96), (6, 0.99, 0.98)]}
    calibration = Calibration(0.95, table, {"10%": 17})
    assert calibration.choose("10%", 0.95) == (4, 0.98)  # rung 0 met it by chance: rung 2 does not
    assert calibration.choose("10%", 0.97) == (6, 0.99)
    assert calibration.choose("10%", 0.99) == (EXACT, 1.0)
    faster = Calibration(0.95, table, {"10%": 6})  # the exact search beat rung 6: only rungs below count
    assert faster.choose("10%", 0.97) == (EXACT, 1.0)
