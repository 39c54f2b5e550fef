"""Turning a measured value into a verdict: thresholds, success conditions, and the no-data rules.

Missing data is never a pass: no value, NaN, or fewer samples than minSampleCount is Inconclusive.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from datetime import datetime

from kanari.api.v1alpha1 import MetricResult, MetricSpec, Verdict
from kanari.rollout.prometheus import PrometheusClient, PrometheusQueryError, PrometheusUnavailable, Sample

# Error messages that mean "Prometheus could not be asked" start with this; the engine pauses with
# reason PrometheusUnavailable on them instead of blaming the query.
UNAVAILABLE = "Prometheus unavailable"


async def query(prom: PrometheusClient, promql: str, now: datetime) -> list[Sample] | str:
    """The samples, or why the measurement could not be taken (the message of its Error verdict)."""
    try:
        return await prom.query(promql, now)
    except PrometheusUnavailable as exc:
        return f"{UNAVAILABLE}: {exc}"
    except PrometheusQueryError as exc:
        return f"Prometheus rejected the query ({exc.error_type}): {exc.message}"

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq, "!=": operator.ne,
}
_CLAUSE = re.compile(r"\s*result\s*(<=|>=|<|>|==|!=)\s*(-?[0-9.eE+-]+)\s*")


def threshold_text(metric: MetricSpec) -> str:
    if metric.judge is not None:
        # Imported here: kanari.judging.analysis imports this module (query).
        from kanari.judging.analysis import threshold_text as judge_threshold

        return judge_threshold(metric.judge)
    if metric.successCondition:
        return metric.successCondition.strip()
    tr = metric.thresholdRange
    assert tr is not None
    if tr.min is not None and tr.max is not None:
        return f"{tr.min:g} <= value <= {tr.max:g}"
    return f">= {tr.min:g}" if tr.min is not None else f"<= {tr.max:g}"


def parse_condition(text: str) -> list[tuple[str, float]]:
    """'result >= 0.99 && result <= 1' -> [('>=', 0.99), ('<=', 1.0)]; ValueError on anything else."""
    clauses = re.split(r"&&|\band\b", text)
    out = []
    for clause in clauses:
        m = _CLAUSE.fullmatch(clause)
        if not m:
            raise ValueError(f"successCondition: cannot read {clause.strip()!r} (expected e.g. 'result >= 0.99')")
        out.append((m.group(1), float(m.group(2))))
    return out


def fails(metric: MetricSpec, value: float) -> bool:
    assert metric.failureCondition
    return all(_OPS[op](value, bound) for op, bound in parse_condition(metric.failureCondition))


def passes(metric: MetricSpec, value: float) -> bool:
    if metric.successCondition:
        return all(_OPS[op](value, bound) for op, bound in parse_condition(metric.successCondition))
    tr = metric.thresholdRange
    assert tr is not None
    return (tr.min is None or value >= tr.min) and (tr.max is None or value <= tr.max)


def judge(
    metric: MetricSpec,
    value: float | None,
    samples: float | None,
    min_samples: int | None,
    at: str,
    stable: float | None = None,
    query: str = "",
) -> MetricResult:
    """Verdict for one measurement. `min_samples` None: the metric opted out of the sample check
    (minSampleCount: 0), which the message then says."""
    threshold = threshold_text(metric)
    if metric.failureCondition:
        threshold += f"; fails at {metric.failureCondition.strip()}"
    clean_stable = None if stable is None or math.isnan(stable) else stable

    def result(verdict: Verdict, message: str, value: float | None = None) -> MetricResult:
        return MetricResult(
            name=metric.name, value=value, stableValue=clean_stable, threshold=threshold, verdict=verdict,
            sampleCount=samples, query=query, message=f"{metric.name}: {message}", at=at,
        )

    if min_samples is not None and (samples is None or math.isnan(samples) or samples < min_samples):
        seen = "no samples" if samples is None or math.isnan(samples) else f"{samples:.0f} samples"
        clean = None if value is None or math.isnan(value) else value
        return result("Inconclusive", f"{seen} in the window, fewer than minSampleCount {min_samples}", clean)
    if value is None:
        return result("Inconclusive", "the query returned no data")
    if math.isnan(value):
        return result("Inconclusive", "the query returned NaN")
    vs = f" (stable: {clean_stable:.6g})" if clean_stable is not None else ""
    vs += "; sample count not checked (minSampleCount: 0)" if min_samples is None else ""
    if metric.failureCondition and fails(metric, value):
        return result("Failed", f"value {value:.6g} meets failureCondition {metric.failureCondition.strip()}{vs}", value)
    if passes(metric, value):
        return result("Successful", f"value {value:.6g} meets {threshold_text(metric)}{vs}", value)
    if metric.failureCondition:
        return result("Inconclusive", f"value {value:.6g} is between pass and fail ({threshold}){vs}", value)
    return result("Failed", f"value {value:.6g} breaches {threshold}{vs}", value)


def error(metric: MetricSpec, message: str, at: str, query: str = "") -> MetricResult:
    return MetricResult(
        name=metric.name, threshold=threshold_text(metric), verdict="Error", query=query,
        message=f"{metric.name}: {message}", at=at,
    )
