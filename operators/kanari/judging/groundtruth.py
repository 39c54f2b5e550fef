"""Delayed ground truth: predictions joined with labels that arrive later, keyed by the inference id.

The KServe payload logger sends every prediction with its CloudEvent id (the inference id); labels
(chargebacks, clicks, reviews) arrive hours later through an authenticated endpoint with the same id.
The join store is bounded twice: a prediction waits for its label at most `ttl` seconds, and at most
`max_pending` predictions wait at once (the oldest are dropped first and counted, never silently).
A label that finds no prediction waits for one the same way (labels may overtake the logger).

Joined pairs feed realised quality per revision: a confusion matrix and, for PR-AUC, a bounded
reservoir of (score, label) pairs (binary classification), or running error sums (regression: RMSE,
MAE). Pure data structure: the HTTP endpoint (kanari.judging.labels) and the monitor feed it.

Durability is the caller's (kanari.monitor.joinstate): with `journal=True` every mutation is appended to
`changes` (what to write), and `restore` rebuilds a store from what was written. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np

Task = Literal["binary", "regression"]
RESERVOIR = 10_000
_Entry = TypeVar("_Entry")  # a waiting prediction (_Pending) or label ((label, at))


@dataclass
class _Pending:
    revision: str
    value: float  # score (binary) or prediction (regression)
    at: float


@dataclass
class Quality:
    """Realised quality of one revision from its joined pairs."""

    task: Task
    threshold: float = 0.5
    joined: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    abs_error: float = 0.0
    sq_error: float = 0.0
    reservoir: list[tuple[float, int]] = field(default_factory=list)
    # Reservoir slots written since the caller last drained them (kanari.monitor.joinstate persists them).
    written: list[int] | None = field(default=None, repr=False)

    def add(self, value: float, label: float) -> None:
        self.joined += 1
        if self.task == "regression":
            err = value - label
            self.abs_error += abs(err)
            self.sq_error += err * err
            return
        y = int(label)
        predicted = value >= self.threshold
        self.tp += int(predicted and y == 1)
        self.fp += int(predicted and y == 0)
        self.fn += int(not predicted and y == 1)
        self.tn += int(not predicted and y == 0)
        # Reservoir sampling (Vitter's algorithm R): a uniform sample of all pairs in bounded memory.
        if len(self.reservoir) < RESERVOIR:
            j = len(self.reservoir)
            self.reservoir.append((value, y))
        else:
            j = _slot(self.joined)
            if j >= RESERVOIR:
                return
            self.reservoir[j] = (value, y)
        if self.written is not None:
            self.written.append(j)

    def denominators(self) -> dict[str, int]:
        """The rows behind each figure of metrics(): what a confidence bound on it is taken over."""
        if self.task == "regression":
            return {"rmse": self.joined, "mae": self.joined}
        return {"recall": self.tp + self.fn, "precision": self.tp + self.fp, "f1": 2 * self.tp + self.fp + self.fn,
                "pr_auc": len(self.reservoir)}

    def metrics(self) -> dict[str, float]:
        if not self.joined:
            return {}
        if self.task == "regression":
            return {"rmse": math.sqrt(self.sq_error / self.joined), "mae": self.abs_error / self.joined}
        out: dict[str, float] = {}
        if self.tp + self.fn:
            out["recall"] = self.tp / (self.tp + self.fn)
        if self.tp + self.fp:
            out["precision"] = self.tp / (self.tp + self.fp)
        if 2 * self.tp + self.fp + self.fn:
            out["f1"] = 2 * self.tp / (2 * self.tp + self.fp + self.fn)
        labels = np.array([y for _, y in self.reservoir])
        if labels.size and 0 < labels.sum() < labels.size:
            from sklearn.metrics import average_precision_score

            out["pr_auc"] = float(average_precision_score(labels, np.array([s for s, _ in self.reservoir])))
        return out


def _slot(n: int) -> int:
    """Algorithm R's uniform draw from [0, n) for the n-th pair, a function of n alone: a store rebuilt after a
    restart samples exactly as the one that was running (a seeded generator's state would have to be saved)."""
    digest = hashlib.blake2b(n.to_bytes(8, "little"), digest_size=8, person=b"kanari-rsv").digest()
    return int.from_bytes(digest, "little") % n


Change = tuple[object, ...]


class JoinStore:
    """Predictions and labels keyed by inference id, joined on arrival, bounded in time and size."""

    def __init__(
        self, *, task: Task, ttl: float, max_pending: int, threshold: float = 0.5,
        clock: Callable[[], float] | None = None, journal: bool = False,
    ):
        if ttl <= 0 or max_pending < 1:
            raise ValueError(f"ttl ({ttl}) and max_pending ({max_pending}) must be positive")
        import time

        self.task = task
        self.ttl = ttl
        self.max_pending = max_pending
        self.threshold = threshold
        self.clock = clock or time.monotonic
        self.predictions: OrderedDict[str, _Pending] = OrderedDict()
        self.labels: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.quality: dict[str, Quality] = {}
        self.dropped = {"expired": 0, "evicted": 0, "duplicate": 0}
        # Ids joined lately (bounded like the pending tables): a label delivered twice (an HTTP retry, a label
        # file read again) is a duplicate, never a second count nor a half waiting for a prediction.
        self.joined_ids: OrderedDict[str, None] = OrderedDict()
        # The mutations since the journal was last drained, in order: ("prediction", id, revision, value, at),
        # ("label", id, label, at), ("-prediction", id), ("-label", id), ("joined", id), ("-joined", id),
        # ("quality", revision), ("-quality", revision). None: not journalled.
        self.changes: list[Change] | None = [] if journal else None

    def _log(self, *change: object) -> None:
        if self.changes is not None:
            self.changes.append(change)

    def _joined(self, inference_id: str) -> None:
        self.joined_ids[inference_id] = None
        self._log("joined", inference_id)
        while len(self.joined_ids) > self.max_pending:
            self._log("-joined", self.joined_ids.popitem(last=False)[0])

    def _quality(self, revision: str) -> Quality:
        if revision not in self.quality:
            self.quality[revision] = Quality(self.task, self.threshold,
                                             written=[] if self.changes is not None else None)
        self._log("quality", revision)
        return self.quality[revision]

    def _pop(self, table: OrderedDict[str, _Entry], kind: str, inference_id: str | None = None) -> _Entry | None:
        """Take an entry out of `table` (predictions or labels) and journal it as `-<kind>`: the one named, or
        without a name the oldest (the table must not be empty then); None when the named one is not there."""
        if inference_id is None:
            inference_id, entry = table.popitem(last=False)
        else:
            found = table.pop(inference_id, None)
            if found is None:
                return None
            entry = found
        self._log(f"-{kind}", inference_id)
        return entry

    def _expire(self, now: float) -> None:
        # Both tables are in arrival order: the oldest entry is first.
        while self.predictions and now - next(iter(self.predictions.values())).at > self.ttl:
            self._pop(self.predictions, "prediction")
            self.dropped["expired"] += 1
        while self.labels and now - next(iter(self.labels.values()))[1] > self.ttl:
            self._pop(self.labels, "label")
            self.dropped["expired"] += 1

    def _bound(self) -> None:
        while len(self.predictions) > self.max_pending:
            self._pop(self.predictions, "prediction")
            self.dropped["evicted"] += 1
        while len(self.labels) > self.max_pending:
            self._pop(self.labels, "label")
            self.dropped["evicted"] += 1

    def prediction(self, inference_id: str, revision: str, value: float) -> bool:
        """Record a served prediction; True when its label was already waiting (joined now)."""
        if not inference_id or not math.isfinite(value):
            raise ValueError("prediction: needs an inference id and a finite value")
        now = self.clock()
        self._expire(now)
        label = self._pop(self.labels, "label", inference_id)
        if label is not None:
            self._quality(revision).add(value, label[0])
            self._joined(inference_id)
            return True
        if inference_id in self.predictions or inference_id in self.joined_ids:
            self.dropped["duplicate"] += 1
            return False
        self.predictions[inference_id] = _Pending(revision, value, now)
        self._log("prediction", inference_id, revision, value, now)
        self._bound()
        return False

    def label(self, inference_id: str, label: float) -> str | None:
        """Record a label; the revision it joined, or None while its prediction has not arrived."""
        if not inference_id or not math.isfinite(label):
            raise ValueError("label: needs an inference id and a finite value")
        if self.task == "binary" and label not in (0, 1):
            raise ValueError(f"label: {label!r} is not 0 or 1")
        now = self.clock()
        self._expire(now)
        pending = self._pop(self.predictions, "prediction", inference_id)
        if pending is not None:
            self._quality(pending.revision).add(pending.value, label)
            self._joined(inference_id)
            return pending.revision
        if inference_id in self.labels or inference_id in self.joined_ids:
            self.dropped["duplicate"] += 1
            return None
        self.labels[inference_id] = (label, now)
        self._log("label", inference_id, label, now)
        self._bound()
        return None

    def expire(self) -> None:
        self._expire(self.clock())

    def drop_revision(self, revision: str) -> None:
        """Forget a revision's figures (it is no longer served)."""
        if self.quality.pop(revision, None) is not None:
            self._log("-quality", revision)

    def restore(
        self, predictions: list[tuple[str, str, float, float]], labels: list[tuple[str, float, float]],
        joined: list[str], quality: dict[str, Quality], dropped: dict[str, int],
    ) -> None:
        """Rebuild the store from what its journal wrote (each list in arrival order), then apply the bounds
        of this run: a smaller --max-label-pending after a restart evicts (and counts) the oldest."""
        for inference_id, revision, value, at in predictions:
            self.predictions[inference_id] = _Pending(revision, value, at)
        for inference_id, label, at in labels:
            self.labels[inference_id] = (label, at)
        for inference_id in joined:
            self.joined_ids[inference_id] = None
        for revision, q in quality.items():
            q.written = [] if self.changes is not None else None
            self.quality[revision] = q
        self.dropped.update({k: v for k, v in dropped.items() if k in self.dropped})
        self._bound()
        while len(self.joined_ids) > self.max_pending:
            self._log("-joined", self.joined_ids.popitem(last=False)[0])

    def pending(self) -> int:
        return len(self.predictions) + len(self.labels)
