"""The controller's own Prometheus metrics.

They live in a dedicated CollectorRegistry (REGISTRY), created once at import, so importing this module
next to other libraries' default-registry metrics never raises "Duplicated timeseries"; `serve(port)`
exposes it. The kopf handlers time reconciles into RECONCILE_DURATION, count failures in
RECONCILE_ERRORS{kind}, and call `observe()` with each status they write.
"""

from __future__ import annotations

from contextlib import suppress
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, start_http_server

from kanari.api.conditions import get_condition
from kanari.api.v1alpha1 import Measurement, ModelDeploymentStatus, Phase

REGISTRY = CollectorRegistry()
VERDICTS = ("Successful", "Failed", "Inconclusive", "Error")
_MD = ("namespace", "name")

PHASE = Enum(
    "kanari_modeldeployment_phase", "Phase of each ModelDeployment.", _MD,
    states=list(get_args(Phase)), registry=REGISTRY,
)
CANARY_WEIGHT = Gauge(
    "kanari_canary_weight_percent", "Percent of traffic sent to the canary.", _MD, registry=REGISTRY
)
ROLLOUT_STEP = Gauge("kanari_rollout_step", "Current rollout step (0-based).", _MD, registry=REGISTRY)
ANALYSIS_VALUE = Gauge(
    "kanari_analysis_value", "Last measured value of each analysis metric.", (*_MD, "metric"), registry=REGISTRY
)
ANALYSIS_VERDICT = Enum(
    "kanari_analysis_verdict", "Last verdict of each analysis metric.", (*_MD, "metric"),
    states=list(VERDICTS), registry=REGISTRY,
)
ROLLBACKS = Counter("kanari_rollbacks", "Rollouts rolled back, by reason.", (*_MD, "reason"), registry=REGISTRY)
PROMOTIONS = Counter("kanari_promotions", "Rollouts promoted to stable.", _MD, registry=REGISTRY)
CAPACITY_PENDING = Gauge(
    "kanari_capacity_pending", "1 while a rollout waits for NeuronCores (CapacityPending).", _MD, registry=REGISTRY
)
CAPACITY_NEEDED = Gauge(
    "kanari_capacity_needed_neuroncores", "NeuronCores the rollout's next step adds.", _MD, registry=REGISTRY
)
CAPACITY_FREE = Gauge(
    "kanari_capacity_free_neuroncores", "NeuronCores free for the rollout on existing nodes.", _MD, registry=REGISTRY
)
COST_PER_1K = Gauge(
    "kanari_cost_per_1k_inferences", "USD per 1,000 inferences of each served revision (NeuronCore-seconds x price).",
    (*_MD, "revision", "role"), registry=REGISTRY,
)
# Labels `namespace, model, revision` as the drift monitor's gauges (the cold-start-seconds template reads it):
# `revision` is what the analysis templates call a revision, Knative's revision name in Serverless mode.
COLD_START = Gauge(
    "kanari_cold_start_seconds",
    "Per revision: its slowest pod's time from scheduling (PodScheduled) to its first successful warm-up answer.",
    ("namespace", "model", "revision"), registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "kanari_reconcile_duration_seconds", "Time spent in one reconcile.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kanari_reconcile_errors", "Reconciles that failed, by exception type.", ("kind",), registry=REGISTRY
)

# What observe() saw last per ModelDeployment: promotions and rollbacks are counted on the transition,
# so observing the same status again (every reconcile does) counts nothing twice.
_LAST: dict[tuple[str, str], tuple[str, str | None, str | None]] = {}
_ROLLBACK_REASONS: dict[tuple[str, str], set[str]] = {}
_COST_LABELS: dict[tuple[str, str], set[tuple[str, str]]] = {}
# Revisions with a cold-start series, oldest first: the stable's and the canary's are kept (a template
# compares them), older ones dropped.
_COLD_START_REVISIONS: dict[tuple[str, str], list[str]] = {}
COLD_START_KEPT = 2


def observe(namespace: str, name: str, status: ModelDeploymentStatus) -> None:
    """Update the gauges from a status, and count a promotion or rollback it shows for the first time."""
    PHASE.labels(namespace, name).state(status.phase)
    CANARY_WEIGHT.labels(namespace, name).set(status.canaryWeight if status.canaryModel else 0)
    ROLLOUT_STEP.labels(namespace, name).set(status.currentStep)
    for metric, last in latest_measurements(status).items():
        if last.value is not None:
            ANALYSIS_VALUE.labels(namespace, name, metric).set(last.value)
        ANALYSIS_VERDICT.labels(namespace, name, metric).state(last.phase)
    cap = status.capacity
    live = cap is not None and status.canaryModel is not None and cap.revision == status.canaryModel.revision
    CAPACITY_PENDING.labels(namespace, name).set(1 if live and cap and cap.pending else 0)
    CAPACITY_NEEDED.labels(namespace, name).set(cap.neededCores if live and cap else 0)
    CAPACITY_FREE.labels(namespace, name).set(cap.freeCores if live and cap else 0)
    key = (namespace, name)
    costs = {(c.revision, c.role): c.costPer1kInferences for c in status.cost if c.costPer1kInferences is not None}
    for gone in _COST_LABELS.get(key, set()) - set(costs):
        with suppress(KeyError):
            COST_PER_1K.remove(namespace, name, *gone)
    for (revision, role), value in costs.items():
        COST_PER_1K.labels(namespace, name, revision, role).set(value)
    _COST_LABELS[key] = set(costs)
    _observe_cold_start(namespace, name, status)
    now = (
        status.phase,
        status.stableModel.revision if status.stableModel else None,
        status.canaryModel.revision if status.canaryModel else None,
    )
    before = _LAST.get(key)
    _LAST[key] = now
    if before is None or before == now:
        return
    if now[0] == "RolledBack" and before[0] != "RolledBack":
        cond = get_condition(status.conditions, "Progressing")
        reason = cond.reason if cond else "Unknown"
        ROLLBACKS.labels(namespace, name, reason).inc()
        _ROLLBACK_REASONS.setdefault(key, set()).add(reason)
    if now[1] is not None and now[1] == before[2]:
        PROMOTIONS.labels(namespace, name).inc()


def _observe_cold_start(namespace: str, name: str, status: ModelDeploymentStatus) -> None:
    w = status.warmup
    if w is None or w.coldStartSeconds is None or not w.succeededAt:
        return
    revision = w.servingRevision or w.revision
    COLD_START.labels(namespace, name, revision).set(w.coldStartSeconds)
    kept = [r for r in _COLD_START_REVISIONS.get((namespace, name), []) if r != revision] + [revision]
    for gone in kept[:-COLD_START_KEPT]:
        with suppress(KeyError):
            COLD_START.remove(namespace, name, gone)
    _COLD_START_REVISIONS[(namespace, name)] = kept[-COLD_START_KEPT:]


def latest_measurements(status: ModelDeploymentStatus) -> dict[str, Measurement]:
    """Each metric's newest measurement across the analysis runs in status."""
    out: dict[str, Measurement] = {}
    for run in status.analysisRuns:
        for metric in run.metrics:
            if metric.measurements:
                last = metric.measurements[-1]
                if metric.name not in out or last.finishedAt >= out[metric.name].finishedAt:
                    out[metric.name] = last
    return out


def forget(namespace: str, name: str, metrics: tuple[str, ...] = ()) -> None:
    """Drop a deleted ModelDeployment's series (its analysis metric names in `metrics`)."""
    _LAST.pop((namespace, name), None)
    for labels in _COST_LABELS.pop((namespace, name), set()):
        with suppress(KeyError):
            COST_PER_1K.remove(namespace, name, *labels)
    for revision in _COLD_START_REVISIONS.pop((namespace, name), []):
        with suppress(KeyError):
            COLD_START.remove(namespace, name, revision)
    for reason in _ROLLBACK_REASONS.pop((namespace, name), set()):
        ROLLBACKS.remove(namespace, name, reason)
    for family in (PHASE, CANARY_WEIGHT, ROLLOUT_STEP, PROMOTIONS, CAPACITY_PENDING, CAPACITY_NEEDED, CAPACITY_FREE):
        with suppress(KeyError):
            family.remove(namespace, name)
    for metric in metrics:
        for per_metric in (ANALYSIS_VALUE, ANALYSIS_VERDICT):
            with suppress(KeyError):
                per_metric.remove(namespace, name, metric)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=REGISTRY)
