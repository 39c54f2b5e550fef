"""Evaluate a trained model on the held-out test split, with scores that mean something when positives are rare.

Accuracy is not reported: with 15% positives a model that never flags anything is 85% accurate.
PR-AUC (average precision) is the headline; recall, precision and F1 are taken at the decision
threshold the training script chose on the validation channel. The document written next to the
model follows SageMaker Model Monitor's model-quality statistics layout (metric -> value,
standard_deviation) so the registry's ModelMetrics point at a format users know.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed

if TYPE_CHECKING:
    from kanari.judging.cbpe import Calibration

log = logging.getLogger("kanari.pipeline")

METRICS = ("pr_auc", "roc_auc", "recall", "precision", "f1")
HIGHER_IS_BETTER = frozenset(METRICS)


CURVE_POINTS = 50  # points kept per curve: enough to draw it, small enough for KFP's metadata store


@dataclass(frozen=True)
class Curve:
    x: list[float]
    y: list[float]
    thresholds: list[float]


@dataclass(frozen=True)
class Evaluation:
    scores: dict[str, float]
    confusion: dict[str, int]
    rows: int
    positives: int
    roc: Curve | None = None
    pr: Curve | None = None


def _thin(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> Curve:
    """At most CURVE_POINTS points, always keeping both ends."""
    idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), CURVE_POINTS)).round().astype(int))
    finite = np.where(np.isfinite(t), t, 1.0)  # roc_curve's first threshold is +inf
    return Curve([float(v) for v in x[idx]], [float(v) for v in y[idx]], [float(v) for v in finite[idx]])


def model_dir(model_uri: str) -> aws.S3Uri:
    """The folder holding model.tar.gz; the evaluation and the drift baseline are written beside it."""
    uri = aws.S3Uri.parse(model_uri, "model")
    return aws.S3Uri(uri.bucket, uri.key.rsplit("/", 1)[0] if "/" in uri.key else "")


def score(y: np.ndarray, proba: np.ndarray, threshold: float) -> Evaluation:
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        precision_recall_curve,
        precision_score,
        recall_score,
        roc_auc_score,
        roc_curve,
    )

    y = np.asarray(y).astype(int)
    if y.min() == y.max():
        raise InputError("test_data", "the test split has a single class; PR-AUC and recall are undefined")
    pred = (proba >= threshold).astype(int)
    scores = {
        "pr_auc": float(average_precision_score(y, proba)),
        "roc_auc": float(roc_auc_score(y, proba)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "threshold": float(threshold),
        # A classifier with no skill scores the prevalence on PR-AUC: the number to beat.
        "pr_auc_no_skill": float(y.mean()),
    }
    confusion = {
        "tp": int(np.sum((pred == 1) & (y == 1))),
        "fp": int(np.sum((pred == 1) & (y == 0))),
        "fn": int(np.sum((pred == 0) & (y == 1))),
        "tn": int(np.sum((pred == 0) & (y == 0))),
    }
    fpr, tpr, roc_t = roc_curve(y, proba)
    precision, recall, pr_t = precision_recall_curve(y, proba)
    # precision_recall_curve returns one more (precision, recall) point than thresholds (recall 0).
    pr = _thin(recall[:-1][::-1], precision[:-1][::-1], pr_t[::-1])
    return Evaluation(scores, confusion, int(len(y)), int(y.sum()), _thin(fpr, tpr, roc_t), pr)


def quality_document(ev: Evaluation) -> dict[str, Any]:
    metric = {k: {"value": v, "standard_deviation": "NaN"} for k, v in ev.scores.items()}
    c = ev.confusion
    return {
        "version": 0.0,
        "dataset": {"item_count": ev.rows, "positive_count": ev.positives},
        "binary_classification_metrics": {
            **metric,
            "confusion_matrix": {"1": {"1": c["tp"], "0": c["fn"]}, "0": {"1": c["fp"], "0": c["tn"]}},
        },
    }


def scores_from_document(doc: Any) -> dict[str, float]:
    """Read back what quality_document wrote (a champion's recorded evaluation)."""
    metrics = (doc or {}).get("binary_classification_metrics") or {}
    out = {}
    for name, entry in metrics.items():
        if isinstance(entry, dict) and isinstance(entry.get("value"), int | float) and not math.isnan(entry["value"]):
            out[name] = float(entry["value"])
    return out


def read_csv_prefix(s3: Any, uri: str, parameter: str) -> pd.DataFrame:
    loc = aws.S3Uri.parse(uri, parameter)
    keys = [k for k in aws.list_keys(s3, loc) if k.endswith(".csv")] if uri.endswith("/") else [loc.key]
    if not keys:
        raise InputError(parameter, f"no CSV objects under {uri}")
    frames = [pd.read_csv(io.BytesIO(aws.get_bytes(s3, aws.S3Uri(loc.bucket, k)))) for k in sorted(keys)]
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class Holdout:
    """The model's scores on the held-out test split, with the labels."""

    labels: np.ndarray
    scores: np.ndarray
    info: dict[str, Any]


def score_holdout(s3: Any, model_uri: str, test_uri: str) -> Holdout:
    from kfp_pipelines.training import mlp

    with tempfile.TemporaryDirectory() as tmp:
        aws.extract_tar_gz(aws.get_bytes(s3, aws.S3Uri.parse(model_uri, "model")), Path(tmp))
        path = Path(tmp) / mlp.MODEL_FILE
        if not path.exists():
            raise StepFailed(f"{model_uri} has no {mlp.MODEL_FILE}")
        model, info = mlp.load(path)
    test = read_csv_prefix(s3, test_uri, "test_data")
    features, target = list(info["feature_names"]), str(info["target"])
    missing = [c for c in [*features, target] if c not in test.columns]
    if missing:
        raise InputError("test_data", f"columns the model was trained on are missing: {', '.join(missing)}")
    proba = mlp.predict_proba(model, test[features].to_numpy(dtype=np.float32))
    return Holdout(test[target].to_numpy(), np.asarray(proba, dtype=np.float64), info)


def evaluate(s3: Any, model_uri: str, test_uri: str) -> tuple[Evaluation, dict[str, Any]]:
    holdout = score_holdout(s3, model_uri, test_uri)
    ev = score(holdout.labels, holdout.scores, float(holdout.info["threshold"]))
    log.info("evaluated on %d test rows (%d positive): %s", ev.rows, ev.positives,
             ", ".join(f"{k}={ev.scores[k]:.4f}" for k in METRICS))
    return ev, holdout.info


def calibration_for(labels: np.ndarray, scores: np.ndarray) -> Calibration | None:
    """The isotonic calibration of a binary classifier's scores on the holdout (kanari.judging.cbpe), or
    None when the task is not binary classification (labels other than 0/1, or scores that are not
    probabilities): CBPE's estimates are defined for calibrated binary scores only."""
    from kanari.judging.cbpe import fit_calibration

    y = np.asarray(labels)
    s = np.asarray(scores)
    numeric = np.issubdtype(y.dtype, np.number) or y.dtype == bool
    if (not numeric or y.ndim != 1 or s.ndim != 1 or not np.isin(y, (0, 1)).all()
            or not (np.isfinite(s).all() and ((s >= 0) & (s <= 1)).all())):
        return None
    if y.min() == y.max():
        raise InputError("test_data", "the test split has a single class; the scores cannot be calibrated")
    return fit_calibration(s, y.astype(int))


def calibration_document(calibration: Calibration, threshold: float, holdout_uri: str, rows: int,
                         positives: int) -> dict[str, Any]:
    """calibration.json: the map (read back by kanari.registry_metadata.read_calibration) and what it was
    fitted on; the model's decision threshold travels with it, since CBPE estimates the model's own decisions."""
    return {**calibration.to_dict(), "threshold": float(threshold), "fitted_on": holdout_uri, "rows": int(rows),
            "positives": int(positives)}
