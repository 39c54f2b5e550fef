"""The judge as an analysis metric kind: `judge: {kind, maxDegradation, alpha}` in a MetricSpec.

One instant query per measurement, as every analysis metric: canary and stable counts (errorRate) or
histogram buckets (latency), told apart by the `kanari_part` label, over the window since the analysis
step began (both revisions over the same window: time-of-day and load affect them alike). The look
number is this metric's measurement count in the step plus one; the planned looks are the most a step
can take for it (count + failureLimit + inconclusiveLimit + 1), so the false-rollback rate is bounded
over every look the engine can make. Recommended: `count: 1` (the first conclusive pass ends the step)
and an inconclusiveLimit covering the looks the traffic needs.

Series:
- Serverless: queue-proxy `revision_app_request_count` (5xx = error) and
  `revision_app_request_latencies_bucket`, by `revision_name`.
- RawDeployment: the KServe model server's `request_preprocess_seconds_count` (entered) and
  `request_postprocess_seconds_count` (succeeded; errors = entered - succeeded) and
  `request_predict_seconds_bucket`, by the pod label `kanari_dev_revision`.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime

from kanari.api.conditions import parse_time
from kanari.api.duration import format_duration
from kanari.api.v1alpha1 import (
    JudgeSpec,
    MetricResult,
    MetricSpec,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from kanari.judging.canary import Verdict, judge_error_rate, judge_latency
from kanari.judging.sequential import Look
from kanari.rollout.judge import query
from kanari.rollout.prometheus import PrometheusClient, Sample
from kanari.rollout.templates import (
    PART_LABEL,
    RAW_REVISION_LABEL,
    TemplateError,
    combine,
    metric_interval,
    substitute,
)

LOOKS_PREFIX = "measurements."  # variables[LOOKS_PREFIX + metric] = measurements taken in this step


def judge_variables(status: ModelDeploymentStatus) -> dict[str, str]:
    """What the judge reads from status: where the step began and each metric's looks so far."""
    out = {"stepStartedAt": status.rollout.stepStartedAt or ""}
    # The looks so far are the current step's analysis run's measurements of data (errors looked at none).
    revision = status.canaryModel.revision if status.canaryModel else None
    run = next((r for r in status.analysisRuns if r.step == status.currentStep and r.revision == revision), None)
    for m in run.metrics if run else []:
        out[LOOKS_PREFIX + m.name] = str(m.successful + m.failed + m.inconclusive)
    return out


def threshold_text(judge: JudgeSpec) -> str:
    if judge.kind == "latency":
        return f"latency slowdown < {judge.maxDegradation:.4g} (x{1 + judge.maxDegradation:.4g}, alpha {judge.alpha:g})"
    return f"{judge.kind} degradation < {judge.maxDegradation:g} (alpha {judge.alpha:g})"


def planned_looks(spec: ModelDeploymentSpec, metric: MetricSpec) -> int:
    analysis = spec.rollout.analysis
    assert analysis is not None
    steps = [s.analysis.count for s in spec.rollout.effective_steps() if s.analysis and s.analysis.count]
    count = metric.count or max([analysis.count, *steps])
    failures = metric.failureLimit if metric.failureLimit is not None else analysis.failureLimit
    unsure = metric.inconclusiveLimit if metric.inconclusiveLimit is not None else analysis.inconclusiveLimit
    return count + failures + unsure + 1


def window_seconds(spec: ModelDeploymentSpec, metric: MetricSpec, variables: dict[str, str], now: datetime) -> float:
    """Since the step began (at least one interval)."""
    interval = max(1.0, metric_interval(spec, metric))
    started = parse_time(variables.get("stepStartedAt") or None)
    if started is None:
        return interval
    return max(interval, math.ceil((now - started).total_seconds()))


def queries(spec: ModelDeploymentSpec, judge: JudgeSpec) -> str:
    """The one PromQL (with {{variables}}) returning the parts the judge reads."""
    serverless = spec.serving.deploymentMode == "Serverless"

    def sel(revision: str) -> str:
        if serverless:
            return f'namespace_name="{{{{namespace}}}}", revision_name="{{{{{revision}}}}}"'
        return f'namespace="{{{{namespace}}}}", {RAW_REVISION_LABEL}="{{{{{revision}}}}}"'

    parts: dict[str, str] = {}
    for who, revision in (("canary", "canaryRevision"), ("stable", "stableRevision")):
        s = sel(revision)
        if judge.kind == "latency":
            bucket = "revision_app_request_latencies_bucket" if serverless else "request_predict_seconds_bucket"
            parts[who] = f"sum by (le) (increase({bucket}{{{s}}}[{{{{interval}}}}]))"
        elif serverless:
            parts[f"{who}_total"] = f"sum(increase(revision_app_request_count{{{s}}}[{{{{interval}}}}]))"
            parts[f"{who}_errors"] = (
                f'sum(increase(revision_app_request_count{{{s}, response_code_class="5xx"}}[{{{{interval}}}}])) or vector(0)'
            )
        else:
            entered = f"sum(increase(request_preprocess_seconds_count{{{s}}}[{{{{interval}}}}]))"
            done = f"(sum(increase(request_postprocess_seconds_count{{{s}}}[{{{{interval}}}}])) or vector(0))"
            parts[f"{who}_total"] = entered
            parts[f"{who}_errors"] = f"{entered} - {done}"
    return combine(parts)


def _by_part(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.labels.get(PART_LABEL, ""), []).append(s)
    return out


def _one(parts: dict[str, list[Sample]], name: str) -> float | None:
    got = parts.get(name, [])
    if len(got) > 1:
        raise ValueError(f"the {name} part returned {len(got)} series")
    return got[0].value if got else None


def _histogram(parts: dict[str, list[Sample]], name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for s in parts.get(name, []):
        le = s.labels.get("le")
        if le is None:
            raise ValueError(f"the {name} histogram has a series without an le label")
        out[math.inf if le == "+Inf" else float(le)] = s.value
    return out


def read_verdict(judge: JudgeSpec, samples: list[Sample], look: Look) -> Verdict:
    """The judge's verdict from the query's samples; ValueError on a malformed answer."""
    parts = _by_part(samples)
    if judge.kind == "latency":
        canary, stable = _histogram(parts, "canary"), _histogram(parts, "stable")
        if not canary or not stable:
            missing = "canary" if not canary else "stable"
            return _missing(missing, look, judge)
        if set(canary) != set(stable):
            raise ValueError("canary and stable latency histograms have different buckets (le); compare like with like")
        les = sorted(canary)
        return judge_latency([canary[x] for x in les], [stable[x] for x in les], bounds=les,
                             max_degradation=judge.maxDegradation, alpha=judge.alpha, look=look)
    values = {k: _one(parts, k) for k in ("canary_total", "canary_errors", "stable_total", "stable_errors")}
    for who in ("canary", "stable"):
        if values[f"{who}_total"] is None:
            return _missing(who, look, judge)
    counts = {k: 0.0 if v is None or math.isnan(v) else max(v, 0.0) for k, v in values.items()}
    return judge_error_rate(counts["canary_errors"], counts["canary_total"], counts["stable_errors"],
                            counts["stable_total"], max_degradation=judge.maxDegradation, alpha=judge.alpha, look=look)


def _missing(who: str, look: Look, judge: JudgeSpec) -> Verdict:
    from kanari.judging.sequential import critical_z

    return Verdict("Inconclusive", None, None, None, critical_z(look, judge.alpha), None, 0.0, 0.0,
                   f"no {who} requests in the window")


async def measure_judge(
    spec: ModelDeploymentSpec,
    metric: MetricSpec,
    variables: dict[str, str],
    prom: PrometheusClient,
    now: datetime,
    at: str,
    min_samples: int,
) -> MetricResult:
    judge = metric.judge
    assert judge is not None
    threshold = threshold_text(judge)

    def result(verdict: str, message: str, value: float | None = None, samples: float | None = None) -> MetricResult:
        return MetricResult(name=metric.name, value=value, threshold=threshold, verdict=verdict,  # type: ignore[arg-type]
                            sampleCount=samples, message=f"{metric.name}: {message}", at=at)

    look = Look(int(variables.get(LOOKS_PREFIX + metric.name) or 0) + 1, planned_looks(spec, metric))
    window = window_seconds(spec, metric, variables, now)
    try:
        promql = substitute(queries(spec, judge), {**variables, "interval": format_duration(window)})
    except TemplateError as exc:
        return result("Error", str(exc))
    samples = await query(prom, promql, now)
    if isinstance(samples, str):
        return result("Error", samples)
    try:
        # Off the event loop: a (looks, alpha) seen for the first time computes its sequential boundaries, up to
        # a second or two at 50 looks, and the operator's loop serves every other ModelDeployment meanwhile.
        verdict = await asyncio.to_thread(read_verdict, judge, samples, look)
    except ValueError as exc:
        return result("Error", str(exc))
    if verdict.canary_samples < min_samples and verdict.phase == "Successful":
        return result("Inconclusive", f"{verdict.canary_samples:.0f} canary samples, fewer than minSampleCount "
                      f"{min_samples}; {verdict.message}", verdict.degradation, verdict.canary_samples)
    return result(verdict.phase, verdict.message, verdict.degradation, verdict.canary_samples)
