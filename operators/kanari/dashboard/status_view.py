"""The one place the dashboard reads ModelDeployment status: both today's shape and the contract's.

Today's status keeps `lastAnalysis`, `analysisHistory` and `rollout.pausedReason`; the rollout rework
(CONTRACT.md) stores `analysisRuns` with per-metric `measurements` and a list of `pauseConditions`. The views
read a `RolloutStatus` built here, so they work before and after that lands. The status comes from the API
server, written by whatever operator version runs there: nothing in it is trusted to have the right type, and
a malformed field reads as absent instead of failing the whole page.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

VERDICTS = ("Successful", "Failed", "Inconclusive", "Error", "Running", "Pending")
# The verdict of a run with several measurements: the worst one decides.
_SEVERITY = {"Failed": 5, "Error": 4, "Inconclusive": 3, "Running": 2, "Pending": 1, "Successful": 0}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        else:
            return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any, default: int = 0) -> int:
    n = _num(value)
    return int(n) if n is not None and abs(n) < 2**53 else default


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _verdict(value: Any) -> str:
    return value if value in VERDICTS else "Pending"


@dataclass
class Measurement:
    phase: str
    value: float | None = None
    stableValue: float | None = None
    sampleCount: float | None = None
    threshold: str = ""
    query: str = ""
    message: str = ""
    at: str = ""


@dataclass
class MetricRun:
    name: str
    dryRun: bool = False
    count: int = 0
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def latest(self) -> Measurement | None:
        return self.measurements[-1] if self.measurements else None


@dataclass
class AnalysisRun:
    name: str
    revision: str
    step: int | None
    phase: str
    startedAt: str = ""
    metrics: list[MetricRun] = field(default_factory=list)


@dataclass
class PauseCondition:
    reason: str
    startTime: str = ""
    message: str = ""


@dataclass
class ModelVersion:
    revision: str
    version: str = ""
    modelPackageArn: str = ""
    storageUri: str = ""

    @property
    def label(self) -> str:
        return self.version or self.revision


@dataclass
class RolloutStatus:
    phase: str = "Pending"
    message: str = ""
    observedGeneration: int | None = None
    currentStep: int = 0
    canaryWeight: int = 0
    stable: ModelVersion | None = None
    canary: ModelVersion | None = None
    pauseConditions: list[PauseCondition] = field(default_factory=list)
    abortedRevision: str | None = None
    lastAction: str | None = None
    analysisRuns: list[AnalysisRun] = field(default_factory=list)
    conditions: list[dict[str, str]] = field(default_factory=list)
    lineage: dict[str, str] = field(default_factory=dict)
    retraining: list[dict[str, str]] = field(default_factory=list)

    @property
    def stable_weight(self) -> int:
        return 100 - self.canaryWeight if self.canary else 100

    @property
    def canary_weight(self) -> int:
        return self.canaryWeight if self.canary else 0

    def verdict(self) -> str:
        """The latest analysis verdict of the revision being rolled out (or last rolled out); '' if none."""
        if not self.analysisRuns:
            return ""
        revision = self.canary.revision if self.canary else self.analysisRuns[-1].revision
        runs = [r for r in self.analysisRuns if r.revision == revision and r.name != "background"]
        return (runs or self.analysisRuns)[-1].phase

    def failing(self) -> tuple[AnalysisRun, MetricRun, Measurement] | None:
        """The measurement that failed the latest failed run: what a rollback is explained by."""
        for run in reversed(self.analysisRuns):
            if run.phase != "Failed":
                continue
            for metric in run.metrics:
                for m in reversed(metric.measurements):
                    if m.phase == "Failed":
                        return run, metric, m
        return None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["stableWeight"], out["canaryWeightEffective"] = self.stable_weight, self.canary_weight
        out["verdict"] = self.verdict()
        return out


def _version(value: Any) -> ModelVersion | None:
    d = _dict(value)
    revision = _str(d.get("revision"))
    if not revision and not _str(d.get("version")):
        return None
    return ModelVersion(revision=revision, version=_str(d.get("version")),
                        modelPackageArn=_str(d.get("modelPackageArn")), storageUri=_str(d.get("storageUri")))


def _measurement(d: dict[str, Any], verdict_key: str) -> Measurement:
    return Measurement(
        phase=_verdict(d.get(verdict_key)), value=_num(d.get("value")), stableValue=_num(d.get("stableValue")),
        sampleCount=_num(d.get("sampleCount")), threshold=_str(d.get("threshold")), query=_str(d.get("query")),
        message=_str(d.get("message")), at=_str(d.get("finishedAt")) or _str(d.get("at")) or _str(d.get("startedAt")),
    )


def _contract_runs(runs: list[dict[str, Any]]) -> list[AnalysisRun]:
    out = []
    for r in runs:
        metrics = []
        for m in _list(r.get("metrics")):
            measurements = [_measurement(x, "phase") for x in _list(m.get("measurements"))]
            metrics.append(MetricRun(
                name=_str(m.get("name")) or "?", dryRun=m.get("dryRun") is True, count=_int(m.get("count")),
                successful=_int(m.get("successful")), failed=_int(m.get("failed")),
                inconclusive=_int(m.get("inconclusive")), error=_int(m.get("error")), measurements=measurements,
            ))
        step = r.get("step")
        out.append(AnalysisRun(
            name=_str(r.get("name")) or "?", revision=_str(r.get("revision")),
            step=_int(step) if _num(step) is not None else None, phase=_verdict(r.get("phase")),
            startedAt=_str(r.get("startedAt")), metrics=metrics,
        ))
    return out


def _legacy_runs(history: list[dict[str, Any]], last: list[dict[str, Any]], revision: str, step: int) -> list[AnalysisRun]:
    """Today's shape: one record per measurement interval; records of one step of one revision are one run."""
    runs: dict[tuple[str, int], AnalysisRun] = {}
    records = list(history)
    if not records and last:
        # Every measurement reaches the history as it is taken; lastAnalysis alone means an older operator.
        worst = max((_verdict(m.get("verdict")) for m in last), key=lambda v: _SEVERITY[v])
        records.append({"at": _str(last[0].get("at")), "step": step, "revision": revision, "verdict": worst,
                        "metrics": last})
    for rec in records:
        key = (_str(rec.get("revision")), _int(rec.get("step")))
        run = runs.get(key)
        if run is None:
            run = runs[key] = AnalysisRun(name=f"step-{key[1]}", revision=key[0], step=key[1], phase="Successful",
                                          startedAt=_str(rec.get("at")))
        for m in _list(rec.get("metrics")):
            name = _str(m.get("name")) or "?"
            metric = next((x for x in run.metrics if x.name == name), None)
            if metric is None:
                metric = MetricRun(name=name)
                run.metrics.append(metric)
            meas = _measurement(m, "verdict")
            meas.at = meas.at or _str(rec.get("at"))
            metric.measurements.append(meas)
            metric.count += 1
            attr = {"Successful": "successful", "Failed": "failed", "Inconclusive": "inconclusive", "Error": "error"}
            if meas.phase in attr:
                setattr(metric, attr[meas.phase], getattr(metric, attr[meas.phase]) + 1)
        verdict = _verdict(rec.get("verdict"))
        # A run's phase is its latest record's verdict, except that a failure is final.
        run.phase = run.phase if run.phase == "Failed" else verdict
    return list(runs.values())


def read_status(status: Any) -> RolloutStatus:
    """A RolloutStatus from either status shape; never raises, whatever the input."""
    st = _dict(status)
    legacy = _dict(st.get("rollout"))
    canary = _version(st.get("canaryModel"))
    out = RolloutStatus(
        phase=_str(st.get("phase")) or "Pending", message=_str(st.get("message")),
        observedGeneration=_int(st["observedGeneration"]) if _num(st.get("observedGeneration")) is not None else None,
        currentStep=_int(st.get("currentStep")), canaryWeight=max(0, min(100, _int(st.get("canaryWeight")))),
        stable=_version(st.get("stableModel")), canary=canary,
        abortedRevision=_opt_str(st.get("abortedRevision")) or _opt_str(legacy.get("abortedRevision")),
        lastAction=_opt_str(legacy.get("lastAction")) or _opt_str(st.get("lastAction")),
    )
    if isinstance(st.get("pauseConditions"), list):
        out.pauseConditions = [
            PauseCondition(reason=_str(p.get("reason")) or "Paused", startTime=_str(p.get("startTime")),
                           message=_str(p.get("message")))
            for p in _list(st.get("pauseConditions"))
        ]
    elif _opt_str(legacy.get("pausedReason")):
        out.pauseConditions = [PauseCondition(reason=_str(legacy.get("pausedReason")),
                                              startTime=_str(legacy.get("stepStartedAt")),
                                              message=out.message if out.phase == "Paused" else "")]
    if isinstance(st.get("analysisRuns"), list):
        out.analysisRuns = _contract_runs(_list(st.get("analysisRuns")))
    else:
        revision = canary.revision if canary else _str(legacy.get("revision"))
        out.analysisRuns = _legacy_runs(_list(st.get("analysisHistory")), _list(st.get("lastAnalysis")),
                                        revision, out.currentStep)
    out.conditions = [
        {k: _str(c.get(k)) for k in ("type", "status", "reason", "message", "lastTransitionTime")}
        for c in _list(st.get("conditions"))
    ]
    out.lineage = {k: v for k, v in _dict(st.get("lineage")).items() if isinstance(k, str) and isinstance(v, str)}
    out.retraining = [
        {k: v if isinstance(v, str) else "" for k, v in r.items() if isinstance(k, str)}
        for r in _list(st.get("retraining"))
    ]
    return out
