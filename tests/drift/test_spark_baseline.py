"""The Spark engine writes the local engine's baseline: counts and categories exact, moments to rounding,
numeric CDFs within the two sketches' stated rank error. PySpark in local[2], one session for the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kanari.drift.model_monitor import baseline_documents, parse_baseline
from kanari.drift.spark_baseline import spark_baseline, spark_feature_types


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from pyspark.sql import SparkSession

    s = (
        SparkSession.builder.master("local[2]")
        .appName("kanari-test")
        .config("spark.pyspark.python", sys.executable)  # workers need this venv's pandas, whatever PATH says
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "2000")
        .getOrCreate()
    )
    yield s
    s.stop()


def training_frame(rows: int = 30_000) -> pd.DataFrame:
    rng = np.random.default_rng(17)
    df = pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows),
            "income": rng.lognormal(10, 1, rows),
            "score": np.round(rng.normal(50, 10, rows)),  # float column of whole numbers: Integral
            "delta": rng.normal(0, 1, rows),  # negative values: not non-negative
            "city": rng.choice(["lisbon", "porto", "faro", "braga"], rows, p=[0.4, 0.3, 0.2, 0.1]),
            "member": rng.random(rows) < 0.3,
            "label": rng.integers(0, 2, rows),
        }
    )
    df.loc[rng.random(rows) < 0.05, "income"] = np.nan
    df.loc[rng.random(rows) < 0.02, "city"] = None
    return df


def test_spark_baseline_equals_the_local_one(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = training_frame()
    data = tmp_path / "train.parquet"
    df.to_parquet(data)
    local_stats, local_cons = baseline_documents(df, target="label")
    # Several partitions, so the driver really merges.
    parts = tmp_path / "parts"
    spark.read.parquet(str(data)).repartition(5).write.parquet(str(parts))
    spark_stats, spark_cons = spark_baseline(spark, str(parts), tmp_path / "out", target="label")

    assert json.loads((tmp_path / "out" / "statistics.json").read_text()) == spark_stats
    assert spark_cons == local_cons  # completeness, non-negativity, domains, methods: all exact
    assert spark_stats["dataset"] == local_stats["dataset"]
    assert spark_stats["kanari"] == {"target": "label"}
    local_b, spark_b = parse_baseline(local_stats, local_cons), parse_baseline(spark_stats, spark_cons)
    assert [(f.name, f.inferred_type) for f in spark_b.profile.features] == [
        ("age", "Integral"), ("income", "Fractional"), ("score", "Integral"), ("delta", "Fractional"),
        ("city", "String"), ("member", "String"), ("label", "Integral"),
    ]
    for lf, sf in zip(local_stats["features"], spark_stats["features"], strict=True):
        if "string_statistics" in lf:
            assert sf["string_statistics"] == lf["string_statistics"]  # category counts exact
            continue
        ln, sn = lf["numerical_statistics"], sf["numerical_statistics"]
        assert sn["common"] == ln["common"]
        for key in ("mean", "sum", "std_dev", "min", "max"):
            assert sn[key] == pytest.approx(ln[key], rel=1e-9, abs=1e-9)
    lp, sp = local_b.profile, spark_b.profile
    probes = np.nanquantile(df[[f.name for f in lp.numeric_features]].to_numpy(dtype=float), np.linspace(0, 1, 101), axis=0)
    bound = lp.sketch.rank_error + sp.sketch.rank_error
    assert np.nanmax(np.abs(lp.sketch.cdf(probes) - sp.sketch.cdf(probes))) <= bound


def test_spark_reads_csv_like_the_local_engine(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = training_frame(5_000).drop(columns=["member"])
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    local_stats, local_cons = baseline_documents(pd.read_csv(path))
    spark_stats, spark_cons = spark_baseline(spark, str(path), tmp_path / "out")
    assert spark_cons == local_cons
    assert [(f["name"], f["inferred_type"]) for f in spark_stats["features"]] == [
        (f["name"], f["inferred_type"]) for f in local_stats["features"]
    ]


def test_bad_input_is_a_clear_error(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.parquet"
    training_frame(100).to_parquet(path)
    with pytest.raises(ValueError, match="target: column 'nope'"):
        spark_baseline(spark, str(path), tmp_path / "o", target="nope")
    with pytest.raises(ValueError, match="unknown format"):
        spark_baseline(spark, str(path), tmp_path / "o", fmt="xml")


def test_types_follow_the_local_rule() -> None:
    got = spark_feature_types(
        [("a", "bigint"), ("b", "double"), ("c", "double"), ("d", "string"), ("e", "boolean"), ("f", "decimal(10,0)")],
        {"b": True, "c": False},
    )
    assert [f.inferred_type for f in got] == ["Integral", "Integral", "Fractional", "String", "String", "Integral"]


def test_cli_engine_spark_writes_a_baseline_compare_accepts(tmp_path: Path) -> None:
    """Run as a user would, with only the system directories on PATH: Spark's Python workers must still run
    Kanari's interpreter, not the first `python3` found (which has neither Kanari nor pandas)."""
    df = training_frame(2_000)
    df.to_parquet(tmp_path / "train.parquet")
    out = tmp_path / "base"
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_PYTHON"}
    env["PATH"] = "/usr/bin:/bin"
    run = subprocess.run(
        [sys.executable, "-m", "kanari.cli.main", "drift", "baseline", "--engine", "spark", "--spark-master", "local[2]",
         "--data", str(tmp_path / "train.parquet"), "--out", str(out), "--target", "label"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Spark" in run.stdout
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 20 and all("label" not in s["instances"][0] for s in samples)  # warm-up inputs
    compare = subprocess.run(
        [sys.executable, "-m", "kanari.cli.main", "drift", "compare", "--baseline", str(out), "--data", str(tmp_path / "train.parquet")],
        capture_output=True, text=True, timeout=120,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "verdict: no drift" in compare.stdout


def test_infinities_are_refused_naming_the_column_count_and_rows(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression: the Spark engine profiled ±inf (the local engine refuses them, naming the column) and
    failed later writing statistics.json with "Out of range float values are not JSON compliant"."""
    df = training_frame(200)
    df.loc[[3, 7, 150, 151], "income"] = [np.inf, -np.inf, np.inf, np.inf]
    df.loc[[0], "delta"] = -np.inf
    path = tmp_path / "inf.parquet"
    df.to_parquet(path)
    with pytest.raises(ValueError) as spark_err:
        spark_baseline(spark, str(path), tmp_path / "o")
    assert str(spark_err.value) == (
        "data: infinite values cannot be profiled; replace or drop them: "
        "'income': 4 infinite values (rows 3, 7, 150, ...); 'delta': 1 infinite values (rows 0)"
    )
    assert not (tmp_path / "o").exists()  # nothing written
    # The local engine's refusal says the same of the same rows.
    with pytest.raises(ValueError) as local_err:
        baseline_documents(df)
    assert str(local_err.value).split(": ", 1)[1] == str(spark_err.value).split(": ", 1)[1]
