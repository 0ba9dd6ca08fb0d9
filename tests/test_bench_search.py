"""``squash bench search`` on tiny sizes end to end, so the benchmark cannot rot, and the parts it reports."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from squash.bench import search
from squash.bench.search_report import DEFAULT, SUMMARY_HEADERS, Point, results_table, summary_rows
from squash.bench.workloads import K, Workload, debian_workloads, evaluate, ground_truth
from squash.datasets import SHARED_DATA, Dataset, shared_dataset, synthetic_clustered
from squash.search.effort import TOP_RUNG, rung_knobs

DEBIAN = "debian-packages-e5small-384"
has_debian = pytest.mark.skipif(not (SHARED_DATA / DEBIAN / "base.npy").exists(), reason="shared dataset absent")
SYSTEMS = ("Squash", "faiss IVF-Flat", "faiss IVF-SQ8", "hnswlib", "numpy pre-filter + exact")


def _rows(table: str, first: str) -> list[list[str]]:
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    return [row for row in cells if row[0] == first]


@pytest.mark.slow
def test_quick_mode_runs_end_to_end_and_reports_every_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--dataset", "debian,flat", "--rows", "3000", "--flat-n", "3000", "--queries", "20"]
    assert search.run([*argv, "--point-budget", "0.05", "--out", str(tmp_path)]) == 0
    summary, full = (tmp_path / "summary.md").read_text(), (tmp_path / "search.md").read_text()
    names = ["flat-spectrum-3000x768"] + ([DEBIAN] if (SHARED_DATA / DEBIAN).exists() else [])
    for name in names:
        rows = [row for row in _rows(summary, name) if len(row) == len(SUMMARY_HEADERS)]
        assert len(rows) == 7  # unfiltered, then two workloads at each of 10%, 1% and 0.1%
        for row in rows:
            recall, qps = row[-1].split(", ")
            assert 0 < float(recall) <= 1 and float(qps.replace(",", "")) > 0
    for system in (*SYSTEMS, f"Squash {DEFAULT}, estimate", "**Squash / best peer**", "**Squash / faiss IVF-SQ8**"):
        assert full.count(f"| {system}") >= 7 * len(names), system
    # Squash's footprint: the re-rank keeps every float32 vector, so the objects hold at least 4 * D bytes each.
    (flat,) = [line for line in summary.splitlines() if line.startswith("| flat-spectrum-3000x768 | 3,000 x 768 |")]
    raw, objects, warm = (float(c.replace(",", "")) for c in flat.strip("|").split("|")[2:5])
    assert raw == 4 * 768 and objects >= raw and warm >= raw
    first = [
        r for r in _rows(summary, "flat-spectrum-3000x768") if r[1] in ("unfiltered", "1% 4-attribute conjunction")
    ]
    assert len(first) == 2 and all(float(r[3]) > 0 and float(r[4]) > 0 for r in first)
    assert len(list(tmp_path.glob("flat-spectrum-3000x768-*pct.png"))) == 4
    swept = capsys.readouterr().out  # every measured point is printed
    assert f"Squash                     {DEFAULT}" in swept and f"rung 0: {search.knob_label(rung_knobs(0))}" in swept
    assert "Squash                     exact" in swept


def _point(label: str, recall: float, qps: float) -> Point:
    return Point(label, recall, qps, 100, {"estimate": 0.95})


def test_tables_give_qps_at_each_target_the_default_row_and_both_ratios() -> None:
    work = Workload(0.01, "w", [None])
    curves = {
        "Squash": [_point(DEFAULT, 0.96, 1000.0), _point("rung 0", 0.95, 2000.0), _point("exact", 1.0, 100.0)],
        "faiss IVF-SQ8": [_point("nprobe=1", 0.95, 800.0), _point("nprobe=2", 0.99, 400.0)],
        "hnswlib": [_point("ef=10", 0.97, 1600.0)],
    }
    rows = {row[1]: row[2:] for row in _rows(results_table([(work, curves)]), work.label)}
    # At 0.99, log-interpolated between the points at 0.96 and 1.0: 1,000 * 0.1^0.75.
    assert rows["Squash"][:3] == ["2,000", "2,000", "178"]
    assert rows[f"Squash {DEFAULT}, estimate 0.950"] == ["1,000", "1,000", "—", "0.9600", "100"]
    assert rows["**Squash / best peer**"][:3] == ["1.25x", "1.25x", "0.44x"]  # hnswlib at 0.9 and 0.95, SQ8 at 0.99
    assert rows["**Squash / faiss IVF-SQ8**"][:3] == ["2.50x", "2.50x", "0.44x"]
    (summary,) = summary_rows("d", [(work, curves)])
    assert summary[-4:] == ["1.25x", "2.50x", "1.25x", "0.960, 1,000"]


def test_cost_bench_reads_the_best_peer_not_squashs_rows(tmp_path: Path) -> None:
    from squash.bench.cost import peer_qps

    work = Workload(0.1, "4-attribute conjunction", [None])
    curves = {
        "Squash": [_point(DEFAULT, 0.96, 5000.0)],
        "faiss IVF-SQ8": [_point("nprobe=1", 0.95, 800.0)],
        "hnswlib": [_point("ef=10", 0.97, 900.0)],
    }
    report = tmp_path / "search.md"
    report.write_text(f"### synthetic-1000x128, selectivity 10.0%: QPS\n\n{results_table([(work, curves)])}\n")
    assert peer_qps(report) == ("hnswlib", 900.0)


def test_squash_sweep_starts_with_the_default_then_the_effort_ladder_and_the_exact_search() -> None:
    default, ladder, exact, explicit = search.squash_series(4, search.SQUASH_SWEEP, quick=False)
    assert default == [(DEFAULT, {})]
    assert [knobs for _, knobs in ladder] == [rung_knobs(r) for r in range(TOP_RUNG + 1)]
    assert exact == [("exact", {"exact": True})]
    assert [knobs for _, knobs in explicit] == list(search.SQUASH_SWEEP)
    *_, one = search.squash_series(1, search.SQUASH_SWEEP, quick=True)
    assert all("centroid_factor" not in knobs for _, knobs in one)


def test_footprint_counts_the_stored_partition_objects(tmp_path: Path) -> None:
    data = synthetic_clustered(4000, 16, n_queries=10, clusters=8, attributes=1, seed=1)
    args = argparse.Namespace(seed=0, quick=True)
    system, footprint, uri = search.build_squash("tiny", data.base, data.attributes, tmp_path / "index", args)
    stored = sum(p.stat().st_size for p in (tmp_path / "index").rglob("part-*.sqp"))
    assert stored > 0 and footprint.object_bytes == pytest.approx(stored / 4000)
    assert footprint.shape == (4000, 16) and system.bytes_per_vector == footprint.warm_bytes >= 16 * 4
    assert 0 < footprint.ranged_bytes < footprint.warm_bytes  # without the raw vectors: less held
    times = search.first_query(uri, data.queries.astype(np.float32), None)
    assert len(times) == 5 and min(times) > 0


@pytest.fixture(scope="module")
def debian() -> Dataset:
    data = shared_dataset(DEBIAN)
    assert data is not None
    return data


@has_debian
def test_debian_workloads_filter_on_the_real_metadata(debian: Dataset) -> None:
    workloads = debian_workloads(debian, 30, seed=0)
    assert [(w.selectivity, w.name) for w in workloads] == [
        (1.0, "unfiltered"),
        (0.1, "section = own (correlated)"),
        (0.1, "size x depends box"),
        (0.01, "size x depends box"),
        (0.01, "section = own & size range"),
        (0.001, "size x depends box"),
        (0.001, "section = own & size range"),
    ]
    section = debian.attributes["section"]
    own = debian.query_attributes["section"][:30]
    for work in workloads[1:]:
        masks = np.stack([evaluate(f, debian.attributes) for f in work.filters])
        if "section" in work.name:
            assert not (masks & (section[None, :] != own[:, None])).any()  # only the query's own section
        if work.name == "section = own (correlated)":
            np.testing.assert_array_equal(masks, section[None, :] == own[:, None])
        if "box" in work.name:
            assert 0.5 < masks.mean() / work.selectivity < 2, work.selectivity
        assert masks.sum(axis=1).min() >= 1 or "section" in work.name


@has_debian
def test_ground_truth_matches_the_datasets_own(debian: Dataset) -> None:
    base = debian.base.astype(np.float32)
    queries = debian.queries[:40].astype(np.float32)
    work = Workload(1.0, "unfiltered", [None] * len(queries))
    ground_truth(base, (base.astype(np.float64) ** 2).sum(axis=1).astype(np.float32), queries, {}, work)
    want = np.load(SHARED_DATA / DEBIAN / "gt_ids.npy")[:40, :K]
    assert (work.truth == want).all(axis=1).mean() >= 0.95  # near-ties at 1e-7 may swap the odd pair
    assert np.mean([len(set(a) & set(b)) / K for a, b in zip(work.truth, want, strict=True)]) > 0.999


def test_quick_sizes_apply_unless_given() -> None:
    args = search.parse(["--quick", "--queries", "7", "--dataset", "flat"])
    assert (args.queries, args.flat_n, args.repeats, args.datasets) == (7, search.QUICK["flat_n"], 1, ["flat"])
    assert search.parse([]).n == 1_000_000
    with pytest.raises(SystemExit):
        search.parse(["--dataset", "sift"])
