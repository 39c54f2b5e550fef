"""`kanari drift baseline` on a Parquet file streams Arrow batches into the profile (kanari.drift.file_baseline):
the same baseline as the DataFrame path (types, counts, categories and constraints exact, moments to rounding,
CDFs within the sketch's stated bound), without pandas for numeric data; the compare CLI's start-up is cut the
same way, and its compiled kernel is cached wherever the filesystem allows, never failing where it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.drift.file_baseline import profile_parquet
from kanari.drift.model_monitor import baseline_documents, parse_baseline, read_baseline
from kanari.drift.profile import Profile
from kanari.drift.sketch import KllSketch, sort_rows

ROOT = Path(__file__).resolve().parents[2]


def training_frame(rows: int = 40_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows),
            "income": rng.lognormal(10, 1, rows),
            "score": np.round(rng.normal(50, 10, rows)),  # whole floats: Integral
            "visits": pd.array(rng.integers(0, 9, rows), dtype="Int64"),  # integers with gaps: Integral
            "empty": np.full(rows, np.nan),  # no values at all: Fractional, as pandas' rule says
            "delta": rng.normal(0, 1, rows).astype(np.float32),
            "city": rng.choice(["lisbon", "porto", "faro"], rows),
            "member": rng.random(rows) < 0.3,
            "label": rng.integers(0, 2, rows),
        }
    )
    df.loc[rng.random(rows) < 0.05, "income"] = np.nan
    df.loc[rng.random(rows) < 0.05, "visits"] = pd.NA
    df.loc[rng.random(rows) < 0.02, "city"] = None
    return df


def kanari(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kanari.cli.main", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


def test_parquet_baseline_is_the_dataframe_baseline(tmp_path: Path) -> None:
    df = training_frame()
    path = tmp_path / "train.parquet"
    df.set_axis(pd.Index([f"r{i}" for i in range(len(df))], name="row")).to_parquet(path, row_group_size=7_000)
    proc = kanari("drift", "baseline", "--data", str(path), "--out", str(tmp_path / "b"), "--target", "label")
    assert proc.returncode == 0, proc.stderr
    assert "(40000 rows, 9 columns)" in proc.stdout
    stats = json.loads((tmp_path / "b" / "statistics.json").read_text())
    cons = json.loads((tmp_path / "b" / "constraints.json").read_text())
    # The DataFrame path as the pipeline step runs it (pandas' reading of the same file: the index is no feature).
    local_stats, local_cons = baseline_documents(pd.read_parquet(path), target="label")
    assert cons == local_cons
    assert stats["dataset"] == local_stats["dataset"] and stats["kanari"] == {"target": "label"}
    assert [(f["name"], f["inferred_type"]) for f in stats["features"]] == [
        ("age", "Integral"), ("income", "Fractional"), ("score", "Integral"), ("visits", "Integral"),
        ("empty", "Fractional"), ("delta", "Fractional"), ("city", "String"), ("member", "String"), ("label", "Integral"),
    ]
    for new, old in zip(stats["features"], local_stats["features"], strict=True):
        if "string_statistics" in old:
            assert new["string_statistics"] == old["string_statistics"]
            continue
        a, b = new["numerical_statistics"], old["numerical_statistics"]
        assert a["common"] == b["common"]
        for key in ("mean", "sum", "std_dev", "min", "max"):
            assert a[key] == (None if b[key] is None else pytest.approx(b[key], rel=1e-9, abs=1e-9))
    new_p = parse_baseline(stats, cons).profile
    old_p = parse_baseline(local_stats, local_cons).profile
    values = df[[f.name for f in old_p.numeric_features]].to_numpy(dtype=float, na_value=np.nan)
    probes = np.nanquantile(np.where(np.isnan(values).all(axis=0), 0.0, values), np.linspace(0, 1, 101), axis=0)
    gap = np.abs(new_p.sketch.cdf(probes) - old_p.sketch.cdf(probes))
    assert np.nanmax(gap) <= new_p.sketch.rank_error + old_p.sketch.rank_error


def test_infinities_are_refused_naming_columns_and_rows_across_chunks(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": np.arange(50_000, dtype=float), "b": np.ones(50_000)})
    df.loc[[3, 45_000, 45_001, 49_999], "a"] = np.inf
    df.to_parquet(tmp_path / "t.parquet", row_group_size=10_000)
    proc = kanari("drift", "baseline", "--data", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'a': 4 infinite values (rows 3, 45000, 45001, ...)" in proc.stderr
    assert not (tmp_path / "o" / "statistics.json").exists()


def test_bad_parquet_input_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    proc = kanari("drift", "baseline", "--data", str(tmp_path / "broken.parquet"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "broken.parquet: cannot read" in proc.stderr and "Traceback" not in proc.stderr
    pd.DataFrame({"a": [1.0]}).iloc[:0].to_parquet(tmp_path / "empty.parquet")
    proc = kanari("drift", "baseline", "--data", str(tmp_path / "empty.parquet"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "empty.parquet: no rows" in proc.stderr
    pd.DataFrame({"a": [1.0]}).to_parquet(tmp_path / "one.parquet")
    with pytest.raises(ValueError, match="target: column 'label' is not in the data"):
        profile_parquet(tmp_path / "one.parquet", target="label")


# What a numeric Parquet baseline or comparison never needs, with each one's cost on this 2-core machine:
# scipy.stats ~0.5 s of CPU (scipy.special alone ~0.2 s), pandas ~0.4 s, numba and its cached kernel ~0.4 s;
# the rest are other commands' libraries.
HEAVY = ("scipy", "pandas", "numba", "kubernetes", "boto3", "botocore", "pydantic", "yaml", "matplotlib", "kfp",
         "aiohttp", "prometheus_client", "sklearn", "pyspark", "requests")
HEAVY_AT_EXIT = f"""
import json, sys
import kanari.cli.drift as drift
from kanari.cli.main import main
reused = []
keep = drift.reuse_freed_memory
drift.reuse_freed_memory = lambda: reused.append(True) or keep()
try:
    code = main(sys.argv[1:])
finally:
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
from threadpoolctl import threadpool_info
blas = sorted({{pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}})
print(json.dumps({{"heavy": loaded, "code": code, "reused_freed_memory": bool(reused), "blas_threads": blas}}))
"""


def test_numeric_parquet_baseline_and_compare_import_no_heavy_module(tmp_path: Path) -> None:
    """Imports were most of a short CLI run (scipy.stats for the KS p-values, pandas, numba): Arrow's buffers go
    to numpy directly, a small file is binned by sorting, the KS p-value is a closed form. Checked in the process
    itself at exit, so a new import anywhere on the path (a module the CLI imports at start included) fails here.
    Also checked there: OpenBLAS started no worker thread (it spun for ~10% of a short compare's CPU)."""
    rng = np.random.default_rng(1)
    pd.DataFrame(rng.normal(size=(5_000, 4)), columns=list("abcd")).to_parquet(tmp_path / "ref.parquet")
    pd.DataFrame(rng.normal(0.5, 1, size=(5_000, 4)), columns=list("abcd")).to_parquet(tmp_path / "cur.parquet")
    base = subprocess.run([sys.executable, "-c", HEAVY_AT_EXIT, "drift", "baseline", "--data", str(tmp_path / "ref.parquet"),
                           "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert json.loads(base.stdout.strip().splitlines()[-1]) == {"heavy": [], "code": 0, "reused_freed_memory": True, "blas_threads": [1]}, base.stderr
    for output in ("json", None):
        comp = subprocess.run([sys.executable, "-c", HEAVY_AT_EXIT, "drift", "compare", "--baseline", str(tmp_path / "b"),
                               "--data", str(tmp_path / "cur.parquet"), *(["-o", output] if output else [])],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        *printed, last = comp.stdout.strip().splitlines()
        # Drift found (exit 1), with the p-values of the default budget; nothing heavy loaded.
        assert json.loads(last) == {"heavy": [], "code": 1, "reused_freed_memory": True, "blas_threads": [1]}, comp.stderr
        if output == "json":
            report = json.loads("\n".join(printed))
            assert report["drifted_features"] == ["a", "b", "c", "d"]
            assert all(f["p_value"] is not None and f["adjusted_p_value"] <= 0.01 for f in report["features"])
        else:
            assert "verdict: drift (4 of 4 features drifted" in "\n".join(printed)


ARROW_PEAK = """
import sys
import pyarrow as pa
from kanari.drift.arrow_columns import parquet_batches
columns = [f"c{j}" for j in range(int(sys.argv[2]))]
rows = sum(batch.num_rows for batch in parquet_batches(sys.argv[1], columns, 10_000))
print(rows, pa.default_memory_pool().max_memory())
"""


def test_a_wide_row_group_is_read_without_arrow_holding_three_times_its_values(tmp_path: Path) -> None:
    """Arrow held ~2.9 MB per column of a 100k-row row group while reading it whole-width (raw chunk,
    dictionary, decoded values: 3.3x the values), every page of it fresh memory the kernel zeroes; decoded a
    group of columns at a time, the row group's values and one group's buffers remain."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{j}": rng.normal(size=100_000) for j in range(64)}), path, row_group_size=100_000)
    out = subprocess.run([sys.executable, "-c", ARROW_PEAK, str(path), "64"], capture_output=True, text=True,
                         timeout=120, check=True, cwd=ROOT).stdout.split()
    assert int(out[0]) == 100_000
    assert int(out[1]) < 1.6 * 64 * 100_000 * 8, f"Arrow's peak {int(out[1]) / 2**20:.0f} MB"


@given(
    st.integers(1, 40), st.integers(1, 2500), st.integers(1, 900), st.integers(1, 700),
    st.lists(st.integers(0, 39), max_size=5, unique=True),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_parquet_batches_are_the_file_whatever_its_width_row_groups_and_batch_size(
    width: int, rows: int, row_group: int, batch_rows: int, with_nulls: list[int]
) -> None:
    """Narrow files through Arrow's batch reader, wide ones a column group at a time: either way the batches
    hold the requested columns in the requested order, at most batch_rows rows each, and add up to the file."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from kanari.drift.arrow_columns import parquet_batches

    rng = np.random.default_rng(width * 7919 + rows)
    data = {}
    for j in range(width):
        values = rng.normal(size=rows) if j % 3 else rng.integers(-5, 5, size=rows)
        data[f"c{j}"] = pa.array(values, mask=(rng.random(rows) < 0.2) if j in with_nulls else None)
    if width > 2:
        data["c2"] = pa.array(rng.choice(["x", "y", "z"], rows))
    table = pa.table(data)
    wanted = [f"c{j}" for j in rng.permutation(width)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.parquet"
        pq.write_table(table, path, row_group_size=row_group)
        batches = list(parquet_batches(path, wanted, batch_rows))
    assert all(b.schema.names == wanted and 0 < b.num_rows <= batch_rows for b in batches)
    assert pa.Table.from_batches(batches).equals(table.select(wanted))


REFAULTS = """
import resource, sys
import numpy as np
from kanari.cli.drift import reuse_freed_memory
if sys.argv[1] == "reuse":
    reuse_freed_memory()
chunk = np.ones(6_000_000)  # 48 MB: past glibc's largest dynamic mmap threshold (32 MB)
del chunk
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    chunk = np.ones(6_000_000)
    del chunk
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_baseline_and_compare_reuse_a_freed_chunk_instead_of_faulting_in_new_pages() -> None:
    """Chunk after chunk, the same big arrays are allocated and freed; unmapped on free, each one's pages were
    faulted in and zeroed again by the kernel (a third of the baseline's time at 100k x 100). Both commands
    call reuse_freed_memory first; in a fresh process it turns thousands of page faults into none."""
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", REFAULTS, mode], capture_output=True, text=True, timeout=120,
                                 check=True, cwd=ROOT).stdout)
        for mode in ("default", "reuse")
    }
    assert faults["default"] > 100 and faults["reuse"] <= faults["default"] // 20, faults


KERNEL_COMPARE = """
import json, sys
import pandas as pd
from kanari.drift.fastcompare import compare_frame_fast
from kanari.drift.model_monitor import read_baseline
report = compare_frame_fast(read_baseline(sys.argv[1]), pd.read_parquet(sys.argv[2]))  # always the kernel
print(json.dumps(report.to_dict()))
"""


def test_compare_works_where_no_cache_directory_is_writable(tmp_path: Path) -> None:
    """A read-only root filesystem (site-packages' __pycache__) and an unwritable HOME: numba refused to decorate
    a cached kernel ("no locator available") and `kanari drift compare` failed. Now the kernel is cached in a
    private temp directory, and with no writable temp directory either it is compiled per process."""
    rng = np.random.default_rng(2)
    pd.DataFrame({"x": rng.normal(size=2_000)}).to_parquet(tmp_path / "ref.parquet")
    assert kanari("drift", "baseline", "--data", str(tmp_path / "ref.parquet"), "--out", str(tmp_path / "b")).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    # No in-tree __pycache__ (a read-only site-packages), the user-wide cache in a directory nobody can create.
    env.update(NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator,UserWideCacheLocator",
               XDG_CACHE_HOME="/proc/kanari-unwritable", TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    args = [sys.executable, "-c", KERNEL_COMPARE, str(tmp_path / "b"), str(tmp_path / "ref.parquet")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    cache = tmp_path / "tmp" / f"kanari-numba-{os.getuid()}"
    assert any(p.suffix == ".nbi" for p in cache.rglob("*")), "the compiled kernel was not cached"
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    env["TMPDIR"] = "/proc/kanari-unwritable"
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["verdict"] == "no drift", proc.stderr


def test_a_cache_directory_someone_else_can_write_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kanari.drift import fastcompare

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    planted = tmp_path / f"kanari-numba-{os.getuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    assert fastcompare.private_cache_dir() is None
    planted.rmdir()
    (tmp_path / "elsewhere").mkdir()
    planted.symlink_to(tmp_path / "elsewhere")
    assert fastcompare.private_cache_dir() is None
    planted.unlink()
    assert fastcompare.private_cache_dir() == str(planted)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 40), cols=st.integers(0, 30000), seed=st.integers(0, 2**31))
def test_sort_rows_is_numpys_sort(rows: int, cols: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(rows, cols % 3000 if rows > 8 else cols))
    a[rng.random(a.shape) < 0.05] = np.nan
    expected = np.sort(a, axis=1)
    sort_rows(a)
    np.testing.assert_array_equal(a, expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 60_000), min_size=1, max_size=12), seed=st.integers(0, 2**31))
def test_column_chunks_keep_the_stated_bound(sizes: list[int], seed: int) -> None:
    """Chunks of any size given column by column (the Parquet path) stay within RANK_ERROR_C / k of the exact CDF."""
    rng = np.random.default_rng(seed)
    data = np.concatenate([rng.standard_t(3, size=(2, n)) for n in sizes], axis=1)
    sketch = KllSketch(2, seed=seed)
    start = 0
    for n in sizes:
        sketch.update_columns(data[:, start : start + n])
        start += n
    assert sketch.n == data.shape[1]
    probes = np.quantile(data, np.linspace(0, 1, 201), axis=1).T.T
    exact = np.stack([(np.sort(data[j])[None, :] <= probes[:, j][:, None]).mean(axis=1) for j in range(2)], axis=1)
    assert np.max(np.abs(sketch.cdf(probes) - exact)) <= sketch.rank_error + 1e-12


def test_profile_columns_equal_profile_rows() -> None:
    """add_columns (Arrow's layout) and add_rows (a DataFrame's) keep the same counts and moments."""
    rng = np.random.default_rng(4)
    data = rng.normal(size=(3_000, 3))
    data[rng.random(data.shape) < 0.1] = np.nan
    clean = rng.normal(size=(3_000, 3))
    from kanari.drift.profile import Feature

    features = [Feature(n, "Fractional") for n in "abc"]
    by_rows, by_cols = Profile.empty(features, seed=0), Profile.empty(features, seed=0)
    for chunk in (data, clean):
        by_rows.add_rows(chunk, {}, len(chunk))
        by_cols.add_columns(np.ascontiguousarray(chunk.T), {}, len(chunk))
    assert by_cols.missing == by_rows.missing and by_cols.rows == by_rows.rows
    for a, b in zip(vars(by_cols.moments).values(), vars(by_rows.moments).values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_read_baseline_reads_what_the_parquet_path_writes(tmp_path: Path) -> None:
    training_frame(3_000).to_parquet(tmp_path / "t.parquet")
    assert kanari("drift", "baseline", "--data", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "b")).returncode == 0
    assert read_baseline(tmp_path / "b").profile.rows == 3_000
