"""`kanari drift baseline` and `kanari drift compare` on real datasets shipped with scikit-learn."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from drift_testlib import cancer_frame
from kanari.cli.main import main
from kanari.drift.model_monitor import baseline_documents, read_baseline
from scipy.stats import ks_2samp
from sklearn.datasets import load_wine


def kanari(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in-process (same entry point as the console script), output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wine") / "wine.csv"
    load_wine(as_frame=True).frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def wine_baseline(wine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wine-baseline")
    proc = kanari("drift", "baseline", "--data", str(wine), "--out", str(out), "--target", "target")
    assert proc.returncode == 0, proc.stderr
    return out


def test_baseline_files_have_the_sagemaker_shape(wine_baseline: Path) -> None:
    stats = json.loads((wine_baseline / "statistics.json").read_text())
    constraints = json.loads((wine_baseline / "constraints.json").read_text())
    wine = load_wine(as_frame=True).frame
    assert stats["dataset"]["item_count"] == len(wine)
    by_name = {f["name"]: f for f in stats["features"]}
    alcohol = by_name["alcohol"]
    assert alcohol["inferred_type"] == "Fractional"
    num = alcohol["numerical_statistics"]
    assert num["common"] == {"num_present": 178, "num_missing": 0}
    assert num["mean"] == pytest.approx(wine["alcohol"].mean())
    assert num["std_dev"] == pytest.approx(wine["alcohol"].std(ddof=0))
    assert (num["min"], num["max"]) == (wine["alcohol"].min(), wine["alcohol"].max())
    kll = num["distribution"]["kll"]
    assert len(kll["buckets"]) == 10 and sum(b["count"] for b in kll["buckets"]) == 178
    assert set(kll["sketch"]["parameters"]) == {"c", "k"}
    assert sum(len(level) << h for h, level in enumerate(kll["sketch"]["data"])) == 178
    assert by_name["magnesium"]["inferred_type"] == "Integral"
    assert stats["kanari"]["target"] == "target"
    dist = constraints["monitoring_config"]["distribution_constraints"]
    assert dist["comparison_threshold"] == 0.1 and dist["comparison_method"] == "Robust"
    assert all(c["completeness"] == 1.0 for c in constraints["features"])


def test_categorical_features_get_frequencies_and_domains() -> None:
    df = pd.DataFrame({"plan": ["basic", "pro", "pro", None, "basic", "pro"], "age": [20, 31, 40, 52, 33, 25]})
    stats, constraints = baseline_documents(df)
    plan = next(f for f in stats["features"] if f["name"] == "plan")
    assert plan["inferred_type"] == "String"
    assert plan["string_statistics"]["common"] == {"num_present": 5, "num_missing": 1}
    assert plan["string_statistics"]["distribution"]["categorical"]["buckets"] == [
        {"value": "pro", "count": 3.0},
        {"value": "basic", "count": 2.0},
    ]
    cplan = next(c for c in constraints["features"] if c["name"] == "plan")
    assert cplan["string_constraints"]["domains"] == ["basic", "pro"]
    assert cplan["completeness"] == pytest.approx(5 / 6, abs=1e-6)


def test_bad_training_data_is_named() -> None:
    with pytest.raises(ValueError, match="target: column 'label' is not in the data"):
        baseline_documents(pd.DataFrame({"a": [1, 2]}), target="label")
    with pytest.raises(ValueError, match="df: the training data is empty"):
        baseline_documents(pd.DataFrame())


def test_compare_same_data_is_no_drift(wine: Path, wine_baseline: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kanari.cli.main", "drift", "compare", "--baseline", str(wine_baseline), "--data", str(wine)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: no drift" in proc.stdout
    assert "alcohol" in proc.stdout and "linf" in proc.stdout


def test_compare_finds_the_shifted_features_as_json_and_plots_them(
    wine_baseline: Path, tmp_path: Path
) -> None:
    current = load_wine(as_frame=True).frame.drop(columns=["target"])
    current["alcohol"] += 0.8  # about one standard deviation
    current["proline"] = (current["proline"] * 1.4).round()
    data = tmp_path / "current.parquet"
    current.to_parquet(data)
    plot = tmp_path / "drift.png"
    proc = kanari(
        "drift", "compare", "--baseline", str(wine_baseline), "--data", str(data), "-o", "json", "--plot", str(plot)
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "drift"
    assert sorted(report["drifted_features"]) == ["alcohol", "proline"]
    values = {f["feature"]: f for f in report["features"]}
    wine = load_wine(as_frame=True).frame
    exact = ks_2samp(wine["alcohol"], current["alcohol"]).statistic
    # Kanari writes comparison_method Robust, which is SageMaker's linf_robust: the KS statistic less
    # 1.8 sqrt((n+m)/(nm)). 178 rows: the sketch is exact.
    robust = exact - 1.8 * (2 / 178) ** 0.5
    assert values["alcohol"]["value"] == pytest.approx(robust, abs=1e-6)
    assert values["alcohol"]["p_value"] < 1e-6 and values["alcohol"]["adjusted_p_value"] <= 0.01
    assert values["alcohol"]["method"] == "linf" and values["alcohol"]["threshold"] == 0.1
    assert "target" not in values  # the label is not expected in inference data
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "alcohol" in proc.stderr and "proline" in proc.stderr


def test_compare_reports_schema_violations(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame(
        {"amount": rng.gamma(2, 50, 2000), "country": rng.choice(["DE", "FR", "US"], 2000), "items": rng.integers(1, 9, 2000)}
    )
    base = tmp_path / "base"
    assert main(["drift", "baseline", "--data", str(_csv(train, tmp_path / "train.csv")), "--out", str(base)]) == 0
    current = train.sample(500, random_state=1).drop(columns=["items"]).reset_index(drop=True)
    current.loc[:9, "country"] = "BR"  # unseen category
    current.loc[10:59, "amount"] = None  # completeness
    current["channel"] = "web"  # extra column
    proc = kanari("drift", "compare", "--baseline", str(base), "--data", str(_csv(current, tmp_path / "cur.csv")))
    assert proc.returncode == 1
    lines = proc.stdout
    assert "missing_column   items" in lines
    assert "extra_column     channel" in lines
    assert "unseen_category  country: 10 values outside the baseline's domain: 'BR'" in lines
    assert "completeness     amount: 0.9000 of values present, the baseline requires 1.0000" in lines
    assert "verdict: schema violations" in lines

    wrong = train.head(100).astype({"amount": str})
    wrong.loc[:4, "amount"] = "unknown"
    proc = kanari("drift", "compare", "--baseline", str(base), "--data", str(_csv(wrong, tmp_path / "w.csv")), "-o", "json")
    kinds = {(v["kind"], v["feature"]) for v in json.loads(proc.stdout)["schema_violations"]}
    assert ("type_mismatch", "amount") in kinds


def test_categorical_drift_with_chi_square(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"country": rng.choice(["DE", "FR", "US", "IT"], 5000, p=[0.4, 0.3, 0.2, 0.1])})
    base = tmp_path / "base"
    main(["drift", "baseline", "--data", str(_csv(train, tmp_path / "t.csv")), "--out", str(base)])
    same = pd.DataFrame({"country": rng.choice(["DE", "FR", "US", "IT"], 3000, p=[0.4, 0.3, 0.2, 0.1])})
    moved = pd.DataFrame({"country": rng.choice(["DE", "FR", "US", "IT"], 3000, p=[0.25, 0.25, 0.25, 0.25])})
    for data, code in ((same, 0), (moved, 1)):
        proc = kanari("drift", "compare", "--baseline", str(base), "--data", str(_csv(data, tmp_path / "c.csv")),
                      "--method", "chi2", "-o", "json")
        assert proc.returncode == code, proc.stdout
        feature = json.loads(proc.stdout)["features"][0]
        assert feature["method"] == "chi2" and feature["threshold"] == 0.05


def test_bad_input_exits_2_with_a_clear_message(wine_baseline: Path, tmp_path: Path) -> None:
    proc = kanari("drift", "compare", "--baseline", str(tmp_path), "--data", str(tmp_path / "x.csv"))
    assert proc.returncode == 2
    assert "statistics.json: not found" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "x.txt").write_text("hello")
    proc = kanari("drift", "compare", "--baseline", str(wine_baseline), "--data", str(tmp_path / "x.txt"))
    assert proc.returncode == 2 and "unknown format" in proc.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "statistics.json").write_text('{"features": [{"name": "a", "inferred_type": "Complex"}]}')
    (broken / "constraints.json").write_text("{}")
    proc = kanari("drift", "compare", "--baseline", str(broken), "--data", str(tmp_path / "x.txt"))
    assert proc.returncode == 2
    assert "features[0] (a): inferred_type 'Complex'" in proc.stderr


def test_sagemaker_written_baselines_are_read(cancer_baseline_dir: Path) -> None:
    # SageMaker's constraints carry only its own monitoring_config; its threshold is honoured.
    stats = json.loads((cancer_baseline_dir / "statistics.json").read_text())
    stats.pop("kanari")
    constraints = json.loads((cancer_baseline_dir / "constraints.json").read_text())
    constraints.pop("kanari")
    constraints["monitoring_config"]["distribution_constraints"]["comparison_threshold"] = 0.2
    out = cancer_baseline_dir.parent / "sagemaker-style"
    out.mkdir(exist_ok=True)
    (out / "statistics.json").write_text(json.dumps(stats))
    (out / "constraints.json").write_text(json.dumps(constraints))
    baseline = read_baseline(out)
    assert baseline.thresholds["linf"] == 0.2 and baseline.target is None
    assert baseline.profile.rows == len(cancer_frame())


def _csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path
