"""Delayed ground truth as the drift monitor serves it: what a label batch or a label file may contain,
the realised-quality and CBPE gauges. The alert on a realised-quality drop is the controller's
(kanari.controller.quality_rules), the CBPE analysis templates the rollout's (kanari.rollout.templates).

The monitor (kanari.monitor.server) owns the HTTP endpoint and the S3 label drop (kanari.monitor.labeldrop);
both parse through `parse_labels`, so a bad item is refused the same way from either (its index or file
row and its field, the whole batch untouched: a retried batch is never half-applied).

  POST /v1/labels/<namespace>/<name>   {"labels": [{"id": "<inference id>", "label": 1}, ...]}

Gauges (one family each, every model's series beside the others):
  kanari_realised_quality{namespace,model,revision,metric}              from joined labels
  kanari_realised_quality_denominator{namespace,model,revision,metric}  the rows behind each figure
  kanari_estimated_quality{namespace,model,revision,metric}             CBPE, only with a calibration
  kanari_estimated_quality_available{namespace,model,revision}          0 when there is no calibration
  kanari_estimated_quality_rows{namespace,model,revision}               the scored rows behind the estimate
  kanari_groundtruth_joined / _pending / _dropped
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from kanari.judging.cbpe import Estimate
from kanari.judging.groundtruth import JoinStore, Task

MAX_ITEMS = 10_000
ESTIMATED = ("precision", "recall", "f1", "roc_auc")


def parse_labels(entries: Any, task: Task, where: str = "labels") -> list[tuple[str, float]]:
    """(inference id, label) pairs; ValueError naming the item and field of the first bad one."""
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list")
    if len(entries) > MAX_ITEMS:
        raise ValueError(f"{where}: more than {MAX_ITEMS} items")
    return [parse_label(e, task, f"{where}[{i}]") for i, e in enumerate(entries)]


def parse_label(entry: Any, task: Task, where: str) -> tuple[str, float]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with id and label")
    ident = entry.get("id")
    if not isinstance(ident, str) or not ident or len(ident) > 256:
        raise ValueError(f"{where}.id: missing, empty or longer than 256 characters")
    raw = entry.get("label")
    if isinstance(raw, str):  # CSV cells arrive as text
        text = raw
        try:
            raw = float(text)
        except ValueError:
            raise ValueError(f"{where}.label: {text[:20]!r} is not a number") from None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"{where}.label: missing or not a number")
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{where}.label: not a finite number")
    if task == "binary" and value not in (0, 1):
        raise ValueError(f"{where}.label: {value:g} is not 0 or 1")
    return ident, value


class QualityMetrics:
    """The ground-truth and CBPE gauges of every model, on the monitor's registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ["namespace", "model", "revision", "metric"]
        self.quality = Gauge("kanari_realised_quality", "Realised model quality from delayed labels",
                             labels, registry=self.registry)
        self.denominator = Gauge("kanari_realised_quality_denominator",
                                 "Rows behind each realised figure (recall: labelled positives; precision: predicted "
                                 "positives; others: joined rows)", labels, registry=self.registry)
        self.joined = Gauge("kanari_groundtruth_joined", "Predictions joined with their label",
                            ["namespace", "model", "revision"], registry=self.registry)
        self.pending = Gauge("kanari_groundtruth_pending", "Predictions and labels waiting for their other half",
                             ["namespace", "model"], registry=self.registry)
        self.dropped = Counter("kanari_groundtruth_dropped", "Halves dropped: expired, evicted or duplicate",
                               ["namespace", "model", "reason"], registry=self.registry)
        self.estimated = Gauge("kanari_estimated_quality",
                               "Label-free quality estimate (CBPE) from calibrated scores of served predictions",
                               labels, registry=self.registry)
        self.available = Gauge("kanari_estimated_quality_available",
                               "1: kanari_estimated_quality is exported; 0: it is not (no calibration registered "
                               "with the model package, or too few scores)",
                               ["namespace", "model", "revision"], registry=self.registry)
        self.estimated_rows = Gauge("kanari_estimated_quality_rows",
                                    "Scored predictions behind kanari_estimated_quality (what a CBPE analysis "
                                    "template checks against minSampleCount)",
                                    ["namespace", "model", "revision"], registry=self.registry)
        self._dropped_seen: dict[tuple[str, str, str], int] = {}
        self._series: dict[tuple[str, str], set[tuple[Any, tuple[str, ...]]]] = {}

    def _set(self, gauge: Gauge, key: tuple[str, ...], value: float) -> None:
        gauge.labels(*key).set(value)
        self._series.setdefault((key[0], key[1]), set()).add((gauge, key))

    def _remove(self, gauge: Gauge, key: tuple[str, ...]) -> None:
        series = self._series.get((key[0], key[1]), set())
        if (gauge, key) in series:
            gauge.remove(*key)
            series.discard((gauge, key))

    def set_estimate(self, namespace: str, model: str, revision: str, estimate: Estimate | None) -> None:
        """Export a CBPE estimate beside the realised figures (same metric names, so one panel shows both);
        None: unavailable, and no number is left standing."""
        self._set(self.available, (namespace, model, revision), 1.0 if estimate is not None else 0.0)
        if estimate is not None:
            self._set(self.estimated_rows, (namespace, model, revision), estimate.rows)
        else:
            self._remove(self.estimated_rows, (namespace, model, revision))
        for metric in ESTIMATED:
            value = getattr(estimate, metric) if estimate is not None else None
            key = (namespace, model, revision, metric)
            if value is not None:
                self._set(self.estimated, key, value)
            else:  # undefined now (no calibration, no predicted positives): no stale figure
                self._remove(self.estimated, key)

    def update(self, namespace: str, model: str, store: JoinStore) -> None:
        for revision, quality in store.quality.items():
            self._set(self.joined, (namespace, model, revision), quality.joined)
            denominators = quality.denominators()
            for metric, value in quality.metrics().items():
                self._set(self.quality, (namespace, model, revision, metric), value)
                self._set(self.denominator, (namespace, model, revision, metric), denominators[metric])
        self._set(self.pending, (namespace, model), store.pending())
        for reason, total in store.dropped.items():
            key = (namespace, model, reason)
            delta = total - self._dropped_seen.get(key, 0)
            if delta:
                self.dropped.labels(*key).inc(delta)
                self._series.setdefault((namespace, model), set()).add((self.dropped, key))
            self._dropped_seen[key] = total

    def forget_revision(self, namespace: str, model: str, revision: str) -> None:
        per_revision = (self.joined, self.quality, self.denominator, self.estimated, self.available, self.estimated_rows)
        series = self._series.get((namespace, model), set())
        for gauge, key in [(g, k) for g, k in series if any(g is p for p in per_revision) and k[2] == revision]:
            gauge.remove(*key)
            series.discard((gauge, key))

    def forget(self, namespace: str, model: str) -> None:
        """A model no longer labelled: its series go (the families stay bounded by the monitored models)."""
        for gauge, key in self._series.pop((namespace, model), set()):
            gauge.remove(*key)
        self._dropped_seen = {k: v for k, v in self._dropped_seen.items() if k[:2] != (namespace, model)}

