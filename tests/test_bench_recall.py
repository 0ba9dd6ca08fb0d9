"""``squash bench recall`` on a tiny generated case, so the script cannot rot: its rows, numbers and findings."""

from __future__ import annotations

import numpy as np
import pytest

from squash.bench import recall
from squash.datasets import exact_knn
from squash.search.result import SearchResult, empty_stats


def _tiny_case() -> recall.Case:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(8, 16)) * 3
    base = (centres[rng.integers(0, 8, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    queries = (centres[rng.integers(0, 8, 30)] + rng.normal(size=(30, 16))).astype(np.float32)
    u = rng.random(3000)
    nq = len(queries)
    filterings = [
        recall.everyone(nq),
        recall.shared("u < 0.3", {"u": {"$lt": 0.3}}, u < 0.3, nq),
        *recall.fractions("range on u", "u", u, (0.1,), nq, seed=0),
    ]
    return recall.Case("tiny", base, queries, {"u": u}, filterings)


@pytest.fixture(scope="module")
def result() -> recall.CaseResult:
    return recall.bench_case(_tiny_case())


def test_one_row_per_filter_with_sane_numbers(result: recall.CaseResult) -> None:
    assert [row.label for row in result.rows] == ["unfiltered", "u < 0.3", "10.0% range on u"]
    assert [round(row.share, 2) for row in result.rows] == [1.0, 0.3, 0.1]
    for row in result.rows:
        assert set(row.modes) == {"calibrated", "old defaults"}
        for mode, measured in row.modes.items():
            assert 0.9 <= measured.recall <= 1.0, (row.label, mode)
            assert 0.0 <= measured.exact <= 1.0 and measured.qps > 0
            assert not measured.failed_checks, (row.label, mode, measured.checks)
        calibrated, old = row.modes["calibrated"], row.modes["old defaults"]
        assert 0.5 <= calibrated.estimate <= 1.0  # the calibration answers for the defaults...
        assert np.isnan(old.estimate) or old.estimate == 1.0  # ...not for hand-set knobs, unless exact
    assert 0 < result.calibration_s < result.build_s
    assert result.shape == (3000, 16)


def test_tables_and_report_carry_every_row(result: recall.CaseResult) -> None:
    text = recall.report([result], "header", "squash bench recall --cases tiny", 1.0, ["absent-set"])
    lines = recall.recall_table([result]).splitlines()
    assert len(lines) == 2 + len(result.rows)
    assert all(line in text for line in lines)
    assert "| tiny | 3,000 x 16 |" in text
    assert "skipped absent-set" in text


def test_findings_name_each_kind_of_defect(result: recall.CaseResult) -> None:
    row = result.rows[1]
    bad = recall.Measured(0.5, 0.99, 0.0, 1.0, {"violations": 2, "wrong_count": 1, "duplicates": 0, "false_exact": 0})
    broken = recall.CaseResult(
        **{**vars(result), "rows": [recall.Row("tiny", row.label, row.share, {"calibrated": bad})]}
    )
    found = recall.findings([broken])
    assert len(found) == 3
    assert "below the target" in found[0] and "+0.4900 off" in found[1] and "'violations': 2" in found[2]


def test_truth_is_brute_force_over_the_admitted_rows() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(500, 8)).astype(np.float32)
    queries = rng.normal(size=(4, 8)).astype(np.float32)
    mask = rng.random(500) < 0.02  # about 10 rows: some queries may have fewer than k matches
    got, distances = recall.truth(base, queries, [None, mask, mask, None])
    for i, admitted in enumerate([None, mask, mask, None]):
        rows = np.arange(500) if admitted is None else np.flatnonzero(admitted)
        d = ((base[rows].astype(np.float64) - queries[i]) ** 2).sum(axis=1)
        want = rows[np.argsort(d, kind="stable")[: recall.K]]
        np.testing.assert_array_equal(got[i][got[i] >= 0], want)
        np.testing.assert_allclose(distances[i][: len(want)], np.sort(d)[: recall.K])
    np.testing.assert_array_equal(got[0], exact_knn(base, queries[:1], recall.K)[0][0])


def test_false_exact_counts_flagged_queries_that_differ_from_brute_force() -> None:
    truth = np.array([[1.0, 2.0], [1.0, np.inf], [3.0, 4.0]])
    found = np.array([[1.0, 2.0], [1.0, np.inf], [3.0, 5.0]], dtype=np.float32)
    flagged = SearchResult(np.zeros((3, 2), dtype=np.int64), found, empty_stats(3))  # no partition unscanned
    assert flagged.exact.all() and recall.false_exact(flagged, truth) == 1
    unflagged = SearchResult(flagged.ids, found, {**empty_stats(3), "unvisited": np.ones(3, dtype=np.int64)})
    assert recall.false_exact(unflagged, truth) == 0


def test_unknown_case_is_refused() -> None:
    with pytest.raises(SystemExit):
        recall.run(["--cases", "readme,nope"])
