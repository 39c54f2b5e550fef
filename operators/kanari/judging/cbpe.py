"""Label-free performance estimates for a binary classifier: confidence-based performance estimation
(CBPE, as NannyML's), from the scores the KServe payload logger already captures.

If a score s is calibrated, P(label = 1 | s) = s, so every served prediction contributes its expected
share to the confusion matrix: a predicted positive (s >= threshold) is a true positive with probability
s and a false positive with probability 1 - s; a predicted negative is a false negative with probability
s. Precision, recall and F1 follow from the expected counts; ROC-AUC is the probability that a random
positive outscores a random negative, each row weighing s as a positive and 1 - s as a negative.

Guarantee (and its limit): the estimate is unbiased for the realised metric as long as the calibration
holds on the new data, i.e. under covariate shift (P(x) moves, P(y | x) does not). A change in P(y | x)
(concept drift) is invisible to it by construction: that is what delayed ground truth is for.

The model's raw scores are rarely calibrated, so the pipeline fits an isotonic calibration on the
holdout split (fit_calibration) and stores it beside the model (calibration.json); estimates apply it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CALIBRATION = "calibration.json"


def _scores(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(arr):
        raise ValueError(f"{what}: no scores")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} scores are not probabilities in [0, 1] (e.g. {arr[bad][0]!r})")
    return arr


@dataclass(frozen=True)
class Calibration:
    """A monotone map from raw score to P(label = 1): piecewise linear through (x, y), clipped."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    method: str = "isotonic"

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.x) < 1:
            raise ValueError("calibration: x and y need the same, non-zero length")
        xs, ys = np.asarray(self.x), np.asarray(self.y)
        if not (np.all(np.isfinite(xs)) and np.all(np.diff(xs) >= 0)):
            raise ValueError("calibration: x must be finite and ascending")
        if not (np.all((ys >= 0) & (ys <= 1)) and np.all(np.diff(ys) >= 0)):
            raise ValueError("calibration: y must be ascending probabilities in [0, 1]")

    def apply(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.clip(np.interp(_scores(scores, "scores"), self.x, self.y), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Calibration:
        try:
            return cls(tuple(float(v) for v in doc["x"]), tuple(float(v) for v in doc["y"]), str(doc.get("method", "")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{CALIBRATION}: needs x and y lists ({exc})") from None


def fit_calibration(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> Calibration:
    """Isotonic regression of the labels on the scores (scikit-learn), on held-out data."""
    from sklearn.isotonic import IsotonicRegression

    s = _scores(scores, "scores")
    y = np.asarray(labels).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"labels: {len(y)} labels for {len(s)} scores")
    if not np.isin(y, (0, 1)).all() or y.min() == y.max():
        raise ValueError("labels: need both classes, as 0 and 1")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    return Calibration(tuple(float(v) for v in iso.X_thresholds_), tuple(float(v) for v in iso.y_thresholds_))


@dataclass(frozen=True)
class Estimate:
    rows: int
    expected_positives: float
    precision: float | None  # None: no predicted positives
    recall: float | None  # None: no expected positives
    f1: float | None
    roc_auc: float | None  # None: all expected mass on one class

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    raw: Sequence[float] | np.ndarray, calibration: Calibration | None, threshold: float
) -> Estimate:
    """Expected precision, recall, F1 and ROC-AUC of the model's own decisions (raw score >= threshold)
    and of its raw ranking, from the calibrated probabilities alone (no calibration: raw is calibrated)."""
    r = _scores(raw, "scores")
    p = calibration.apply(r) if calibration is not None else r
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold: {threshold} is not in [0, 1]")
    predicted = r >= threshold
    tp = float(p[predicted].sum())
    fp = float((1 - p[predicted]).sum())
    fn = float(p[~predicted].sum())
    positives = float(p.sum())
    precision = tp / (tp + fp) if predicted.any() else None
    recall = tp / positives if positives > 0 else None
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else None
    return Estimate(len(p), positives, precision, recall, f1, expected_auc(p, r))


def expected_auc(p: np.ndarray, ranking: np.ndarray | None = None) -> float | None:
    """P(a positive outranks a negative, ties half), row i a positive of weight p_i and a negative of
    weight 1 - p_i, ranked by `ranking` (default: p itself), in O(n log n)."""
    pos_w, neg_w = p, 1.0 - p
    total_pos, total_neg = pos_w.sum(), neg_w.sum()
    if total_pos <= 0 or total_neg <= 0:
        return None
    values, inverse = np.unique(p if ranking is None else ranking, return_inverse=True)
    pos_at = np.bincount(inverse, weights=pos_w, minlength=len(values))
    neg_at = np.bincount(inverse, weights=neg_w, minlength=len(values))
    neg_below = np.cumsum(neg_at) - neg_at
    # A row is never compared with itself: remove the self pair p_i (1 - p_i) from the tie term.
    self_pairs = np.bincount(inverse, weights=pos_w * neg_w, minlength=len(values))
    wins = np.sum(pos_at * neg_below) + 0.5 * np.sum(pos_at * neg_at - self_pairs)
    total = total_pos * total_neg - float(np.sum(pos_w * neg_w))
    return float(wins / total) if total > 0 else None
