"""fastcompare: one pass over the current data against the stored baseline. Exact where the baseline is
exact, within the baseline sketch's bound of the exact KS otherwise, chunking-invariant, and the same
verdicts and schema violations as the sketch-to-sketch path on the benchmark's data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.drift.compare import SchemaViolation, compare_frame, profile_current, schema_violations
from kanari.drift.fastcompare import CurrentBins, compare_chunks, compare_file, compare_frame_fast
from kanari.drift.model_monitor import baseline_documents, parse_baseline
from scipy.stats import ks_2samp

from bench.drift.run import make_data, shifted_features


def baseline_of(df: pd.DataFrame, target: str | None = None):  # type: ignore[no-untyped-def]
    # These tests check the raw L-infinity statistic: comparison_method Simple (Robust subtracts the KS allowance).
    statistics, constraints = baseline_documents(df, target=target)
    constraints["monitoring_config"]["distribution_constraints"]["comparison_method"] = "Simple"
    return parse_baseline(statistics, constraints)


@pytest.mark.parametrize("method", [None, "psi", "js", "wasserstein"])
def test_same_verdicts_as_the_sketch_path_on_the_benchmark_data(method: str | None) -> None:
    cols = [f"f{j}" for j in range(30)]
    ref = pd.DataFrame(make_data(50_000, 30, 11, shift=False), columns=cols)
    cur = pd.DataFrame(make_data(50_000, 30, 12, shift=True), columns=cols)
    baseline = baseline_of(ref)
    old = compare_frame(baseline, cur, method=method, current=profile_current(baseline, cur))
    new = compare_frame_fast(baseline, cur, method=method)
    assert new.drifted_features == old.drifted_features
    assert sorted(int(f[1:]) for f in new.drifted_features) == shifted_features(30)
    for a, b in zip(old.features, new.features, strict=True):
        assert a.feature == b.feature and a.method == b.method
        assert a.current_count == b.current_count and a.baseline_count == b.baseline_count


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
value = st.one_of(finite, st.sampled_from([0.0, 1.0, 1.0, 2.0, np.nan, np.inf, -np.inf]))
# A baseline refuses infinities (they cannot be stored in statistics.json); current data may carry them.
base_value = st.one_of(finite, st.sampled_from([0.0, 1.0, 1.0, 2.0, np.nan]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.lists(base_value, min_size=1, max_size=300), cur=st.lists(value, min_size=1, max_size=600))
def test_ks_is_exact_against_an_uncompacted_baseline(base: list[float], cur: list[float]) -> None:
    """Below k rows the baseline sketch holds every value, so the fast KS must be the exact two-sample KS
    (ties, NaN as missing, infinities included)."""
    baseline = baseline_of(pd.DataFrame({"x": np.array(base, dtype=float)}))
    report = compare_frame_fast(baseline, pd.DataFrame({"x": np.array(cur, dtype=float)}))
    a, b = np.array(base), np.array(cur)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    (f,) = report.features
    if not len(a) or not len(b):
        assert f.value is None
        return
    assert f.value is not None
    assert f.value == pytest.approx(ks_2samp(a, b).statistic, abs=2e-6)
    assert f.current_count == len(b)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(shift=st.floats(0.0, 0.5), rows=st.integers(5_000, 60_000), seed=st.integers(0, 2**31))
def test_ks_within_the_baseline_sketch_bound_of_exact(shift: float, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame({"a": rng.normal(size=rows), "b": np.round(rng.exponential(size=rows) * 4)})
    cur = pd.DataFrame({"a": rng.normal(shift, 1.0, size=rows // 3), "b": np.round(rng.exponential(1 + shift, rows // 3) * 4)})
    baseline = baseline_of(ref)
    report = compare_frame_fast(baseline, cur)
    bound = baseline.profile.sketch.rank_error
    for f in report.features:
        exact = ks_2samp(ref[f.feature], cur[f.feature]).statistic
        assert f.value is not None and abs(f.value - exact) <= bound + 1e-6


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, 3000), max_size=8), method=st.sampled_from([None, "psi", "js", "wasserstein", "chi2"]))
def test_chunking_does_not_change_the_report(cuts: list[int], method: str | None) -> None:
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"n": rng.normal(size=4000), "i": rng.integers(0, 9, 4000), "c": rng.choice(list("abcd"), 4000)})
    cur = pd.DataFrame({"n": rng.normal(0.3, 1, 3000), "i": rng.integers(0, 12, 3000), "c": rng.choice(list("abcde"), 3000)})
    cur.loc[::7, "n"] = np.nan
    baseline = baseline_of(ref)
    whole = compare_frame_fast(baseline, cur, method)
    bounds = sorted({0, len(cur), *cuts})
    chunked = compare_chunks(baseline, list(cur.columns), (cur.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)), method)
    assert chunked.to_dict() == whole.to_dict()


def schema_case() -> tuple:  # type: ignore[type-arg]
    rng = np.random.default_rng(5)
    ref = pd.DataFrame(
        {"n": rng.normal(size=500), "i": rng.integers(0, 5, 500), "c": rng.choice(["x", "y"], 500), "gone": 1.0, "y": rng.integers(0, 2, 500)}
    )
    baseline = baseline_of(ref, target="y")
    cur = pd.DataFrame(
        {
            "n": ["1.5", "oops", None, "2", "bad"] * 40,
            "i": [0.5, 1.0, 2.0, np.nan, 3.0] * 40,
            "c": ["x", "z", None, "w", "y"] * 40,
            "extra": 1,
        }
    )
    return baseline, cur


def test_schema_violations_name_what_is_wrong() -> None:
    """One schema check (compare.SchemaCheck) serves the DataFrame check and the fast path: what a user reads."""
    baseline, cur = schema_case()
    expected = [
        SchemaViolation("missing_column", "gone", "in the baseline, not in the data"),
        SchemaViolation("extra_column", "extra", "in the data, not in the baseline"),
        SchemaViolation("type_mismatch", "n", "80 non-numeric values in a Fractional feature: 'oops', 'bad'"),
        SchemaViolation("completeness", "n", "0.8000 of values present, the baseline requires 1.0000"),
        SchemaViolation("type_mismatch", "i", "fractional values in an Integral feature"),
        SchemaViolation("completeness", "i", "0.8000 of values present, the baseline requires 1.0000"),
        SchemaViolation("unseen_category", "c", "80 values outside the baseline's domain: 'z', 'w'"),
        SchemaViolation("completeness", "c", "0.8000 of values present, the baseline requires 1.0000"),
    ]
    assert schema_violations(baseline, cur) == expected
    assert compare_frame_fast(baseline, cur).violations == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, 200), max_size=6))
def test_schema_violations_do_not_depend_on_the_chunking(cuts: list[int]) -> None:
    """Counts add up and examples keep their first-seen order however the stream is cut."""
    baseline, cur = schema_case()
    bounds = sorted({0, len(cur), *cuts})
    chunks = (cur.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    assert compare_chunks(baseline, list(cur.columns), chunks).violations == schema_violations(baseline, cur)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".tsv"])
def test_compare_file_reads_only_the_baseline_columns_and_matches_the_frame(tmp_path, suffix: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(9)
    ref = pd.DataFrame({"n": rng.normal(size=3000), "i": rng.integers(0, 5, 3000), "c": rng.choice(["x", "y", "z"], 3000)})
    cur = pd.DataFrame({"n": rng.normal(0.5, 1, 2000), "i": rng.integers(0, 6, 2000), "c": rng.choice(["x", "y"], 2000)})
    cur["unused"] = "text"
    cur["i"] = cur["i"].astype(float)
    cur.loc[::50, "i"] = np.nan
    cur.loc[7, "i"] = 2.5  # fractional values in an Integral feature: a type mismatch, from Arrow or pandas alike
    baseline = baseline_of(ref)
    path = tmp_path / f"current{suffix}"
    if suffix == ".parquet":
        cur.to_parquet(path)
    else:
        cur.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    from_file = compare_file(baseline, path)
    assert from_file.to_dict() == compare_frame_fast(baseline, cur).to_dict()
    assert "n" in from_file.drifted_features
    assert ("type_mismatch", "i") in {(v.kind, v.feature) for v in from_file.violations}


MEMORY_PROBE = """
import json, sys
import numpy as np, pandas as pd, pyarrow.parquet
from kanari.drift.fastcompare import compare_file, compare_frame_fast
from kanari.drift.model_monitor import read_baseline
baseline = read_baseline(sys.argv[1])
names = [f.name for f in baseline.profile.features]
compare_frame_fast(baseline, pd.DataFrame(np.zeros((10, len(names))), columns=names))  # load the kernel first
def rss(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) * 1024
before = rss("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
report = compare_file(baseline, sys.argv[2], chunk_values=1_000_000)
print(json.dumps({"peak_over_start": rss("VmHWM:") - before, "drifted": report.drifted_features, "rows": report.current_rows}))
"""


def test_a_file_larger_than_the_memory_it_is_compared_in(tmp_path: Path) -> None:
    """Scaled-down version of the 1M x 500 benchmark: a 400k x 100 Parquet file (320 MB of values) is
    compared in under half that, because it is read in chunks of ~1M values (what stays is a fixed
    ~100 MB of Arrow and allocator arenas, whatever the file's size)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from kanari.drift.model_monitor import write_baseline

    features = 100
    cols = [f"f{j}" for j in range(features)]
    write_baseline(pd.DataFrame(make_data(20_000, features, 1, shift=False), columns=cols), tmp_path / "base")
    path = tmp_path / "current.parquet"
    with pq.ParquetWriter(path, pa.schema([(c, pa.float64()) for c in cols])) as writer:
        for part in range(20):  # written in parts too, so the test itself stays small
            chunk = pd.DataFrame(make_data(20_000, features, 100 + part, shift=True), columns=cols)
            writer.write_table(pa.Table.from_pandas(chunk, preserve_index=False), row_group_size=10_000)
    raw = 400_000 * features * 8
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "base"), str(path)], capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["rows"] == 400_000
    assert sorted(int(f[1:]) for f in result["drifted"]) == shifted_features(features)
    assert result["peak_over_start"] < raw / 2, result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.lists(base_value, min_size=0, max_size=1500),
    cur=st.lists(st.one_of(value, st.sampled_from([1.0, 2.0, -0.0])), min_size=0, max_size=2500),
    cuts=st.lists(st.integers(0, 2500), max_size=4),
)
def test_sorting_bins_exactly_as_the_kernel(base: list[float], cur: list[float], cuts: list[int]) -> None:
    """compare_file bins small files by sorting (no numba to load): the same cell counts and missing counts as the
    kernel whatever the values (ties with the edges, NaN, ±inf, a baseline without values, compacted or not),
    per-cell sums of finite values to rounding."""
    rng = np.random.default_rng(len(base) * 7919 + len(cur))
    ref = pd.DataFrame({"x": np.array(base, dtype=float), "y": rng.normal(size=len(base))})
    baseline = baseline_of(ref) if len(ref) else baseline_of(pd.DataFrame({"x": [np.nan], "y": [0.0]}))
    current = pd.DataFrame({"x": np.array(cur, dtype=float), "y": rng.standard_t(2, size=len(cur))})
    bounds = sorted({0, len(current), *(c for c in cuts if c < len(current))})
    bins = {}
    for sorting in (False, True):
        b = CurrentBins(baseline, ["x", "y"], "wasserstein", by_sorting=sorting)
        for a, z in zip(bounds[:-1], bounds[1:], strict=True):
            b.add_frame(current.iloc[a:z])
        bins[sorting] = b
    kernel, sorted_ = bins[False], bins[True]
    np.testing.assert_array_equal(sorted_.counts, kernel.counts)
    np.testing.assert_array_equal(sorted_.nans, kernel.nans)
    np.testing.assert_allclose(sorted_.sums, kernel.sums, rtol=1e-9, atol=1e-6)
    assert sorted_.schema.present == kernel.schema.present
