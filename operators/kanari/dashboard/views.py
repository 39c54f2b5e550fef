"""What each dashboard view shows, as plain JSON: pure functions of objects, Events and Prometheus series.

The live server and the static export (`kanari dashboard --export`) both render these documents with the same
page script, so what the demo's export shows is what users get live. Nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kanari.api.conditions import parse_time
from kanari.api.v1alpha1 import Lineage, MetricSpec, ModelDeploymentSpec, SpecError, parse_spec
from kanari.dashboard.status_view import RolloutStatus, measured_at, read_status
from kanari.rollout import judge

ACTIONS = ("promote", "promote-full", "pause", "resume", "abort", "retry")
_WEIGHT = re.compile(r"canary weight (\d+) -> (\d+)")


def epoch(text: str | None) -> float | None:
    try:
        t = parse_time(text)
    except (TypeError, ValueError):
        return None
    return t.timestamp() if t else None


def _spec(obj: dict[str, Any]) -> tuple[ModelDeploymentSpec | None, str]:
    try:
        return parse_spec(obj.get("spec")), ""
    except SpecError as exc:
        return None, str(exc)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def key(obj: dict[str, Any]) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


# ------------------------------------------------------------------------------------------- drift level
@dataclass(frozen=True)
class DriftReading:
    """The worst current feature drift of a model's serving revisions, and the critical alerts firing."""

    value: float | None
    feature: str = ""
    firing: int = 0


def drift_level(spec: ModelDeploymentSpec | None, reading: DriftReading | None) -> str:
    if spec is None or spec.monitoring is None or not spec.monitoring.enabled:
        return "off"
    if reading is None or reading.value is None:
        return "unknown" if not (reading and reading.firing) else "critical"
    drift = spec.monitoring.drift
    if reading.firing or reading.value >= drift.critical:
        return "critical"
    return "warn" if reading.value >= drift.warn else "ok"


# ------------------------------------------------------------------------------------------------ list
def summary_row(obj: dict[str, Any], reading: DriftReading | None = None, now: float | None = None) -> dict[str, Any]:
    meta = _meta(obj)
    st = read_status(obj.get("status"))
    spec, error = _spec(obj)
    total = len(spec.rollout.effective_steps()) if spec else 0
    created = epoch(meta.get("creationTimestamp") if isinstance(meta.get("creationTimestamp"), str) else None)
    now = datetime.now(UTC).timestamp() if now is None else now
    return {
        "namespace": str(meta.get("namespace", "")), "name": str(meta.get("name", "")),
        "phase": st.phase, "message": st.message or error,
        "stable": st.stable.label if st.stable else "", "canary": st.canary.label if st.canary else "",
        "stableWeight": st.stable_weight, "canaryWeight": st.canary_weight,
        "step": f"{min(st.currentStep + 1, total)}/{total}" if total else "-",
        "verdict": st.verdict(), "paused": ", ".join(p.reason for p in st.pauseConditions),
        "drift": drift_level(spec, reading), "driftValue": reading.value if reading else None,
        "driftFeature": reading.feature if reading else "",
        "created": created, "age": human_age(now - created) if created else "",
    }


def human_age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


# ---------------------------------------------------------------------------------------------- detail
def steps_view(spec: ModelDeploymentSpec | None, st: RolloutStatus) -> list[dict[str, Any]]:
    if spec is None:
        return []
    steps = spec.rollout.effective_steps()
    in_rollout = st.canary is not None
    out = []
    for i, step in enumerate(steps):
        if step.setWeight is not None:
            kind, label = "setWeight", f"weight {step.setWeight}%"
        elif step.analysis is not None:
            kind, label = "analysis", f"analysis ×{step.analysis.count or (spec.rollout.analysis.count if spec.rollout.analysis else 1)}"
        elif step.pause is not None:
            kind, label = "pause", f"pause {step.pause.duration}" if step.pause.duration else "pause (until resumed)"
        else:
            kind, label = "noop", "-"
        if not in_rollout:
            state = "done" if st.phase == "Succeeded" else "pending"
        else:
            state = "done" if i < st.currentStep else "current" if i == st.currentStep else "pending"
        out.append({"index": i, "kind": kind, "label": label, "state": state})
    return out


def _events_sorted(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: e.get("time") or 0)


def event_rows(raw: Iterable[dict[str, Any]], obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Kubernetes Events about this object (by uid, or by name when the uid is not recorded), oldest first."""
    meta = _meta(obj)
    uid, name, ns = meta.get("uid"), meta.get("name"), meta.get("namespace")
    out = []
    for ev in raw:
        inv = ev.get("involvedObject") or ev.get("regarding") or {}
        if not isinstance(inv, dict) or inv.get("kind") not in (None, "ModelDeployment"):
            continue
        if (uid and inv.get("uid") and inv.get("uid") != uid) or inv.get("name") != name:
            continue
        evmeta: dict[str, Any] = ev["metadata"] if isinstance(ev.get("metadata"), dict) else {}
        if evmeta.get("namespace", ns) != ns:
            continue
        when = ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp") or evmeta.get("creationTimestamp")
        t = epoch(when if isinstance(when, str) else None)
        out.append({
            "time": t, "type": str(ev.get("type") or ""), "reason": str(ev.get("reason") or ""),
            "message": str(ev.get("message") or ev.get("note") or ""), "count": int(ev.get("count") or 1),
        })
    return _events_sorted(out)


def traffic_series(
    events: Sequence[dict[str, Any]], st: RolloutStatus, now: float, created: float | None
) -> dict[str, Any]:
    """Stable and canary weight over time, a step function from the Events that changed it.

    The first version serves 100% from its `Deployed` Event (not from whenever some metric was first
    scraped); each `WeightChanged` moves the split; the current status closes the line at `now`.
    """
    times: list[float] = []
    canary: list[float] = []
    weight = 0.0
    serving = False
    for ev in events:
        t = ev.get("time")
        if t is None:
            continue
        if ev["reason"] in ("Deployed", "Promoted") and not serving:
            serving = True
            times.append(t)
            canary.append(0.0)
        m = _WEIGHT.search(ev["message"]) if ev["reason"] == "WeightChanged" else None
        if m:
            if not serving:
                serving = True
            times.append(t)
            canary.append(weight)  # hold the previous weight up to the change: a step, not a ramp
            weight = float(m.group(2))
            times.append(t)
            canary.append(weight)
        elif ev["reason"] in ("Promoted", "RolledBack") and weight:
            times += [t, t]
            canary += [weight, 0.0]
            weight = 0.0
    if not times and st.stable is not None and created is not None:
        times.append(created)  # no Events left (they expire): the current split since creation
        canary.append(float(st.canary_weight))
    if times:
        times.append(max(now, times[-1]))
        canary.append(float(st.canary_weight))
    return {"t": times, "canary": canary, "stable": [100.0 - c for c in canary]}


def _bounds(metric: MetricSpec | None) -> tuple[float | None, float | None]:
    if metric is None:
        return None, None
    if metric.thresholdRange is not None:
        return metric.thresholdRange.min, metric.thresholdRange.max
    lo = hi = None
    try:
        for op, bound in judge.parse_condition(metric.successCondition or ""):
            if op in (">", ">="):
                lo = bound
            elif op in ("<", "<="):
                hi = bound
    except ValueError:
        pass
    return lo, hi


def _query_text(spec: ModelDeploymentSpec | None, metric: MetricSpec | None) -> str:
    if spec is None or metric is None:
        return ""
    if metric.query:
        return metric.query
    try:
        from kanari.rollout.templates import builtin_parts

        return builtin_parts(spec, metric).get("value", "")
    except Exception:  # a template this version does not know: show none rather than fail the page
        return ""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def scorecards(spec: ModelDeploymentSpec | None, st: RolloutStatus) -> list[dict[str, Any]]:
    """One scorecard per analysis run, newest first: each metric's latest measurement, and why."""
    metric_specs = {m.name: m for m in (spec.rollout.analysis.metrics if spec and spec.rollout.analysis else [])}
    cards = []
    for run in reversed(st.analysisRuns):
        rows = []
        for metric in run.metrics:
            m = metric.measurements[-1] if metric.measurements else None
            ms = metric_specs.get(metric.name)
            why = ""
            if m is not None and m.phase in ("Inconclusive", "Error", "Failed"):
                why = m.message
            rows.append({
                "metric": metric.name, "canary": _fmt(m.value if m else None),
                "stable": _fmt(m.stableValue if m else None), "threshold": (m.threshold if m else "") or "",
                "verdict": m.phase if m else "Pending", "samples": _fmt(m.sampleCount if m else None),
                "query": (m.query if m and m.query else _query_text(spec, ms)), "why": why,
                "counts": f"{metric.successful} ok, {metric.failed} failed, {metric.inconclusive} inconclusive, "
                          f"{metric.error} error of {metric.count}",
                "dryRun": metric.dryRun,
            })
        cards.append({"name": run.name, "revision": run.revision, "step": run.step, "phase": run.phase,
                      "startedAt": run.startedAt, "metrics": rows})
    return cards


def metric_charts(spec: ModelDeploymentSpec | None, st: RolloutStatus) -> list[dict[str, Any]]:
    """Per metric: every measurement (time, value, verdict) with its threshold lines, in the metric's unit.

    Values are drawn as measured (latency in seconds, as the spec states thresholds); a failed measurement
    carries its message, so the chart itself says why a rollout was rolled back.
    """
    metric_specs = {m.name: m for m in (spec.rollout.analysis.metrics if spec and spec.rollout.analysis else [])}
    names = list(dict.fromkeys([*metric_specs, *(m.name for r in st.analysisRuns for m in r.metrics)]))
    charts = []
    for name in names:
        lo, hi = _bounds(metric_specs.get(name))
        points = []
        for run in st.analysisRuns:
            for metric in run.metrics:
                if metric.name != name:
                    continue
                for m in metric.measurements:
                    t = epoch(measured_at(m))
                    if t is None:
                        continue
                    points.append({"t": t, "value": m.value, "stable": m.stableValue, "verdict": m.phase,
                                   "revision": run.revision, "message": m.message})
        points.sort(key=lambda p: float(p["t"] or 0))
        failed = [p for p in points if p["verdict"] == "Failed"]
        unit = "s" if "latency" in name or (metric_specs.get(name) and "latency" in (metric_specs[name].template or "")) else ""
        charts.append({"metric": name, "min": lo, "max": hi, "unit": unit, "points": points,
                       "failure": failed[-1] if failed else None})
    return charts


def available_actions(st: RolloutStatus) -> list[str]:
    """Actions that mean something now; the controller ignores the others with an Event anyway."""
    if st.canary is not None and st.phase not in ("RolledBack", "Failed"):
        paused = bool(st.pauseConditions) or st.phase == "Paused"
        return ["promote", "promote-full", "resume" if paused else "pause", "abort"]
    if st.phase == "RolledBack" or st.abortedRevision:
        return ["retry"]
    return []


def detail(obj: dict[str, Any], events: Sequence[dict[str, Any]], now: float,
           reading: DriftReading | None = None) -> dict[str, Any]:
    meta = _meta(obj)
    st = read_status(obj.get("status"))
    spec, error = _spec(obj)
    evs = event_rows(events, obj)
    created = epoch(meta.get("creationTimestamp") if isinstance(meta.get("creationTimestamp"), str) else None)
    failing = st.failing()
    return {
        "summary": summary_row(obj, reading, now),
        "specError": error,
        "strategy": spec.rollout.strategy if spec else "",
        "steps": steps_view(spec, st),
        "status": st.to_json(),
        "traffic": traffic_series(evs, st, now, created),
        "scorecards": scorecards(spec, st),
        "charts": metric_charts(spec, st),
        "rollbackReason": (f"{failing[1].name} = {_fmt(failing[2].value)} breached {failing[2].threshold} "
                           f"(revision {failing[0].revision}, {failing[0].name})") if failing and st.phase == "RolledBack" else "",
        "events": evs,
        "actions": available_actions(st),
        "lineage": lineage_view(obj),
        "generation": meta.get("generation"),
    }


# ----------------------------------------------------------------------------------------------- drift
KNEE_FRACTION = 0.6  # of the axis height, given to [0, 1.5 x critical] when drift spikes far above it


def drift_axis(values: Iterable[float], warn: float, critical: float) -> dict[str, Any]:
    """A y axis on which warn and critical stay readable however far drift spikes.

    Linear while the data stays within 3 x critical. Beyond that the axis is split: the lower 60% is linear
    up to 1.5 x critical (where warn and critical are), the upper 40% logarithmic up to the largest value,
    so a spike to 50 is still drawn, and does not squash both lines into the bottom pixel rows.
    """
    finite = [v for v in values if math.isfinite(v)]
    top = max([*finite, critical])
    if top <= 3 * critical:
        return {"distr": "linear", "min": 0.0, "max": round(max(top * 1.1, critical * 1.25), 6)}
    return {"distr": "split", "knee": critical * 1.5, "kneeFraction": KNEE_FRACTION, "min": 0.0,
            "max": top * 1.1}


def axis_fraction(axis: dict[str, Any], value: float) -> float:
    """Where `value` sits on `axis`, 0 at the bottom, 1 at the top (what a reader sees; app.js draws the same)."""
    lo, hi = axis["min"], axis["max"]
    if axis["distr"] != "split":
        return (value - lo) / (hi - lo)
    knee, kf = axis["knee"], axis["kneeFraction"]
    if value <= knee:
        return kf * value / knee
    return kf + (1 - kf) * math.log(value / knee) / math.log(hi / knee)


def drift_view(
    obj: dict[str, Any], series: Sequence[dict[str, Any]], alerts: Sequence[dict[str, str]],
    now: float, prometheus: str = "",
) -> dict[str, Any]:
    """Per-feature drift over time for the serving revisions; an idle revision's last values are history.

    `series`: [{feature, revision, endpoint, t: [...], v: [...]}] from kanari_feature_drift.
    """
    st = read_status(obj.get("status"))
    spec, _ = _spec(obj)
    drift = spec.monitoring.drift if spec and spec.monitoring else None
    serving = {v.label for v in (st.stable, st.canary) if v is not None} | {
        v.revision for v in (st.stable, st.canary) if v is not None}
    features: dict[str, list[dict[str, Any]]] = {}
    current: dict[str, float] = {}
    for s in series:
        live = s.get("revision") in serving
        last = s["v"][-1] if s.get("v") else None
        features.setdefault(s["feature"], []).append({
            "label": f"{s.get('revision', '?')} ({s.get('endpoint') or 'default'})" + ("" if live else ", idle"),
            "live": live, "t": s["t"], "v": s["v"],
        })
        if live and last is not None and math.isfinite(last):
            current[s["feature"]] = max(current.get(s["feature"], 0.0), last)
    order = sorted(features, key=lambda f: -current.get(f, -1.0))
    warn, critical = (drift.warn, drift.critical) if drift else (0.1, 0.25)
    values = [v for lines in features.values() for line in lines for v in line["v"] if v is not None]
    return {
        "summary": summary_row(obj, DriftReading(max(current.values()) if current else None,
                                                 order[0] if current else "", len(alerts)), now),
        "method": drift.method if drift else "", "warn": warn, "critical": critical,
        "monitoring": bool(spec and spec.monitoring and spec.monitoring.enabled),
        "axis": drift_axis(values, warn, critical),
        "worst": [{"feature": f, "value": current.get(f)} for f in order if f in current][:10],
        "features": [{"feature": f, "current": current.get(f), "lines": features[f],
                      "axis": drift_axis([v for line in features[f] for v in line["v"] if v is not None], warn, critical)}
                     for f in order[:8]],
        "alerts": list(alerts),
        "retraining": [r.model_dump(mode="json") for r in st.retraining],
        "prometheus": prometheus,
    }


# --------------------------------------------------------------------------------------------- lineage
_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:([a-z0-9-]+):\d{12}:([a-z-]+)/(.+)$")


def _console(arn: str) -> str:
    m = _ARN.match(arn or "")
    if not m:
        return ""
    region, kind, rest = m.groups()
    base = f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}"
    if kind == "training-job":
        return f"{base}#/jobs/{rest}"
    if kind == "model-package":
        group, _, version = rest.partition("/")
        return f"{base}#/model-registry/{group}/versions/{version}" if version else ""
    return ""


def _s3(uri: str) -> str:
    m = re.match(r"^s3://([^/]+)/?(.*)$", uri or "")
    if not m:
        return ""
    bucket, key_ = m.groups()
    key_ = key_.split(" @ ")[0]
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={key_}"


def lineage_view(obj: dict[str, Any]) -> list[dict[str, str]]:
    """data -> code -> pipeline run -> training job -> model package -> approval -> deployment revision."""
    st = read_status(obj.get("status"))
    spec, _ = _spec(obj)
    lin = st.lineage or Lineage()
    served = st.canary or st.stable
    approval = next((c for c in st.conditions if c.type == "ModelApproved"), None)
    arn = (lin.modelPackageArn or "") or (served.modelPackageArn if served else "") or (
        spec.model.modelPackageArn if spec and spec.model.modelPackageArn else "")
    chain = [
        ("data", (lin.datasetUri or ""), _s3(lin.datasetUri or "")),
        ("code", (lin.gitSha or ""), ""),
        ("pipeline run", (lin.pipelineRun or ""), ""),
        ("training job", (lin.trainingJob or ""), _console(lin.trainingJob or "")),
        ("model package", arn or (served.storageUri if served else ""), _console(arn) or _s3(served.storageUri if served else "")),
        ("approval", f"{approval.status}: {approval.reason}" if approval else
         ("not required" if spec and not spec.model.requireApproval else ""), ""),
        ("deployment revision", f"{served.label} (revision {served.revision})" if served else "", ""),
    ]
    return [{"stage": stage, "value": value, "href": href} for stage, value, href in chain]
