"""The model and the imbalance-aware scores shared by train.py and the evaluation step.

train.py runs inside the PyTorch Neuron training container with only its source directory, so this
module depends on torch and numpy alone (no scikit-learn there); the evaluation step cross-checks
these scores against scikit-learn's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

MODEL_FILE = "model.pt"


class TabularMLP(nn.Module):
    """A small MLP for standardised tabular features; the scaling travels with the weights."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int, hidden: int, mean: torch.Tensor, std: torch.Tensor, dropout: float = 0.1):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, n_features).float())
        self.register_buffer("std", std.reshape(1, n_features).float())
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)


def save(path: Any, model: TabularMLP, *, feature_names: list[str], target: str, threshold: float, hidden: int) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "state_dict": state,
            "n_features": len(feature_names),
            "hidden": hidden,
            "feature_names": feature_names,
            "target": target,
            "threshold": threshold,
        },
        path,
    )


def load(path: Any) -> tuple[TabularMLP, dict[str, Any]]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    n = int(blob["n_features"])
    model = TabularMLP(n, int(blob["hidden"]), torch.zeros(n), torch.ones(n))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, {k: v for k, v in blob.items() if k != "state_dict"}


def predict_proba(model: TabularMLP, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(torch.as_tensor(x, dtype=torch.float32))).numpy()


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as a step function (scikit-learn's average_precision_score)."""
    y = np.asarray(y).astype(int)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, y = np.asarray(scores)[order], y[order]
    # One point per distinct score: ties are one threshold.
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    pred = np.asarray(scores) >= threshold
    y = np.asarray(y).astype(bool)
    return {
        "tp": int(np.sum(pred & y)),
        "fp": int(np.sum(pred & ~y)),
        "fn": int(np.sum(~pred & y)),
        "tn": int(np.sum(~pred & ~y)),
    }


def threshold_scores(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    c = confusion(y, scores, threshold)
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The decision threshold with the best F1 (ties: the higher threshold, fewer false alarms)."""
    best_t, best_f1 = 0.5, -1.0
    for t in sorted(set(np.round(np.asarray(scores, dtype=float), 6)), reverse=True):
        f1 = threshold_scores(y, scores, t)["f1"]
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t
