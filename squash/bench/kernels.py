"""``squash bench kernels``: the search core's inner loops in numpy against compiled SIMD libraries, on one thread.

Four kernels, each at D = 128, 384 and 768 (the KLT-rotated space of a partition):

- **code scan**: the term ``(q'∘step)·c`` of the 8-bit scalar-code estimate for every (query, row) pair of a
  list, as one matrix product over the queries of a batch that share the list. numpy multiplies in float32
  (codes converted per list, or held as float32/float16 for reference, or one matvec per query); the
  compiled integer kernels need an 8-bit query (``round(w / s)``, one scale per query) and signed codes
  (``c - 128``, folded into the query's constant), so they are checked against numpy on the same integers
  and their ranking quality is reported separately;
- **4-bit codes**: the same term from 4-bit codes, two per byte: faiss fast-scan style per-query lookup
  tables (nibble unpack + gather), unpack + float32 product, and numkong's 4-bit integer product;
- **re-rank**: gather rows of a float32 (n, D) partition and compute exact squared L2 distances, in float64 as
  :func:`squash.search.scan.exact_distances` does, in float32, and in the compiled libraries;
- **Hamming**: popcount of the XOR of 64-bit sign words (``np.bitwise_count``), for reference.

Every variant's output is compared with its numpy reference before it is timed (the ``max err`` tables);
a variant that disagrees beyond its tolerance is reported as such. The compiled libraries (simsimd,
numkong, usearch) are imported lazily and skipped with a note when absent. For each one installed, the
run also reports its installed size and cold import time, and wheel sizes from ``--wheels DIR``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_info, threadpool_limits

from squash.bench.common import environment_header, markdown_table
from squash.model import Metric
from squash.search.scan import exact_distances

# distribution -> the module the kernels use (usearch's exact search lives in usearch.index).
COMPILED = {"simsimd": "simsimd", "numkong": "numkong", "usearch": "usearch.index"}
DIMS = (128, 384, 768)
LIST_ROWS = (256, 512, 1024)
SHARING = (1, 8, 64)
RERANK_ROWS = (50, 200, 800, 1600)
RERANK_QUERIES = (1, 8)
# Rows of the partition a re-rank gathers from (a partition's vectors, several times the cache).
PARTITION_ROWS = 32_768
# Short list per query whose ranking quality the quantized queries are judged by, and the true top-k it must hold.
SHORT_LIST = 64
TRUE_K = 10
_BASELINE = {
    "scan": "numpy f32 GEMM, u8 astype",
    "4-bit": "numpy 8-bit GEMM (u8 astype)",
    "re-rank": "numpy f64 (exact_distances)",
    "hamming": "numpy bitwise_count",
}


@dataclass(frozen=True)
class Variant:
    """One way to compute a kernel: ``compute`` must reproduce ``reference`` within ``tolerance``.

    ``per_element`` measures the error relative to each reference value (distances, where the smallest
    matter most) instead of to the largest one (dot products, whose values cross zero).
    """

    name: str
    compute: Callable[[], NDArray]
    reference: NDArray
    tolerance: float
    per_element: bool = False


@dataclass(frozen=True)
class Timing:
    kernel: str
    case: tuple[int, ...]
    variant: str
    seconds: float  # per call, fastest round
    pairs: int  # (query, row) pairs one call scores
    error: float  # deviation from the reference (see Variant)
    tolerance: float

    @property
    def ns_per_pair(self) -> float:
        return self.seconds / self.pairs * 1e9

    @property
    def agrees(self) -> bool:
        return self.error <= self.tolerance


@dataclass
class Results:
    timings: list[Timing] = field(default_factory=list)
    quality: list[dict[str, object]] = field(default_factory=list)
    packing: list[list[object]] = field(default_factory=list)  # numkong's packed codes: load cost and size
    notes: list[str] = field(default_factory=list)


def optional(distribution: str, notes: list[str]) -> ModuleType | None:
    """The kernels' module of ``distribution``, or None with a note when it is not installed (the run goes on)."""
    try:
        return importlib.import_module(COMPILED[distribution])
    except ImportError:
        notes.append(f"{distribution} is not installed: its variants are skipped (`pip install {distribution}`)")
        return None


def limit_to_avx2(libs: dict[str, ModuleType]) -> None:
    """Turn off the compiled libraries' kernels above AVX2, as on an x86 host without AVX-512; usearch's are fixed."""
    for name in ("simsimd", "numkong"):
        if name in libs:
            for capability, enabled in libs[name].get_capabilities().items():
                if enabled and capability not in ("serial", "haswell"):
                    libs[name].disable_capability(capability)


def capabilities(libs: dict[str, ModuleType]) -> str:
    """The BLAS numpy calls and its CPU target (OPENBLAS_CORETYPE sets it), and the compiled libraries' kernels."""
    parts = [f"{i['internal_api']} {i.get('architecture', '?')}" for i in threadpool_info() if i["user_api"] == "blas"]
    for name in ("simsimd", "numkong"):
        if name in libs:
            parts.append(f"{name} kernels: " + ", ".join(c for c, on in libs[name].get_capabilities().items() if on))
    return "; ".join(parts)


def seconds_per_call(fn: Callable[[], object], budget: float) -> float:
    """Fastest of three rounds, each repeating ``fn`` for at least ``budget`` seconds."""
    fn()
    best = float("inf")
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                break
        best = min(best, elapsed / calls)
    return best


def deviation(out: NDArray, reference: NDArray, per_element: bool) -> float:
    out = np.asarray(out, dtype=np.float64).reshape(reference.shape)
    diff = np.abs(out - reference)
    if per_element:
        return float((diff / np.maximum(np.abs(reference), 1e-30)).max())
    return float(diff.max() / max(float(np.abs(reference).max()), 1e-30))


def measure(kernel: str, case: tuple[int, ...], pairs: int, variants: Iterable[Variant], budget: float) -> list[Timing]:
    out = []
    for v in variants:
        error = deviation(v.compute(), v.reference, v.per_element)
        out.append(Timing(kernel, case, v.name, seconds_per_call(v.compute, budget), pairs, error, v.tolerance))
    return out


# --- data: one list of a partition in KLT space, its codes and the queries that scan it ----------------------


@dataclass(frozen=True)
class ListData:
    vectors: NDArray[np.float32]  # (n, D) rows of the list, KLT space
    queries: NDArray[np.float32]  # (nq, D)

    def codes(self, bits: int) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float32]]:
        """Per-dimension affine scalar codes: (codes, lo, step) with x̂ = lo + step * c."""
        levels = (1 << bits) - 1
        lo = self.vectors.min(axis=0)
        step = np.maximum(self.vectors.max(axis=0) - lo, 1e-12) / levels
        codes = np.clip(np.rint((self.vectors - lo) / step), 0, levels).astype(np.uint8)
        return codes, lo.astype(np.float32), step.astype(np.float32)


def list_data(dim: int, rows: int, queries: int, seed: int) -> ListData:
    """A list of a partition: Gaussian rows with a slowly decaying spectrum (text embeddings' is flat)."""
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(dim) / 8.0) ** -0.5
    draw = rng.normal(size=(rows + queries, dim)) * scale
    return ListData(draw[:rows].astype(np.float32), draw[rows:].astype(np.float32))


def quantize_signed(w: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Each row of ``w`` as int8 and its scale: w ≈ scale * q."""
    scale = np.maximum(np.abs(w).max(axis=1), 1e-30) / 127.0
    return np.rint(w / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def quantize_unsigned4(w: NDArray[np.float32]) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float32]]:
    """Each row of ``w`` as 4-bit levels: w ≈ low + scale * q, q in 0..15."""
    low = w.min(axis=1)
    scale = np.maximum(w.max(axis=1) - low, 1e-30) / 15.0
    return np.rint((w - low[:, None]) / scale[:, None]).astype(np.uint8), low, scale


def pack_nibbles(codes: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Two 4-bit codes per byte, the even dimension in the low nibble."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: NDArray[np.uint8]) -> NDArray[np.uint8]:
    out = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.uint8)
    np.bitwise_and(packed, 15, out=out[:, 0::2])
    np.right_shift(packed, 4, out=out[:, 1::2])
    return out


def lookup_scan(packed: NDArray[np.uint8], weights: NDArray[np.float32]) -> NDArray[np.float32]:
    """faiss fast-scan's arithmetic in numpy: per query a (D, 16) table of w_d * v, then gather and sum."""
    dim = weights.shape[1]
    index = unpack_nibbles(packed).astype(np.intp) + 16 * np.arange(dim)
    tables = weights[:, :, None] * np.arange(16, dtype=np.float32)
    return np.stack([np.take(table.ravel(), index).sum(axis=1) for table in tables])


# --- the four kernels -----------------------------------------------------------------------------------------


def scan_variants(data: ListData, libs: dict[str, ModuleType]) -> list[Variant]:
    codes, _, step = data.codes(8)
    weights = (data.queries * step).astype(np.float32)
    held32 = codes.astype(np.float32)
    held16 = codes.astype(np.float16)
    reference = weights.astype(np.float64) @ held32.T.astype(np.float64)
    w8, _ = quantize_signed(weights)
    signed = (codes ^ 0x80).view(np.int8)  # c - 128
    integer_ref = w8.astype(np.float64) @ signed.T.astype(np.float64)
    tol = 1e-5

    def matvec() -> NDArray:
        block = codes.astype(np.float32)
        return np.stack([block @ w for w in weights])

    out = [
        Variant("numpy f32 GEMM, u8 astype", lambda: weights @ codes.astype(np.float32).T, reference, tol),
        Variant("numpy f32 GEMM, f32 held", lambda: weights @ held32.T, reference, tol),
        Variant("numpy f32 GEMM, f16 held", lambda: weights @ held16.astype(np.float32).T, reference, tol),
        Variant("numpy matvec per query", matvec, reference, tol),
    ]
    if "simsimd" in libs:
        ss = libs["simsimd"]
        out.append(Variant("simsimd cdist i8", lambda: ss.cdist(w8, signed, metric="dot"), integer_ref, 1e-9))
    if "numkong" in libs:
        nk = libs["numkong"]
        packed = nk.dots_pack(signed)  # once per list, when the partition loads
        out.append(Variant("numkong cdist i8", lambda: nk.cdist(w8, signed, metric="dot"), integer_ref, 1e-9))
        out.append(Variant("numkong dots_packed i8", lambda: nk.dots_packed(w8, packed), integer_ref, 1e-9))
    if "usearch" in libs:
        search, metric = libs["usearch"].search, libs["usearch"].MetricKind.IP
        k = min(SHORT_LIST, len(codes))
        top = np.sort(1.0 - integer_ref, axis=1)[:, :k]  # usearch's IP distance is 1 - dot

        def exact_top() -> NDArray:
            return np.atleast_2d(search(signed, w8, k, metric, threads=1, exact=True).distances)

        out.append(Variant(f"usearch exact top-{k} i8", exact_top, top, 1e-6))
    return out


def four_bit_variants(data: ListData, libs: dict[str, ModuleType]) -> list[Variant]:
    codes8, _, step8 = data.codes(8)
    weights8 = (data.queries * step8).astype(np.float32)
    codes4, _, step4 = data.codes(4)
    packed = pack_nibbles(codes4)
    weights = (data.queries * step4).astype(np.float32)
    reference = weights.astype(np.float64) @ codes4.T.astype(np.float64)
    tol = 1e-5
    out = [
        Variant(
            "numpy 8-bit GEMM (u8 astype)",
            lambda: weights8 @ codes8.astype(np.float32).T,
            weights8.astype(np.float64) @ codes8.T.astype(np.float64),
            tol,
        ),
        Variant("numpy 4-bit lookup tables", lambda: lookup_scan(packed, weights), reference, tol),
        Variant(
            "numpy 4-bit unpack + f32 GEMM",
            lambda: weights @ unpack_nibbles(packed).astype(np.float32).T,
            reference,
            tol,
        ),
    ]
    if "numkong" in libs:
        nk = libs["numkong"]
        levels, _, _ = quantize_unsigned4(weights)
        packed_codes = nk.dots_pack(packed, dtype="uint4")
        query_nibbles = pack_nibbles(levels)
        integer_ref = levels.astype(np.float64) @ codes4.T.astype(np.float64)
        out.append(
            Variant("numkong dots_packed u4", lambda: nk.dots_packed(query_nibbles, packed_codes), integer_ref, 1e-9)
        )
    return out


def rerank_variants(
    vectors: NDArray[np.float32], rows: NDArray[np.int64], queries: NDArray[np.float32], libs: dict[str, ModuleType]
) -> list[Variant]:
    reference = exact_distances(vectors, rows, queries, Metric.L2)
    norms = np.einsum("nd,nd->n", vectors, vectors)  # held per partition

    def f32_direct() -> NDArray:
        x = vectors[rows]
        np.subtract(x, queries[:, None, :], out=x)
        return np.einsum("qmd,qmd->qm", x, x)

    def f32_expanded() -> NDArray:
        dots = np.einsum("qmd,qd->qm", vectors[rows], queries)
        return norms[rows] - 2.0 * dots + np.einsum("qd,qd->q", queries, queries)[:, None]

    out = [
        Variant(
            "numpy f64 (exact_distances)",
            lambda: exact_distances(vectors, rows, queries, Metric.L2),
            reference,
            1e-12,
            True,
        ),
        Variant("numpy f32 direct", f32_direct, reference, 1e-5, True),
        Variant("numpy f32 norms - 2x·q", f32_expanded, reference, 1e-5, True),
    ]
    for name in ("simsimd", "numkong"):
        if name in libs:
            lib = libs[name]

            def compiled(lib: ModuleType = lib) -> NDArray:
                return np.stack(
                    [np.asarray(lib.sqeuclidean(q, vectors[r])) for q, r in zip(queries, rows, strict=True)]
                )

            out.append(Variant(f"{name} sqeuclidean f32", compiled, reference, 1e-5, True))
    return out


def hamming_variants(dim: int, rows: int, queries: int, seed: int, libs: dict[str, ModuleType]) -> list[Variant]:
    rng = np.random.default_rng(seed)
    top = np.iinfo(np.uint64).max
    words = rng.integers(0, top, size=(rows, dim // 64), dtype=np.uint64, endpoint=True)
    query_words = rng.integers(0, top, size=(queries, dim // 64), dtype=np.uint64, endpoint=True)

    def numpy_popcount() -> NDArray:
        return np.bitwise_count(query_words[:, None, :] ^ words[None]).sum(axis=2)

    reference = numpy_popcount().astype(np.float64)
    out = [Variant("numpy bitwise_count", numpy_popcount, reference, 0.0)]
    bits, query_bits = words.view(np.uint8), query_words.view(np.uint8)
    if "simsimd" in libs:
        ss = libs["simsimd"]
        out.append(
            Variant(
                "simsimd cdist hamming",
                lambda: ss.cdist(query_bits, bits, metric="hamming", dtype="bin8"),
                reference,
                0.0,
            )
        )
    if "numkong" in libs:
        nk = libs["numkong"]
        packed = nk.hammings_pack(bits)
        out.append(Variant("numkong hammings_packed", lambda: nk.hammings_packed(query_bits, packed), reference, 0.0))
    return out


def packing_row(nk: ModuleType, dim: int, rows: int, budget: float) -> list[object]:
    """What numkong's packed int8 codes cost at load (ns per row) and hold (bytes per row) against the raw codes."""
    signed = np.random.default_rng(dim).integers(-128, 128, size=(rows, dim), dtype=np.int8)
    seconds = seconds_per_call(lambda: nk.dots_pack(signed), budget)
    return [dim, rows, f"{seconds / rows * 1e9:.1f}", dim, f"{nk.dots_pack(signed).nbytes / rows:.0f}", 4 * dim]


def ranking_quality(dim: int, rows: int, queries: int, seed: int) -> list[dict[str, object]]:
    """Share of the true top-10 within each estimate's top-10/20/64: what 4-bit codes and 8/4-bit queries cost."""
    data = list_data(dim, rows, queries, seed)
    x64 = data.vectors.astype(np.float64)
    truth = np.argsort(((data.queries[:, None, :] - x64[None]) ** 2).sum(axis=2), axis=1)[:, :TRUE_K]
    out: list[dict[str, object]] = []
    for bits in (8, 4):
        codes, lo, step = data.codes(bits)
        decoded = lo + step * codes.astype(np.float64)
        base = (decoded**2).sum(axis=1) - 2.0 * (data.queries @ lo)[:, None]
        weights = (data.queries * step).astype(np.float32)
        if bits == 8:
            w8, scale = quantize_signed(weights)
            dots_q = scale[:, None] * (w8.astype(np.float64) @ codes.T.astype(np.float64))
        else:
            levels, low, scale = quantize_unsigned4(weights)
            dots_q = low[:, None] * codes.sum(axis=1) + scale[:, None] * (levels.astype(np.float64) @ codes.T)
        for query, dots in (("f32", weights.astype(np.float64) @ codes.T), (f"{bits}-bit", dots_q)):
            order = np.argsort(base - 2.0 * dots, axis=1)
            row: dict[str, object] = {"D": dim, "rows": rows, "codes": f"{bits}-bit", "query": query}
            for depth in (TRUE_K, 2 * TRUE_K, SHORT_LIST):
                hits = sum(len(set(t) & set(s)) for t, s in zip(truth, order[:, :depth], strict=True))
                row[f"in top-{depth}"] = hits / truth.size
            out.append(row)
    return out


# --- dependency facts -----------------------------------------------------------------------------------------


def installed_bytes(distribution: str) -> int:
    """Bytes of every file the distribution installed (its RECORD: package dirs, .libs, .so, dist-info)."""
    files = metadata.distribution(distribution).files or []
    return sum(path.stat().st_size for path in (f.locate() for f in files) if path.is_file())


def import_seconds(module: str, after: str = "", tries: int = 5) -> float:
    """Cold import time of ``module`` in a fresh interpreter (``-X importtime``, cumulative), fastest of ``tries``.

    ``after`` is imported first, so what it brings (numpy, already loaded by every processor) is not counted.
    """
    best = float("inf")
    code = f"import {after}; import {module}" if after else f"import {module}"
    for _ in range(tries):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
        )
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() == module:
                best = min(best, int(parts[1].strip()) / 1e6)
    return best


def wheel_sizes(distribution: str, wheels: Path | None) -> str:
    """Each wheel of ``distribution`` in ``wheels``: its size and what it unzips to in a layer."""
    if wheels is None:
        return "n/a (--wheels)"
    stem = re.sub(r"[-_.]+", "_", distribution).lower()
    found = sorted(p for p in wheels.glob("*.whl") if re.sub(r"[-_.]+", "_", p.name).lower().startswith(stem + "_"))
    if not found:
        return "no wheel in --wheels"
    cells = []
    for path in found:
        with zipfile.ZipFile(path) as wheel:
            unzipped = sum(info.file_size for info in wheel.infolist())
        cells.append(f"{_platform_tag(path.name)}: {path.stat().st_size / 1e6:.1f} MB -> {unzipped / 1e6:.1f} MB")
    return "; ".join(cells)


def _platform_tag(name: str) -> str:
    parts = name[: -len(".whl")].split("-")
    arch = "aarch64" if "aarch64" in parts[-1] else "x86_64" if "x86_64" in parts[-1] else parts[-1]
    return f"{parts[-3]} {arch}"


def dependency_rows(libs: dict[str, ModuleType], wheels: Path | None) -> list[list[object]]:
    rows = []
    for name in ("numpy", *COMPILED):
        if name != "numpy" and name not in libs:
            continue
        requires = [re.split(r"[\s;<>=!~\[(]", r)[0] for r in metadata.requires(name) or [] if "extra ==" not in r]
        rows.append(
            [
                name,
                metadata.version(name),
                wheel_sizes(name, wheels),
                f"{installed_bytes(name) / 1e6:.1f}",
                f"{import_seconds(COMPILED.get(name, name)) * 1e3:.1f}",
                "-" if name == "numpy" else f"{import_seconds(COMPILED[name], after='numpy') * 1e3:.1f}",
                ", ".join(requires) or "-",
            ]
        )
    return rows


# --- report ---------------------------------------------------------------------------------------------------


def kernel_table(timings: list[Timing], kernel: str, case_headers: list[str]) -> str:
    """One row per case: ns per (query, row) pair of each variant, and its speedup over the numpy baseline."""
    chosen = [t for t in timings if t.kernel == kernel]
    variants = list(dict.fromkeys(t.variant for t in chosen))
    by_case: dict[tuple[int, ...], dict[str, Timing]] = {}
    for t in chosen:
        by_case.setdefault(t.case, {})[t.variant] = t
    rows = []
    for case, found in by_case.items():
        base = found[_BASELINE[kernel]].seconds
        cells = [
            f"{found[v].ns_per_pair:.2f} ({base / found[v].seconds:.1f}x)" if v in found else "-" for v in variants
        ]
        rows.append([*case, *cells])
    return markdown_table([*case_headers, *variants], rows)


def agreement_table(timings: list[Timing]) -> str:
    worst: dict[tuple[str, str], Timing] = {}
    for t in timings:
        key = (t.kernel, t.variant)
        if key not in worst or t.error > worst[key].error:
            worst[key] = t
    rows = [[k, v, f"{t.error:.2g}", f"{t.tolerance:.2g}", "yes" if t.agrees else "NO"] for (k, v), t in worst.items()]
    return markdown_table(["kernel", "variant", "max err", "tolerance", "agrees"], rows)


def report(results: Results, deps: list[list[object]], header: str, command: str) -> str:
    byte_rows = [[d, d, d // 2, d // 8] for d in sorted({t.case[0] for t in results.timings if t.kernel == "scan"})]
    parts = [
        "# squash bench kernels",
        f"```\n{header}\n```",
        f"Command: `{command}`. One thread (threadpoolctl). Cells: ns per (query, row) pair, fastest of 3 rounds, "
        "and the speedup over the first numpy column. Compiled integer kernels take an int8 query and c - 128 codes.",
        "## (a) code scan: (q'∘step)·c for every pair of a list\n\n"
        + kernel_table(results.timings, "scan", ["D", "rows", "queries"]),
        "numkong packs codes once, when a partition loads:\n\n"
        + markdown_table(
            ["D", "rows", "dots_pack ns/row", "i8 code B/row", "packed B/row", "f32 B/row"], results.packing
        )
        if results.packing
        else "",
        "## (b) 4-bit codes\n\n" + kernel_table(results.timings, "4-bit", ["D", "rows", "queries"]),
        "Bytes per row:\n\n" + markdown_table(["D", "8-bit codes", "4-bit codes", "sign bits"], byte_rows),
        f"Ranking quality of 8- and 4-bit codes and queries: share of the true top-{TRUE_K} in the estimate's "
        f"top-m (a synthetic Gaussian list of the largest size, 200 independent queries):\n\n"
        + markdown_table(list(results.quality[0]), [list(r.values()) for r in results.quality])
        if results.quality
        else "",
        f"## (c) gather + exact re-rank from {PARTITION_ROWS:,} x D float32\n\n"
        + kernel_table(results.timings, "re-rank", ["D", "queries", "rows/query"]),
        "## (d) Hamming on 64-bit sign words\n\n" + kernel_table(results.timings, "hamming", ["D", "rows", "queries"]),
        "## Agreement with the numpy reference (worst case over all sizes)\n\n" + agreement_table(results.timings),
        "## Dependencies\n\n"
        + markdown_table(
            [
                "package",
                "version",
                "wheel: zipped -> unzipped",
                "installed MB",
                "cold import ms",
                "after numpy ms",
                "requires",
            ],
            deps,
        ),
        "\n".join(f"- {note}" for note in results.notes),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def bench(
    dims: Iterable[int],
    list_rows: Iterable[int],
    sharing: Iterable[int],
    rerank_rows: Iterable[int],
    budget: float,
    libs: dict[str, ModuleType],
    partition_rows: int = PARTITION_ROWS,
) -> Results:
    results = Results()
    list_rows, sharing, rerank_rows = list(list_rows), list(sharing), list(rerank_rows)
    popcount = hasattr(np, "bitwise_count")
    if not popcount:
        results.notes.append(f"numpy {np.__version__} has no bitwise_count (numpy >= 2.0): Hamming is skipped")
    with threadpool_limits(1):
        for dim in dims:
            for rows in list_rows:
                for queries in sharing:
                    data = list_data(dim, rows, queries, seed=dim + rows + queries)
                    case, pairs = (dim, rows, queries), rows * queries
                    results.timings += measure("scan", case, pairs, scan_variants(data, libs), budget)
                    results.timings += measure("4-bit", case, pairs, four_bit_variants(data, libs), budget)
                    if popcount:
                        hamming = hamming_variants(dim, rows, queries, dim + rows, libs)
                        results.timings += measure("hamming", case, pairs, hamming, budget)
                if "numkong" in libs:
                    results.packing.append(packing_row(libs["numkong"], dim, rows, budget))
            results.quality += ranking_quality(dim, max(list_rows), 200, seed=dim)
            rng = np.random.default_rng(dim)
            vectors = rng.normal(size=(partition_rows, dim)).astype(np.float32)
            for queries in RERANK_QUERIES:
                qs = rng.normal(size=(queries, dim)).astype(np.float32)
                for m in rerank_rows:
                    picked = rng.integers(0, partition_rows, size=(queries, m))
                    variants = rerank_variants(vectors, picked, qs, libs)
                    results.timings += measure("re-rank", (dim, queries, m), queries * m, variants, budget)
    return results


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squash bench kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--rows", type=int, nargs="+", default=list(LIST_ROWS), help="rows per list")
    parser.add_argument("--sharing", type=int, nargs="+", default=list(SHARING), help="queries sharing a list")
    parser.add_argument("--rerank-rows", type=int, nargs="+", default=list(RERANK_ROWS))
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per timing round")
    parser.add_argument("--wheels", type=Path, help="folder of downloaded wheels to report sizes of (pip download)")
    parser.add_argument("--avx2-only", action="store_true", help="disable simsimd/numkong kernels above AVX2")
    parser.add_argument("--out", type=Path, default=Path("bench-results/kernels"))
    args = parser.parse_args(argv)
    if any(d % 64 for d in args.dims):
        parser.error("--dims must be multiples of 64 (sign words)")
    notes: list[str] = []
    libs = {name: lib for name in COMPILED if (lib := optional(name, notes)) is not None}
    if args.avx2_only:
        limit_to_avx2(libs)
    params = {k: v for k, v in vars(args).items() if k not in ("out", "wheels")}
    versions = ", ".join(f"{n} {metadata.version(n)}" for n in libs)
    header = "\n".join(filter(None, [environment_header(params), versions, capabilities(libs)]))
    results = bench(args.dims, args.rows, args.sharing, args.rerank_rows, args.budget, libs)
    results.notes = notes + results.notes
    command = "squash bench kernels " + " ".join(argv if argv is not None else sys.argv[3:])
    text = report(results, dependency_rows(libs, args.wheels), header, command.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.md").write_text(text)
    print(text)
    print(f"written: {args.out / 'kernels.md'}")
    return 0 if all(t.agrees for t in results.timings) else 1
