"""CBPE: label-free estimates against the realised metrics on held-out data with known labels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.judging.cbpe import Calibration, estimate, expected_auc, fit_calibration
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB

METRICS = ("precision", "recall", "f1", "roc_auc")


def realised(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (proba >= threshold).astype(int)
    return {
        "precision": precision_score(y, pred, zero_division=0), "recall": recall_score(y, pred),
        "f1": f1_score(y, pred), "roc_auc": roc_auc_score(y, proba),
    }


def test_breast_cancer_estimates_track_the_realised_metrics() -> None:
    # Gaussian naive Bayes is badly calibrated (scores pile up at 0 and 1): the calibration matters.
    data = load_breast_cancer()
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    for seed in range(20):
        x_train, x_rest, y_train, y_rest = train_test_split(data.data, data.target, test_size=0.5, random_state=seed,
                                                            stratify=data.target)
        x_cal, x_test, y_cal, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed,
                                                        stratify=y_rest)
        model = GaussianNB().fit(x_train, y_train)
        calibration = fit_calibration(model.predict_proba(x_cal)[:, 1], y_cal)
        raw_test = model.predict_proba(x_test)[:, 1]
        est = estimate(raw_test, calibration, 0.5).to_dict()
        truth = realised(y_test, raw_test, 0.5)
        for m in METRICS:
            errors[m].append(abs(est[m] - truth[m]))
    for m in METRICS:
        # Stated error on 142 held-out rows: mean absolute error below 0.03, no split off by more than 0.08
        # (measured: MAE 0.007 (ROC-AUC) to 0.017 (precision), worst 0.045).
        assert np.mean(errors[m]) < 0.03 and np.max(errors[m]) < 0.08, (m, np.mean(errors[m]), np.max(errors[m]))


def test_synthetic_covariate_shift_is_tracked_without_labels() -> None:
    rng = np.random.default_rng(16)
    w = np.array([1.5, -1.0, 0.8, 0.0, 0.5])

    def draw(n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, 5)) + shift * w / np.linalg.norm(w)
        y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w - 1.5)))).astype(int)
        return x, y

    x_ref, y_ref = draw(20_000, 0.0)
    model = LogisticRegression(max_iter=1000).fit(x_ref[:10_000], y_ref[:10_000])
    calibration = fit_calibration(model.predict_proba(x_ref[10_000:])[:, 1], y_ref[10_000:])
    reference = realised(y_ref[10_000:], model.predict_proba(x_ref[10_000:])[:, 1], 0.5)
    x_new, y_new = draw(20_000, 1.2)  # P(x) moves, P(y | x) does not
    raw = model.predict_proba(x_new)[:, 1]
    est = estimate(raw, calibration, 0.5).to_dict()
    truth = realised(y_new, raw, 0.5)
    moved = [m for m in METRICS if abs(truth[m] - reference[m]) > 0.05]
    assert moved, "the shift must change the realised metrics, or the test proves nothing"
    for m in METRICS:
        assert est[m] == pytest.approx(truth[m], abs=0.02), (m, est[m], truth[m], reference[m])


@given(st.lists(st.floats(0, 1), min_size=2, max_size=60))
@settings(max_examples=200, deadline=None)
def test_expected_auc_equals_the_weighted_pairwise_definition(p: list[float]) -> None:
    arr = np.array(p)
    got = expected_auc(arr)
    num = den = 0.0
    for i in range(len(arr)):
        for j in range(len(arr)):
            if i != j:
                w = arr[i] * (1 - arr[j])
                den += w
                num += w * (1.0 if arr[i] > arr[j] else 0.5 if arr[i] == arr[j] else 0.0)
    if den <= 1e-12:
        return
    assert got == pytest.approx(num / den, abs=1e-9)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=50), st.floats(0, 1))
@settings(max_examples=200, deadline=None)
def test_estimates_are_probabilities_or_none(p: list[float], threshold: float) -> None:
    est = estimate(p, None, threshold)
    for m in (est.precision, est.recall, est.f1, est.roc_auc):
        assert m is None or -1e-12 <= m <= 1 + 1e-12


def test_bad_scores_and_calibrations_are_refused() -> None:
    with pytest.raises(ValueError, match="not probabilities"):
        estimate([0.2, 1.5], None, 0.5)
    with pytest.raises(ValueError, match="not probabilities"):
        estimate([0.2, float("nan")], None, 0.5)
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="ascending"):
        Calibration.from_dict({"x": [0.5, 0.1], "y": [0.1, 0.2]})
    cal = fit_calibration([0.1, 0.4, 0.6, 0.9], [0, 0, 1, 1])
    assert Calibration.from_dict(cal.to_dict()) == cal
