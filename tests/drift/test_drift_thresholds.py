"""Drift thresholds from a false-alarm budget: seeded simulations with known truth (the long run with
1,000 trials at 1,000 and 10,000 rows is bench/judge_bench.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.drift.compare import compare_frame
from kanari.drift.methods import METHODS
from kanari.drift.model_monitor import Baseline, baseline_documents, parse_baseline
from kanari.drift.sketch import KllSketch
from kanari.drift.thresholds import holm, ks_significance, sketch_cdf_variance
from scipy.special import kolmogorov
from scipy.stats import binom, ks_2samp, kstwo

from bench.judge_bench import frame as bench_frame

FEATURES = 10


def frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    return bench_frame(rng, n, shift, features=FEATURES)


def budget_only(df: pd.DataFrame) -> Baseline:
    """A baseline whose fixed thresholds never bind, so the verdict is the budget's alone."""
    stats, constraints = baseline_documents(df)
    dist = constraints["monitoring_config"]["distribution_constraints"]
    dist.update(comparison_threshold=0.0, categorical_comparison_threshold=0.0, comparison_method="Simple")
    constraints["kanari"]["thresholds"] = {"psi": 0.0, "js": 0.0, "wasserstein": 0.0, "chi2": 1.0}
    return parse_baseline(stats, constraints)


@pytest.fixture(scope="module")
def no_drift_runs() -> dict[str, list[tuple[int, list[float]]]]:
    """40 seeded no-drift trials, 300 rows x 10 features, every method at a 10% budget (small samples, where
    asymptotic laws are least accurate, and fast: the bootstraps' cost grows with the rows)."""
    rng = np.random.default_rng(16)
    out: dict[str, list[tuple[int, list[float]]]] = {m: [] for m in METHODS}
    for _ in range(40):
        baseline = budget_only(frame(rng, 300))
        current = frame(rng, 300)
        for m in METHODS:
            report = compare_frame(baseline, current, method=m, false_alarm_rate=0.1)
            out[m].append((len(report.drifted_features), [f.p_value for f in report.features if f.p_value is not None]))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_dataset_false_alarms_stay_within_the_budget(method: str, no_drift_runs: dict) -> None:
    runs = no_drift_runs[method]
    alarms = sum(1 for drifted, _ in runs if drifted)
    # At most the budget, up to sampling noise: P(Binomial(40, 0.1) > limit) < 0.001.
    assert alarms <= binom.ppf(0.999, len(runs), 0.1), f"{method}: {alarms} of {len(runs)} no-drift trials alarmed"


@pytest.mark.parametrize("method", METHODS)
def test_feature_p_values_are_not_anti_conservative(method: str, no_drift_runs: dict) -> None:
    p = np.array([v for _, ps in no_drift_runs[method] for v in ps])
    assert len(p) == 40 * FEATURES and np.all((p > 0) & (p <= 1))
    for level in (0.05, 0.1):
        limit = binom.ppf(0.999, len(p), level) / len(p)
        assert np.mean(p <= level) <= limit, f"{method}: P(p <= {level}) = {np.mean(p <= level):.3f}"


def test_fixed_thresholds_alone_break_the_budget_the_test_can_fail(no_drift_runs: dict) -> None:
    # The same no-drift data judged by fixed Wasserstein 0.1 alone (the old behaviour) alarms far more
    # often than 10%: the simulation above has the power to catch a miscalibrated method.
    rng = np.random.default_rng(16)
    stats, constraints = baseline_documents(frame(rng, 500))
    fixed = parse_baseline(stats, constraints)
    alarms = sum(
        bool(compare_frame(fixed, frame(rng, 300), method="wasserstein", false_alarm_rate=None).drifted_features)
        for _ in range(15)
    )
    assert alarms > binom.ppf(0.999, 15, 0.1)


@pytest.mark.parametrize("method", METHODS)
def test_the_budget_still_finds_real_drift(method: str) -> None:
    rng = np.random.default_rng(17)
    baseline = budget_only(frame(rng, 2000))
    report = compare_frame(baseline, frame(rng, 2000, shift=0.3), method=method, false_alarm_rate=0.01)
    assert len(report.drifted_features) >= FEATURES // 2, report.to_dict()
    for f in report.features:
        if f.drifted:
            assert f.adjusted_p_value is not None and f.adjusted_p_value <= 0.01 and f.p_value <= f.adjusted_p_value


def test_ks_p_value_is_kolmogorovs_limit_and_never_below_scipys_on_exact_sketches() -> None:
    """Kolmogorov's limiting law at the effective size (no scipy import on the CLI's path): never below
    ks_2samp's asymptotic p-value (kstwo at that size), and its critical value never below kstwo's."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=150), rng.normal(0.2, 1, size=120)
    d = ks_2samp(a, b)
    n = round(150 * 120 / 270)
    got = ks_significance(d.statistic, 150 * 120 / 270, 0.01)
    assert got.p_value == pytest.approx(kolmogorov(np.sqrt(n) * d.statistic), rel=1e-12)
    assert ks_2samp(a, b, method="asymp").pvalue <= got.p_value <= 1.25 * ks_2samp(a, b, method="asymp").pvalue
    assert got.critical_value is not None and kstwo.isf(0.01, n) <= got.critical_value <= 1.02 * kstwo.isf(0.01, n)


def test_sketch_variance_is_zero_until_compaction_and_bounds_the_error() -> None:
    rng = np.random.default_rng(8)
    small = KllSketch(1, k=200, seed=1)
    small.update(rng.normal(size=(150, 1)))
    assert sketch_cdf_variance(small)[0] == 0.0
    errors = []
    for seed in range(20):
        x = rng.normal(size=(20_000, 1))
        sk = KllSketch(1, k=200, seed=seed)
        for start in range(0, len(x), 500):
            sk.update(x[start : start + 500])
        points = np.linspace(-2, 2, 21)
        errors.append(sk.cdf(points[:, None])[:, 0] - (x[:, 0][None, :] <= points[:, None]).mean(axis=1))
    assert np.var(errors) <= sketch_cdf_variance(sk)[0]


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.floats(0, 1), min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_holm_is_a_valid_step_down(p: dict[str, float]) -> None:
    adjusted = holm(p)
    m = len(p)
    assert set(adjusted) == set(p)
    for k, v in p.items():
        assert v <= adjusted[k] <= 1.0
        assert adjusted[k] <= min(1.0, m * v) + 1e-12  # never stricter than Bonferroni
    order = sorted(p, key=lambda k: p[k])
    assert all(adjusted[a] <= adjusted[b] + 1e-12 for a, b in zip(order, order[1:], strict=False))
