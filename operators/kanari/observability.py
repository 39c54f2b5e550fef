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
from kanari.api.v1alpha1 import ModelDeploymentStatus, Phase

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


def observe(namespace: str, name: str, status: ModelDeploymentStatus) -> None:
    """Update the gauges from a status, and count a promotion or rollback it shows for the first time."""
    PHASE.labels(namespace, name).state(status.phase)
    CANARY_WEIGHT.labels(namespace, name).set(status.canaryWeight if status.canaryModel else 0)
    ROLLOUT_STEP.labels(namespace, name).set(status.currentStep)
    for result in status.lastAnalysis:
        if result.value is not None:
            ANALYSIS_VALUE.labels(namespace, name, result.name).set(result.value)
        ANALYSIS_VERDICT.labels(namespace, name, result.name).state(result.verdict)
    cap = status.capacity
    live = cap is not None and status.canaryModel is not None and cap.revision == status.canaryModel.revision
    CAPACITY_PENDING.labels(namespace, name).set(1 if live and cap and cap.pending else 0)
    CAPACITY_NEEDED.labels(namespace, name).set(cap.neededCores if live and cap else 0)
    CAPACITY_FREE.labels(namespace, name).set(cap.freeCores if live and cap else 0)
    key = (namespace, name)
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


def forget(namespace: str, name: str, metrics: tuple[str, ...] = ()) -> None:
    """Drop a deleted ModelDeployment's series (its analysis metric names in `metrics`)."""
    _LAST.pop((namespace, name), None)
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
