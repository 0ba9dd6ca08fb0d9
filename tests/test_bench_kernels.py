"""``squash bench kernels`` at a tiny size, so it cannot rot: every variant computes what its numpy reference does."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from squash.bench import kernels

NUMPY_VARIANTS = {
    "scan": {
        "numpy f32 GEMM, u8 astype",
        "numpy f32 GEMM, f32 held",
        "numpy f32 GEMM, f16 held",
        "numpy matvec per query",
    },
    "4-bit": {"numpy 8-bit GEMM (u8 astype)", "numpy 4-bit lookup tables", "numpy 4-bit unpack + f32 GEMM"},
    "re-rank": {"numpy f64 (exact_distances)", "numpy f32 direct", "numpy f32 norms - 2x·q"},
    "hamming": {"numpy bitwise_count"},
}


@pytest.fixture(scope="module")
def installed() -> dict:
    notes: list[str] = []
    return {name: lib for name in kernels.COMPILED if (lib := kernels.optional(name, notes)) is not None}


@pytest.fixture(scope="module")
def results(installed: dict) -> kernels.Results:
    return kernels.bench((64, 128), (64,), (1, 5), (10, 70), 1e-4, installed, partition_rows=500)


def test_every_variant_agrees_with_its_numpy_reference(results: kernels.Results, installed: dict) -> None:
    disagreeing = [(t.kernel, t.case, t.variant, t.error) for t in results.timings if not t.agrees]
    assert not disagreeing
    for kernel, expected in NUMPY_VARIANTS.items():
        measured = {t.variant for t in results.timings if t.kernel == kernel}
        assert expected <= measured, kernel
        compiled = {v.split()[0] for v in measured - expected}
        assert compiled <= set(installed), kernel  # a compiled variant only runs when its library is there
    if "numkong" in installed:  # it has a kernel for each of the four
        assert all(
            len({t.variant for t in results.timings if t.kernel == k}) > len(v) for k, v in NUMPY_VARIANTS.items()
        )
    assert all(t.seconds > 0 and t.pairs > 0 for t in results.timings)


def test_a_kernel_that_computes_something_else_is_caught() -> None:
    reference = np.arange(1.0, 13.0).reshape(3, 4)
    near = kernels.Variant("near", lambda: reference * (1 + 1e-7), reference, 1e-5)
    off = kernels.Variant("off", lambda: reference + 1e-3, reference, 1e-5, per_element=True)
    swapped = kernels.Variant("swapped", lambda: reference[::-1], reference, 1e-5)
    timings = kernels.measure("scan", (4, 3, 1), 12, [near, off, swapped], 1e-4)
    assert [t.agrees for t in timings] == [True, False, False]


def test_ranking_quality_is_a_share_per_estimate(results: kernels.Results, installed: dict) -> None:
    kinds = [("8-bit", "f32"), ("8-bit", "8-bit"), ("4-bit", "f32"), ("4-bit", "4-bit")]
    assert [(r["D"], r["rows"], r["codes"], r["query"]) for r in results.quality] == [
        (d, 64, *kind) for d in (64, 128) for kind in kinds
    ]
    for row in results.quality:
        shares = [row["in top-10"], row["in top-20"], row["in top-64"]]
        assert 0.0 <= shares[0] <= shares[1] <= shares[2] == 1.0  # the top-64 of 64 rows holds everything
    assert [row[:2] for row in results.packing] == ([[64, 64], [128, 64]] if "numkong" in installed else [])


def test_run_without_the_compiled_libraries_notes_them_and_writes_every_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in kernels.COMPILED.values():
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    args = ["--dims", "64", "--rows", "64", "--sharing", "2", "--rerank-rows", "10", "--budget", "0.0001"]
    assert kernels.run([*args, "--out", str(tmp_path)]) == 0
    text = (tmp_path / "kernels.md").read_text()
    assert text in capsys.readouterr().out
    for name in kernels.COMPILED:
        assert f"{name} is not installed: its variants are skipped" in text
    for variants in NUMPY_VARIANTS.values():
        assert all(v in text for v in variants)
    assert "| 64 | 64 | 2 | " in text and "| 64 | 8 | 10 | " in text  # a scan row and a re-rank row
    assert "| numpy | " in text and "| simsimd | " not in text


def test_avx2_only_leaves_the_compiled_libraries_haswell_kernels(installed: dict) -> None:
    libs = {name: installed[name] for name in ("simsimd", "numkong") if name in installed}
    if not libs:
        pytest.skip("neither simsimd nor numkong is installed")
    before = {name: lib.get_capabilities() for name, lib in libs.items()}
    try:
        kernels.limit_to_avx2(libs)
        for name, lib in libs.items():
            enabled = {c for c, on in lib.get_capabilities().items() if on}
            assert enabled == {"serial", "haswell"} & {c for c, on in before[name].items() if on}
            assert f"{name} kernels: " in kernels.capabilities(libs)
    finally:
        for name, lib in libs.items():
            for capability, on in before[name].items():
                if on and capability != "serial":  # serial cannot be switched
                    lib.enable_capability(capability)


def test_numpy_without_bitwise_count_skips_hamming_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(np, "bitwise_count")  # numpy < 2.0, which the project still allows
    results = kernels.bench((64,), (64,), (2,), (10,), 1e-4, {}, partition_rows=200)
    assert {t.kernel for t in results.timings} == {"scan", "4-bit", "re-rank"}
    assert any("no bitwise_count" in note for note in results.notes)
    assert "## (d) Hamming" in kernels.report(results, [], "header", "command")
