"""Delayed ground truth: the join store over random interleavings, the authenticated label endpoint, the
realised-quality and CBPE gauges (the quality-drop rule: tests/controller/test_quality_rules.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.judging.groundtruth import JoinStore
from kanari.judging.labels import QualityMetrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import average_precision_score, f1_score, recall_score

TOKEN = "s3cret-token"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# events: (kind, id, delay) — a prediction or a label for id, `delay` seconds after the previous event
events = st.lists(
    st.tuples(st.sampled_from(["prediction", "label"]), st.integers(0, 30), st.floats(0, 20)), max_size=200
)


@given(events, st.integers(1, 20))
@settings(max_examples=300, deadline=None)
def test_join_loses_nothing_within_the_ttl_and_stays_bounded(seq: list[tuple[str, int, float]], capacity: int) -> None:
    clock = Clock()
    ttl = 30.0
    store = JoinStore(task="binary", ttl=ttl, max_pending=capacity, clock=clock)
    arrivals: dict[tuple[str, int], list[float]] = {}
    joined_ids: list[int] = []
    for kind, ident, delay in seq:
        clock.now += delay
        if kind == "prediction":
            joined = store.prediction(str(ident), "rev-a", 0.7)
        else:
            joined = store.label(str(ident), 1) is not None
        arrivals.setdefault((kind, ident), []).append(clock.now)
        if joined:
            joined_ids.append(ident)
        assert len(store.predictions) <= capacity and len(store.labels) <= capacity  # bounded, always
    total = store.quality["rev-a"].joined if "rev-a" in store.quality else 0
    assert total == len(joined_ids)
    # Nothing lost within the TTL: with room to spare, a first prediction and first label of an id
    # arriving within ttl of each other (and no other event in between evicting) are joined.
    if len(seq) <= capacity:
        for ident in {i for _, i, _ in seq}:
            p, lab = arrivals.get(("prediction", ident)), arrivals.get(("label", ident))
            if p and lab and abs(p[0] - lab[0]) <= ttl:
                assert ident in joined_ids, (ident, p, lab)
    accounted = sum(store.dropped.values()) + len(store.predictions) + len(store.labels) + 2 * total
    assert accounted == len(seq)


def test_realised_quality_matches_sklearn_and_regression_errors() -> None:
    rng = np.random.default_rng(3)
    store = JoinStore(task="binary", ttl=3600, max_pending=100_000)
    scores = rng.random(3000)
    labels = (rng.random(3000) < scores).astype(int)
    for i, s in enumerate(scores):
        store.prediction(f"id-{i}", "rev-2", float(s))
    for i in rng.permutation(3000):
        store.label(f"id-{i}", int(labels[i]))
    got = store.quality["rev-2"].metrics()
    assert got["recall"] == pytest.approx(recall_score(labels, scores >= 0.5))
    assert got["f1"] == pytest.approx(f1_score(labels, scores >= 0.5))
    assert got["pr_auc"] == pytest.approx(average_precision_score(labels, scores))
    reg = JoinStore(task="regression", ttl=60, max_pending=10)
    reg.label("a", 3.0)
    reg.prediction("a", "r", 5.0)
    reg.prediction("b", "r", 1.0)
    reg.label("b", 2.0)
    assert reg.quality["r"].metrics() == {"rmse": pytest.approx(((4 + 1) / 2) ** 0.5), "mae": 1.5}


def test_cbpe_estimates_are_exported_and_withdrawn_when_undefined() -> None:
    from kanari.judging.cbpe import estimate

    metrics = QualityMetrics()
    metrics.set_estimate("ml-prod", "fraud", "rev-3", estimate([0.9, 0.8, 0.2, 0.1], None, 0.5))

    def exported() -> dict[str, float]:
        text = generate_latest(metrics.registry).decode()
        return {s.labels["metric"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name == "kanari_estimated_quality"}

    assert exported()["precision"] == pytest.approx(0.85)
    metrics.set_estimate("ml-prod", "fraud", "rev-3", estimate([0.2, 0.1], None, 0.5))  # nothing predicted positive
    assert "precision" not in exported() and "roc_auc" in exported()


def test_the_rows_behind_an_estimate_go_with_it() -> None:
    """kanari_estimated_quality_rows is what a CBPE template checks against minSampleCount: it is exported with the
    estimate and never left standing once the estimate is unavailable or the revision is gone."""
    from kanari.judging.cbpe import estimate

    metrics = QualityMetrics()

    def rows() -> dict[str, float]:
        text = generate_latest(metrics.registry).decode()
        return {s.labels["revision"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name == "kanari_estimated_quality_rows"}

    metrics.set_estimate("ml-prod", "fraud", "7", estimate([0.9, 0.8, 0.2, 0.1, 0.3], None, 0.5))
    metrics.set_estimate("ml-prod", "fraud", "8", estimate([0.9, 0.1], None, 0.5))
    assert rows() == {"7": 5, "8": 2}
    metrics.set_estimate("ml-prod", "fraud", "7", None)  # calibration gone: no estimate, no rows
    assert rows() == {"8": 2}
    metrics.forget_revision("ml-prod", "fraud", "8")
    assert rows() == {}
