"""Regression tests for the drift-comparison defects of issue 16, each failing on the code before the fix."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.cli.main import main
from kanari.drift.compare import compare_frame
from kanari.drift.model_monitor import baseline_documents, parse_baseline, read_baseline, write_baseline
from kanari.drift.profile import categorical_strings
from scipy.stats import ks_2samp


def kanari(*args: str) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def _csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------- bool with missing values
def test_bool_column_with_missing_values_is_the_same_distribution(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"flag": rng.choice([True, False], 4000, p=[0.7, 0.3]), "x": rng.normal(size=4000)})
    base = tmp_path / "base"
    assert kanari("drift", "baseline", "--data", str(_csv(train, tmp_path / "t.csv")), "--out", str(base)).returncode == 0
    current = pd.DataFrame({"flag": rng.choice([True, False], 2000, p=[0.7, 0.3]), "x": rng.normal(size=2000)})
    current = current.astype({"flag": object})
    current.loc[:9, "flag"] = None  # a CSV with empty cells: pandas reads the column as object, not bool
    data = _csv(current, tmp_path / "c.csv")
    assert pd.read_csv(data)["flag"].dtype == object
    proc = kanari("drift", "compare", "--baseline", str(base), "--data", str(data), "-o", "json")
    report = json.loads(proc.stdout)
    flag = next(f for f in report["features"] if f["feature"] == "flag")
    assert flag["value"] < 0.05, flag
    assert not [v for v in report["schema_violations"] if v["kind"] == "unseen_category"], report["schema_violations"]
    assert "flag" not in report["drifted_features"]


@given(st.lists(st.one_of(st.booleans(), st.none()), min_size=1, max_size=30))
@settings(max_examples=100, deadline=None)
def test_booleans_read_as_true_false_whatever_the_dtype(values: list[bool | None]) -> None:
    expected = [None if v is None else ("true" if v else "false") for v in values]
    for series in (
        pd.Series(values, dtype=object),
        pd.Series(values, dtype="boolean"),
        pd.Series([np.bool_(v) if v is not None else np.nan for v in values], dtype=object),
    ):
        assert list(categorical_strings(series)) == expected
    if None not in values:
        assert list(categorical_strings(pd.Series(values, dtype=bool))) == expected


def test_object_column_mixing_bools_and_strings_keeps_the_strings() -> None:
    # Only an all-boolean column is a boolean feature; "yes"/True mixes are strings as written.
    out = categorical_strings(pd.Series(["yes", True, None], dtype=object))
    assert list(out) == ["yes", "True", None]


# ------------------------------------------------------------------ constraints.json fields mean what they say
@pytest.fixture()
def shifted(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(5)
    train = pd.DataFrame(
        {"x": rng.normal(size=3000), "plan": rng.choice(["a", "b", "c"], 3000, p=[0.5, 0.3, 0.2])}
    )
    current = pd.DataFrame(
        {"x": rng.normal(0.6, 1, size=2000), "plan": rng.choice(["a", "b", "c"], 2000, p=[0.25, 0.35, 0.4])}
    )
    base = tmp_path / "base"
    write_baseline(train, base)
    return base, _csv(current, tmp_path / "c.csv"), train, current


def _edit(base: Path, **dist: object) -> None:
    path = base / "constraints.json"
    doc = json.loads(path.read_text())
    doc["monitoring_config"]["distribution_constraints"].update(dist)
    path.write_text(json.dumps(doc))


def _report(base: Path, data: Path) -> dict:
    proc = kanari("drift", "compare", "--baseline", str(base), "--data", str(data), "-o", "json")
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def test_editing_comparison_threshold_changes_the_verdict_of_a_kanari_baseline(shifted: tuple) -> None:
    base, data, train, current = shifted
    before = {f["feature"]: f for f in _report(base, data)["features"]}
    assert before["x"]["drifted"]
    _edit(base, comparison_threshold=0.5)
    after = {f["feature"]: f for f in _report(base, data)["features"]}
    assert after["x"]["threshold"] == 0.5 and not after["x"]["drifted"]
    # The categorical threshold is its own field and was not touched.
    assert after["plan"]["threshold"] == before["plan"]["threshold"] == 0.1


def test_categorical_comparison_threshold_applies_to_categorical_features(shifted: tuple) -> None:
    base, data, _, _ = shifted
    assert "plan" in _report(base, data)["drifted_features"]
    _edit(base, categorical_comparison_threshold=0.3)
    report = _report(base, data)
    plan = next(f for f in report["features"] if f["feature"] == "plan")
    assert plan["threshold"] == 0.3 and "plan" not in report["drifted_features"]
    assert next(f for f in report["features"] if f["feature"] == "x")["threshold"] == 0.1


def test_categorical_drift_method_chi_squared_is_a_p_value_test(shifted: tuple) -> None:
    base, data, _, _ = shifted
    _edit(base, categorical_drift_method="ChiSquared", categorical_comparison_threshold=0.01)
    plan = next(f for f in _report(base, data)["features"] if f["feature"] == "plan")
    assert plan["method"] == "chi2" and plan["threshold"] == 0.01
    assert 0.0 <= plan["value"] < 0.01 and plan["drifted"]


def test_perform_comparison_disabled_compares_no_distribution(shifted: tuple) -> None:
    base, data, _, _ = shifted
    _edit(base, perform_comparison="Disabled")
    proc = kanari("drift", "compare", "--baseline", str(base), "--data", str(data), "-o", "json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["drifted_features"] == [] and report["verdict"] == "no drift"
    assert {f["status"] for f in report["features"]} == {"not compared"}


def test_comparison_method_robust_is_sagemakers_linf_robust(shifted: tuple) -> None:
    # SageMaker (Deequ's Distance.selectMetrics): linf_robust = max(0, linf_simple - 1.8 sqrt((n+m)/(n m))).
    base, data, train, current = shifted
    exact = ks_2samp(train["x"], current["x"]).statistic
    n, m = len(train), len(current)
    robust = max(0.0, exact - 1.8 * math.sqrt((n + m) / (n * m)))
    _edit(base, comparison_method="Robust")
    x = next(f for f in _report(base, data)["features"] if f["feature"] == "x")
    assert x["value"] == pytest.approx(robust, abs=0.01)  # the baseline side is a KLL sketch (k=200)
    _edit(base, comparison_method="Simple")
    x = next(f for f in _report(base, data)["features"] if f["feature"] == "x")
    assert x["value"] == pytest.approx(exact, abs=0.01)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("perform_comparison", "Maybe", "perform_comparison"),
        ("comparison_method", "Fancy", "comparison_method"),
        ("categorical_drift_method", "KL", "categorical_drift_method"),
        ("comparison_threshold", "high", "comparison_threshold"),
        ("categorical_comparison_threshold", -1, "categorical_comparison_threshold"),
    ],
)
def test_bad_distribution_constraints_are_named(field: str, value: object, message: str) -> None:
    stats, constraints = baseline_documents(pd.DataFrame({"a": [1.0, 2.0, 3.0]}))
    constraints["monitoring_config"]["distribution_constraints"][field] = value
    with pytest.raises(ValueError, match=f"constraints.json: .*{message}"):
        parse_baseline(stats, constraints)


# ---------------------------------------------------------------------------------------- inf in training
def test_infinite_training_values_are_refused_naming_the_column(tmp_path: Path) -> None:
    train = pd.DataFrame({"ok": [1.0, 2.0, 3.0, 4.0], "ratio": [0.5, np.inf, 1.5, -np.inf]})
    proc = kanari("drift", "baseline", "--data", str(_csv(train, tmp_path / "t.csv")), "--out", str(tmp_path / "b"))
    assert proc.returncode == 2
    assert "ratio" in proc.stderr and "2 infinite values" in proc.stderr and "Traceback" not in proc.stderr
    assert "ok" not in proc.stderr.replace("kanari", "")
    assert not (tmp_path / "b" / "statistics.json").exists()


# ---------------------------------------------------------------------------------- minimum sample size
@pytest.mark.parametrize("rows", [1, 10])
def test_compare_on_a_handful_of_rows_is_inconclusive(rows: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    train = pd.DataFrame({"x": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000)})
    base = tmp_path / "base"
    write_baseline(train, base)
    data = _csv(train.sample(rows, random_state=1), tmp_path / "few.csv")
    proc = kanari("drift", "compare", "--baseline", str(base), "--data", str(data), "-o", "json")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "inconclusive" and report["drifted_features"] == []
    assert {f["status"] for f in report["features"]} == {"inconclusive"}
    table = kanari("drift", "compare", "--baseline", str(base), "--data", str(data))
    assert table.returncode == 3 and "verdict: inconclusive" in table.stdout and "min-samples 100" in table.stdout
    # The threshold is a flag: with --min-samples 1 the same file is judged.
    judged = kanari("drift", "compare", "--baseline", str(base), "--data", str(data), "--min-samples", "1")
    assert judged.returncode in (0, 1)


# ------------------------------------------------------------------------ an all-NaN column gaining values
def test_empty_baseline_column_gaining_values_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    train = pd.DataFrame({"x": rng.normal(size=500), "late": [np.nan] * 500, "tag": [None] * 500})
    base = tmp_path / "base"
    write_baseline(train, base)
    current = pd.DataFrame({"x": rng.normal(size=300), "late": rng.normal(size=300), "tag": ["new"] * 300})
    proc = kanari("drift", "compare", "--baseline", str(base), "--data", str(_csv(current, tmp_path / "c.csv")),
                  "-o", "json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["verdict"] != "no drift"
    violations = {(v["kind"], v["feature"]) for v in report["schema_violations"]}
    assert ("baseline_empty", "late") in violations and ("baseline_empty", "tag") in violations
    assert set(report["drifted_features"]) >= {"late", "tag"}


def test_empty_baseline_column_still_empty_is_fine(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    train = pd.DataFrame({"x": rng.normal(size=500), "late": [np.nan] * 500})
    base = tmp_path / "base"
    write_baseline(train, base)
    current = pd.DataFrame({"x": rng.normal(size=300), "late": [np.nan] * 300})
    report = compare_frame(read_baseline(base), current)
    assert report.verdict == "no drift", report.to_dict()
