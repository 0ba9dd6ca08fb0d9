"""Filtered search against exact filtered ground truth: recall, filter correctness, exactly-k."""

from __future__ import annotations

import numpy as np
import pytest

from squash import FilterError, InvalidInputError, LimitExceededError
from squash.datasets import exact_knn, synthetic_clustered
from squash.index import Index
from squash.search import prepared
from squash.search.params import SearchParams
from squash.search.queries import FilterSet

K = 10


def brute_force(base, queries, mask_rows, metric="l2", k=K):
    """Exact filtered top-k (ids, distances) per query; mask_rows[i] is a bool mask or None."""
    x = np.asarray(base, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.full((len(q), k), -1)
    for i, mask in enumerate(mask_rows):
        rows = np.arange(len(x)) if mask is None else np.flatnonzero(mask)
        if metric == "l2":
            d = ((x[rows] - q[i]) ** 2).sum(1)
        elif metric == "ip":
            d = -(x[rows] @ q[i])
        else:
            d = 1.0 - x[rows] @ q[i]
        order = np.lexsort((rows, d))[:k]
        ids[i, : len(order)] = rows[order]
    return ids


def recall(found, truth):
    hits = total = 0
    for f, t in zip(found, truth, strict=True):
        want = set(t[t >= 0].tolist())
        hits += len(want & set(f[f >= 0].tolist()))
        total += len(want)
    return hits / total if total else 1.0


def assert_exactly_k_or_all(result, masks, n):
    for i, mask in enumerate(masks):
        matches = n if mask is None else int(mask.sum())
        assert result.counts[i] == min(K, matches), (i, result.counts[i], matches)


def assert_all_satisfy(result, masks):
    for i, mask in enumerate(masks):
        got = result.ids[i][result.ids[i] >= 0]
        if mask is not None:
            assert mask[got].all(), f"query {i} returned ids that fail its filter"


@pytest.fixture(scope="module")
def synth():
    data = synthetic_clustered(20_000, 32, n_queries=60, clusters=40, attributes=3, seed=7)
    attrs = dict(data.attributes)
    rng = np.random.default_rng(1)
    attrs["color"] = rng.choice(np.array(["red", "green", "blue", "cyan"]), size=20_000)
    attrs["label"] = (data.base[:, 0] > np.median(data.base[:, 0])).astype(np.int64) + 2 * (
        data.base[:, 1] > np.median(data.base[:, 1])
    )
    attrs["flag"] = rng.random(20_000) < 0.3
    index = Index.build(data.base, attrs, partitions=8, seed=0)
    return data, attrs, index


def synth_cases(attrs, queries):
    a0, a1 = attrs["a0"], attrs["a1"]
    lo1 = np.quantile(a0, 0.5)
    w = 0.001**0.5
    return {
        "unfiltered": (None, None),
        "label_10pct": ({"a0": {"$lt": 0.1}}, a0 < 0.1),
        "range_1pct": ({"a0": {"$gte": lo1, "$lt": lo1 + 0.01}}, (a0 >= lo1) & (a0 < lo1 + 0.01)),
        "conj_0.1pct": (
            {"a0": {"$gte": 0.2, "$lt": 0.2 + w}, "a1": {"$gte": 0.6, "$lte": 0.6 + w}},
            (a0 >= 0.2) & (a0 < 0.2 + w) & (a1 >= 0.6) & (a1 <= 0.6 + w),
        ),
        "in": ({"color": {"$in": ["red", "cyan"]}}, np.isin(attrs["color"], ["red", "cyan"])),
        "or": (
            {"$or": [{"color": "blue"}, {"a1": {"$gt": 0.95}}]},
            (attrs["color"] == "blue") | (a1 > 0.95),
        ),
        "not": ({"$not": {"a0": {"$lt": 0.9}}}, ~(a0 < 0.9)),
        "nin_bool": ({"color": {"$nin": ["red"]}, "flag": True}, (attrs["color"] != "red") & attrs["flag"]),
        "ne": ({"label": {"$ne": 1}}, attrs["label"] != 1),
        "none_match": ({"a0": {"$gt": 2.0}}, np.zeros(len(a0), dtype=bool)),
    }


@pytest.mark.parametrize(
    "case",
    ["unfiltered", "label_10pct", "range_1pct", "conj_0.1pct", "in", "or", "not", "nin_bool", "ne", "none_match"],
)
def test_synthetic_filters_recall_exactly_k_and_correctness(synth, case):
    data, attrs, index = synth
    expr, mask = synth_cases(attrs, data.queries)[case]
    masks = [mask] * len(data.queries)
    result = index.search(data.queries, k=K, filter=expr)
    assert result.ids.dtype == np.int64 and result.distances.dtype == np.float32
    assert result.ids.shape == (len(data.queries), K)
    assert_all_satisfy(result, masks)
    assert_exactly_k_or_all(result, masks, len(data.base))
    truth = brute_force(data.base, data.queries, masks)
    assert recall(result.ids, truth) >= 0.95
    finite = np.isfinite(result.distances)
    assert (np.diff(np.where(finite, result.distances, np.finfo(np.float32).max), axis=1) >= 0).all()
    assert (finite == (result.ids >= 0)).all()
    if case == "none_match":
        assert (result.ids == -1).all() and np.isinf(result.distances).all()


def test_anti_correlated_per_query_filters(synth):
    """Queries near one label filtered to a different label: matches sit in far partitions."""
    data, attrs, index = synth
    label = attrs["label"]
    nearest = exact_knn(data.base, data.queries, 1)[0][:, 0]
    wanted = (label[nearest] + 3) % 4
    filters = [{"label": int(w)} for w in wanted]
    masks = [label == w for w in wanted]
    result = index.search(data.queries, k=K, filter=filters)
    assert_all_satisfy(result, masks)
    assert_exactly_k_or_all(result, masks, len(data.base))
    assert recall(result.ids, brute_force(data.base, data.queries, masks)) >= 0.95


def test_fewer_matches_than_k_returns_all_of_them(synth):
    data, attrs, index = synth
    rows = np.argsort(attrs["a2"])[:4]
    expr = {"a2": {"$lte": float(attrs["a2"][rows[-1]])}}
    result = index.search(data.queries[:5], k=K, filter=expr)
    for i in range(5):
        assert sorted(result.ids[i][:4].tolist()) == sorted(rows.tolist())
        assert (result.ids[i][4:] == -1).all()


def test_exact_mode_equals_brute_force(synth):
    data, attrs, index = synth
    expr, mask = synth_cases(attrs, data.queries)["label_10pct"]
    result = index.search(data.queries[:20], k=K, filter=expr, exact=True)
    truth = brute_force(data.base, data.queries[:20], [mask] * 20)
    np.testing.assert_array_equal(result.ids, truth)
    d = ((data.base[truth].astype(np.float64) - data.queries[:20, None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(result.distances, d, rtol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_metrics_against_brute_force(metric):
    data = synthetic_clustered(6000, 24, n_queries=40, clusters=20, attributes=1, seed=3)
    index = Index.build(data.base, data.attributes, metric=metric, partitions=4)
    mask = data.attributes["a0"] < 0.5
    expr = {"a0": {"$lt": 0.5}}
    truth = brute_force(data.base, data.queries, [mask] * 40, metric=metric)
    exact = index.search(data.queries, k=K, filter=expr, exact=True)
    np.testing.assert_array_equal(exact.ids, truth)
    approx = index.search(data.queries, k=K, filter=expr, centroid_factor=2.0)
    floor = 0.9 if metric == "ip" else 0.95
    assert recall(approx.ids, truth) >= floor
    assert_all_satisfy(approx, [mask] * 40)


def test_shared_filter_list_and_single_vector(synth):
    """A query gets the same answer alone or in a batch with other queries and filters."""
    data, _, index = synth
    batch = index.search(data.queries[:3], k=5, filter=[{"color": "red"}, None, {"color": "red"}])
    for i, expr in ((0, {"color": "red"}), (1, None), (2, {"color": "red"})):
        alone = index.search(data.queries[i], k=5, filter=expr)
        np.testing.assert_array_equal(alone.ids[0], batch.ids[i])
        np.testing.assert_array_equal(alone.distances[0], batch.distances[i])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"filter": {"nope": 1}}, FilterError, "nope"),
        ({"filter": {"a0": "high"}}, FilterError, "a0"),
        ({"filter": {"color": {"$in": []}}}, FilterError, r"\$in"),
        ({"filter": {"a0": {"$near": 1}}}, FilterError, r"\$near"),
        ({"filter": [{"a0": 1}]}, FilterError, "filters for"),
        ({"filter": {"$and": {"a0": 1}}}, FilterError, r"\$and"),
        ({"k": 0}, InvalidInputError, "k must"),
        ({"k": 5000}, LimitExceededError, "limit"),
        ({"bogus_knob": 1}, InvalidInputError, "bogus_knob"),
        ({"rerank_depth": 0}, InvalidInputError, "rerank_depth"),
    ],
)
def test_bad_requests_raise_clear_errors(synth, kwargs, error, match):
    data, _, index = synth
    with pytest.raises(error, match=match):
        index.search(data.queries[:2], **kwargs)


@pytest.mark.parametrize(
    ("queries", "match"),
    [
        (np.zeros((2, 5)), "dimension"),
        (np.full((1, 32), np.nan), "NaN"),
        (np.array([["x"] * 32]), "numbers"),
        (np.zeros((0, 32)), "empty"),
    ],
)
def test_bad_queries_raise_clear_errors(synth, queries, match):
    with pytest.raises(InvalidInputError, match=match):
        synth[2].search(queries)


# --- real data: fashion-mnist with its real labels ------------------------------------------


@pytest.fixture(scope="module")
def fashion_index(fashion):
    n = 20_000
    base = np.asarray(fashion["base"][:n])
    attrs = np.asarray(fashion["base_attrs"][:n])
    columns = {"label": attrs[:, 0], "nonzero_pixels": attrs[:, 1], "intensity_sum": attrs[:, 2]}
    index = Index.build(base, columns, partitions=4)
    queries = np.asarray(fashion["queries"][:100])
    qattrs = np.asarray(fashion["query_attrs"][:100])
    return base, columns, queries, qattrs, index


def fashion_cases(columns, qattrs):
    nz, inten, label = columns["nonzero_pixels"], columns["intensity_sum"], columns["label"]
    rng = np.random.default_rng(5)
    cases = {}
    cases["own_label_10pct"] = [({"label": int(q)}, label == q) for q in qattrs[:, 0]]
    cases["other_label_10pct"] = [({"label": int((q + 5) % 10)}, label == (q + 5) % 10) for q in qattrs[:, 0]]
    order = np.sort(inten)
    for name, frac in (("range_1pct", 0.01), ("range_0.1pct", 0.001)):
        per = []
        for _ in range(len(qattrs)):
            start = rng.integers(0, len(order) - int(frac * len(order)) - 1)
            lo, hi = int(order[start]), int(order[start + int(frac * len(order))])
            per.append(({"intensity_sum": {"$gte": lo, "$lte": hi}}, (inten >= lo) & (inten <= hi)))
        cases[name] = per
    cases["label_and_range"] = [
        ({"label": {"$in": [int(q), 1]}, "nonzero_pixels": {"$gt": 400}}, np.isin(label, [q, 1]) & (nz > 400))
        for q in qattrs[:, 0]
    ]
    cases["unfiltered"] = [(None, None)] * len(qattrs)
    return cases


@pytest.mark.shared
@pytest.mark.parametrize(
    "case", ["unfiltered", "own_label_10pct", "other_label_10pct", "range_1pct", "range_0.1pct", "label_and_range"]
)
def test_fashion_mnist_filtered_recall(fashion_index, case):
    base, columns, queries, qattrs, index = fashion_index
    exprs, masks = zip(*fashion_cases(columns, qattrs)[case], strict=True)
    result = index.search(queries, k=K, filter=list(exprs))
    assert_all_satisfy(result, masks)
    assert_exactly_k_or_all(result, masks, len(base))
    assert recall(result.ids, brute_force(base, queries, masks)) >= 0.95


@pytest.mark.parametrize("shared", [False, True])
def test_list_scan_extends_lists_until_k_matches(synth, shared):
    """Forced list scans (no candidate path) with one list per query still return exactly-k correct results."""
    data, attrs, index = synth
    a0 = attrs["a0"]
    nq = len(data.queries)
    starts = np.full(nq, 0.30) if shared else np.linspace(0.0, 0.9, nq)
    filters = [{"a0": {"$gte": float(s), "$lt": float(s) + 0.05}} for s in starts]
    masks = [(a0 >= s) & (a0 < s + 0.05) for s in starts]
    knobs = {"probe": 1, "probe_matches": 1, "exact_threshold": 0}
    result = index.search(data.queries, k=K, filter=filters[0] if shared else filters, **knobs)
    assert_all_satisfy(result, masks)
    assert_exactly_k_or_all(result, masks, len(data.base))
    assert result.stats["exact_scans"].sum() == 0


def test_more_probes_raise_unfiltered_recall(synth):
    data, _, index = synth
    truth = brute_force(data.base, data.queries, [None] * len(data.queries))
    low = recall(index.search(data.queries, k=K, probe=1).ids, truth)
    high = recall(index.search(data.queries, k=K, probe=64).ids, truth)
    assert high >= 0.95 and high > low


def test_benchmark_sweep_settings_are_valid_distinct_knobs():
    from squash.bench.search import QUICK_SWEEP, SQUASH_SWEEP, knob_label

    labels = [knob_label(knobs) for knobs in SQUASH_SWEEP]
    assert len(set(labels)) == len(labels)
    for knobs in SQUASH_SWEEP + QUICK_SWEEP:
        assert SearchParams.from_knobs(knobs).to_dict().items() >= knobs.items()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_selective_per_query_filters_are_exact_after_bound_pruning(metric):
    # About 2,000 matches per query, 1,000 per partition: every partition holding one is scanned exactly, and
    # its candidates (1,000 x 96 dimensions per query) go through the safe pruning by the codes' bound first.
    data = synthetic_clustered(16_000, 96, n_queries=30, clusters=20, attributes=1, seed=5)
    index = Index.build(data.base, data.attributes, metric=metric, partitions=2)
    starts = np.linspace(0.0, 0.875, 30)
    exprs = [{"a0": {"$gte": float(s), "$lt": float(s) + 0.125}} for s in starts]
    masks = [(data.attributes["a0"] >= s) & (data.attributes["a0"] < s + 0.125) for s in starts]
    result = index.search(data.queries, k=K, filter=exprs)
    np.testing.assert_array_equal(result.ids, brute_force(data.base, data.queries, masks, metric=metric))
    assert (result.stats["exact_scans"] >= 1).all()
    assert (result.stats["reranked"] < result.stats["filtered"]).any(), "the prefix bound pruned nothing"


@pytest.mark.parametrize(("batch_rows", "batched_lookup"), [(64, 100), (1 << 16, 4096)])
def test_candidates_for_many_filters_equal_each_filters_exact_matches(synth, monkeypatch, batch_rows, batched_lookup):
    """Batched posting-list lookups, per-filter lookups and full passes all return exactly the matching rows."""
    monkeypatch.setattr(prepared, "_LOOKUP_BATCH_ROWS", batch_rows)
    monkeypatch.setattr(prepared, "_BATCHED_LOOKUP", batched_lookup)
    _, _, index = synth
    part = index.partition(0)
    rng = np.random.default_rng(5)
    exprs = []
    for width in (0.001, 0.01, 0.2):  # a few rows, ~one cell, more than a batched lookup holds
        for lo in rng.random(6) * (1 - width):
            exprs.append({"a0": {"$gte": float(lo), "$lt": float(lo + width)}, "a1": {"$gt": float(rng.random() / 2)}})
    a0 = part.data.attr_raw["a0"]
    exprs += [  # intervals alone: the trimmed posting runs are the matches, unchecked
        {"a0": {"$gte": float(a0[3]), "$lt": float(a0[3]) + 0.002}},
        {"a0": {"$gt": float(a0[5]), "$lte": float(a0[5]) + 0.3}},
        {"a0": float(a0[9])},
        {"$and": [{"a0": {"$gt": 0.5}}, {"a0": {"$lt": 0.5}}]},
    ]
    exprs += [
        {"$or": [{"color": "blue"}, {"a1": {"$gt": 0.95}}]},  # no single driver: a full pass
        {"color": {"$in": ["red", "cyan"]}, "a2": {"$lt": 0.05}},
        {"a0": {"$gt": 2.0}},  # nothing
        {"$not": {"a0": {"$lt": 0.995}}},
    ]
    filters = FilterSet.from_user(exprs, len(exprs)).compile(index.meta)
    owner, rows = part.candidates_many(filters)
    assert (np.diff(owner) >= 0).all()
    for i, compiled in enumerate(filters):
        want = np.flatnonzero(compiled.exact(part.data.attr_raw))
        np.testing.assert_array_equal(rows[owner == i], want, err_msg=str(exprs[i]))
        np.testing.assert_array_equal(part.candidates_many([compiled])[1], want)
    assert len(rows) > 0 and len(set(owner.tolist())) >= len(exprs) - 3


@pytest.fixture(scope="module")
def wide():
    """96 dimensions, so the 32-dimension prefix bound is a bound, not the distance; 3,000-row partitions."""
    data = synthetic_clustered(12_000, 96, n_queries=24, clusters=20, attributes=1, seed=3)
    return data, Index.build(data.base, data.attributes, partitions=4, seed=0)


@pytest.mark.parametrize("filtered", [False, True])
def test_a_query_gets_the_same_answer_alone_as_in_any_batch(wide, filtered):
    """List-scan bounds, re-rank depths and distances are per query: batch-mates never change an answer."""
    data, index = wide
    queries = data.queries
    # 80% ranges: more matches than exact_threshold per partition, so filtered queries scan lists too.
    exprs = [{"a0": {"$gte": 0.008 * i, "$lt": 0.008 * i + 0.8}} for i in range(len(queries))] if filtered else None
    knobs = {"probe": 3, "rerank_depth": 10}  # shallow re-rank: depth decides answers
    batch = index.search(queries, k=K, filter=exprs, **knobs)
    assert (batch.stats["estimated"] > 0).all(), "every query should scan lists"
    for i in range(len(queries)):
        alone = index.search(queries[i : i + 1], k=K, filter=None if exprs is None else exprs[i], **knobs)
        np.testing.assert_array_equal(alone.ids[0], batch.ids[i])
        np.testing.assert_array_equal(alone.distances[0], batch.distances[i])


def test_filtered_list_scans_choose_the_same_rows_by_either_strategy(wide, monkeypatch):
    """Estimating whole lists then dropping failing rows, or gathering only the passing rows, ranks the same
    rows by the same estimates: the choice between them changes the cost, never the answer."""
    from squash.search import lists

    data, index = wide
    # 5% ranges, each query its own: more matches than exact_threshold per partition at exact_threshold=50.
    exprs = [{"a0": {"$gte": 0.01 * i, "$lt": 0.01 * i + 0.05}} for i in range(len(data.queries))]
    knobs = {"probe": 4, "rerank_depth": 15, "exact_threshold": 50}
    answers = []
    for share in (0, 10**9):  # always gather; never gather
        monkeypatch.setattr(lists, "_GATHER_SHARE", share)
        answers.append(index.search(data.queries, k=K, filter=exprs, **knobs))
    assert (answers[0].stats["estimated"] > 0).all(), "every query should scan lists"
    np.testing.assert_array_equal(answers[0].ids, answers[1].ids)
    np.testing.assert_array_equal(answers[0].distances, answers[1].distances)
    masks = [(data.attributes["a0"] >= 0.01 * i) & (data.attributes["a0"] < 0.01 * i + 0.05) for i in range(24)]
    truth = brute_force(data.base, data.queries, masks)
    assert recall(answers[1].ids, truth) >= 0.8


def test_a_concentrated_spectrum_ranks_by_its_leading_dimensions_batch_independently():
    """Most of the variance in a few KLT dimensions: list scans rank by those alone, re-rank more rows, and
    still answer each query as alone, near brute force."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, 128)) * np.geomspace(20, 0.05, 128)
    base = centres[rng.integers(0, 30, 8000)] + rng.normal(size=(8000, 128)) * np.geomspace(4, 0.05, 128)
    base = base.astype(np.float32)
    queries = (base[:40] + rng.normal(size=(40, 128)) * 0.3).astype(np.float32)
    index = Index.build(base, None, partitions=2)
    assert all(index.partition(p).lead > 0 for p in range(2))
    knobs = {"probe": 6, "rerank_depth": 10}
    batch = index.search(queries, k=K, **knobs)
    for i in range(0, 40, 7):
        alone = index.search(queries[i : i + 1], k=K, **knobs)
        np.testing.assert_array_equal(alone.ids[0], batch.ids[i])
    assert recall(batch.ids, brute_force(base, queries, [None] * 40)) >= 0.9
