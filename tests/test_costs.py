"""The cost model's arithmetic and price overrides."""

from __future__ import annotations

import json

import pytest

from squash.costs import ITEMS, Prices, estimate, load_prices, metrics_from_info
from squash.errors import InvalidInputError


def _processor(billed_ms: float = 100, **extra: float) -> dict[str, object]:
    return {"role": "processor", "invocations": 1, "billed_ms": billed_ms, "memory_mb": 2048, **extra}


def test_worked_example_from_the_design() -> None:
    cost = estimate({"squash-processor-0": _processor()}, Prices(), queries=50)
    # 2 GB x 0.1 s x $0.0000166667 + $0.2e-6 per request + 1,050 bytes of logs x $0.50 per GB
    assert cost.total == pytest.approx(2 * 0.1 * 0.0000166667 + 0.2e-6 + 1050e-9 * 0.5)
    assert cost.total == pytest.approx(4.0e-6, rel=0.02)
    assert cost.per_query == pytest.approx(8e-8, rel=0.02)
    assert cost.per_million == pytest.approx(cost.per_query * 1e6)


def test_breakdown_sums_to_the_total() -> None:
    metrics = {
        "squash-coordinator": {"role": "coordinator", "invocations": 1, "billed_ms": 30, "memory_mb": 1024, "lists": 1},
        "squash-allocator": {"role": "allocator", "invocations": 4, "billed_ms": 80, "memory_mb": 1024, "gets": 2},
        "squash-processor-0": _processor(cold=1, gets=7),
    }
    cost = estimate(metrics, Prices(init_ms_per_cold_start=150), queries=10)
    assert sum(cost.item(i) for i in ITEMS) == pytest.approx(cost.total)
    assert sum(cost.role(r) for r in ("coordinator", "allocator", "processor")) == pytest.approx(cost.total)
    assert cost.item("init") == pytest.approx(2 * 0.15 * 0.0000166667)
    assert cost.item("gets") == pytest.approx(9 * 0.0004 / 1000)
    assert cost.item("lists") == pytest.approx(0.005 / 1000)


def test_log_ingestion_is_priced_per_invocation() -> None:
    metrics = {"squash-allocator": {"role": "allocator", "invocations": 4, "billed_ms": 80, "memory_mb": 1024}}
    metrics["squash-processor-0"] = _processor(invocations=6)
    cost = estimate(metrics, Prices(log_bytes_per_invocation=2000, cloudwatch_logs_per_gb=0.5), queries=1)
    assert cost.item("logs") == pytest.approx(10 * 2000e-9 * 0.5)
    assert cost.role("allocator") == pytest.approx(cost.functions["squash-allocator"]["compute"] + 4 * (0.2e-6 + 1e-6))
    quiet = estimate(metrics, Prices(log_bytes_per_invocation=0), queries=1)
    assert cost.total - quiet.total == pytest.approx(cost.item("logs"))


def test_price_override_from_json(tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"architecture": "arm64", "lambda_request": 0, "ec2_hourly": [["m7g.large", 0.08, 2]]}))
    prices = load_prices(path)
    assert prices.gb_second == 0.0000133334 and prices.ec2_hourly == (("m7g.large", 0.08, 2),)
    cost = estimate({"p": _processor()}, prices, queries=50)
    assert cost.total == pytest.approx(2 * 0.1 * 0.0000133334 + cost.item("logs"))


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "JSON object"),
        ('{"lambda_gb_seconds": 1}', "unknown key"),
        ('{"s3_get": -1}', "s3_get"),
        ('{"s3_get": "cheap"}', "s3_get"),
        ('{"architecture": "risc-v"}', "architecture"),
    ],
)
def test_bad_price_file_is_a_clear_error(tmp_path, text: str, words: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=words):
        load_prices(path)


def test_missing_file_and_unpriceable_metrics(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_prices(tmp_path / "absent.json")
    with pytest.raises(InvalidInputError, match="billed_ms"):
        estimate({"p": {"role": "processor", "invocations": 1}}, Prices(), queries=1)


def test_metrics_from_client_info() -> None:
    info = {"seconds": 1.0, "function.squash-allocator.billed_ms": 5, "function.squash-processor-3.billed_ms": 7}
    metrics = metrics_from_info(info)
    assert metrics == {
        "squash-allocator": {"role": "allocator", "billed_ms": 5},
        "squash-processor-3": {"role": "processor", "billed_ms": 7},
    }


def test_update_readme_rewrites_only_the_marked_part_and_publishes_plots(tmp_path):
    from squash.bench.cost import END, START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\nkept above\n{START}\nold numbers\n{END}\nkept below\n")
    search, cost, docs = tmp_path / "search", tmp_path / "cost", tmp_path / "docs" / "perf"
    search.mkdir()
    cost.mkdir()
    (search / "search.md").write_text("# full search report\n")
    (search / "summary.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\nfull report: search.md\n")
    (search / "s-1pct.png").write_bytes(b"png")
    (cost / "synthetic-allocators.png").write_bytes(b"png")
    update_readme("## synthetic\n![plot](synthetic-allocators.png)\n", search, cost, readme=readme, docs=docs)
    text = readme.read_text()
    assert text.startswith("# Title\nkept above\n") and text.endswith(f"{END}\nkept below\n")
    assert "old numbers" not in text and "| 1 | 2 |" in text
    assert "[docs/perf/search.md](docs/perf/search.md)" in text
    assert "#### synthetic" in text and "](docs/perf/synthetic-allocators.png)" in text
    assert sorted(p.name for p in docs.iterdir()) == ["cost.md", "s-1pct.png", "search.md", "synthetic-allocators.png"]
    update_readme("## again\n", search, cost, readme=readme, docs=docs)
    assert readme.read_text().count(START) == 1 and "#### again" in readme.read_text()
