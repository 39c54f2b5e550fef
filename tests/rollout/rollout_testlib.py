"""Helpers for the rollout tests: specs, model refs, and a driver that checks restart safety on every call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kanari.api.v1alpha1 import MetricResult, ModelDeploymentSpec, ModelDeploymentStatus, ModelRef, parse_spec
from kanari.rollout.engine import RolloutDecision, RolloutObservation, analysis_due, decide

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
METRICS = [
    {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.99}},
    {"name": "p99", "template": "request-latency-p99", "thresholdRange": {"max": 0.25}},
]


def make_spec(version: str = "v1", rollout: dict[str, Any] | None = None, **extra: Any) -> ModelDeploymentSpec:
    return parse_spec({"model": {"storageUri": f"s3://models/fraud/{version}", "format": "sklearn"},
                       "serving": {"accelerator": "cpu"}, "rollout": rollout or {}, **extra})


def ref(spec: ModelDeploymentSpec) -> ModelRef:
    return ModelRef(revision=spec.rollout_revision(), version=spec.model.display_version(),
                    storageUri=spec.model.storageUri or "")


def results(spec: ModelDeploymentSpec, verdict: str = "Successful", **per_metric: str) -> list[MetricResult]:
    assert spec.rollout.analysis is not None
    out = []
    for m in spec.rollout.analysis.metrics:
        v = per_metric.get(m.name.replace("-", "_"), verdict)
        value = {"Successful": 0.999, "Failed": 0.5}.get(v)
        out.append(MetricResult(name=m.name, value=value, stableValue=0.998, threshold=">= 0.99",
                                verdict=v,  # type: ignore[arg-type]
                                sampleCount=500, message=f"{m.name}: {v.lower()} value {value}"))
    return out


def run_of(status: ModelDeploymentStatus, name: str):
    return next(r for r in status.analysisRuns if r.name == name)


def metric_of(status: ModelDeploymentStatus, run: str, metric: str):
    return next(m for m in run_of(status, run).metrics if m.name == metric)


def pauses(status: ModelDeploymentStatus) -> list[str]:
    return [p.reason for p in status.pauseConditions]


def same(a: RolloutDecision, b: RolloutDecision) -> bool:
    return (a.status == b.status and a.stable == b.stable and a.canary == b.canary
            and a.canary_weight == b.canary_weight)


class Driver:
    """Calls decide() like the controller: status round-trips through JSON (the API server), and every
    call is repeated with its own output to prove a restart or a duplicate event changes nothing."""

    def __init__(self, spec: ModelDeploymentSpec, status: ModelDeploymentStatus | None = None):
        self.spec = spec
        self.status = status or ModelDeploymentStatus()
        self.now = T0
        self.decisions: list[RolloutDecision] = []

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def due(self) -> bool:
        return analysis_due(self.spec, self.status, self.now)

    def step(self, stable_ready: bool = True, canary_ready: bool = True,
             measurement: list[MetricResult] | None = None, action: str | None = None) -> RolloutDecision:
        obs = RolloutObservation(now=self.now, desired=ref(self.spec), stable_ready=stable_ready,
                          canary_ready=canary_ready, measurement=measurement, action=action)
        d = decide(self.spec, self.status, obs, 3)
        stored = ModelDeploymentStatus.model_validate(d.status.model_dump(mode="json"))
        again = decide(self.spec, stored, obs, 3)
        assert same(d, again), f"not idempotent:\n{d.status}\n{again.status}"
        assert again.events == [], f"a repeated call emitted {again.events}"
        self.status = stored
        self.decisions.append(d)
        return d


def reasons(d: RolloutDecision) -> list[str]:
    return [e.reason for e in d.events]
