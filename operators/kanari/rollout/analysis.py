"""One analysis measurement: one instant query per metric, judged into MetricResults.

Queries per measurement: exactly one per metric measured. The value, its sample count and the stable
version's figure travel in the same query (see kanari.rollout.templates); a custom `query` with a
`sampleQuery` is combined the same way.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from kanari.api.conditions import now_iso
from kanari.api.v1alpha1 import MetricResult, MetricSpec, ModelDeploymentSpec, ModelDeploymentStatus
from kanari.capacity.cost import runtime_tag
from kanari.judging.analysis import judge_variables, measure_judge
from kanari.rollout.judge import error, judge, query
from kanari.rollout.prometheus import PrometheusClient, Sample, label_value
from kanari.rollout.templates import CBPE_TEMPLATES, PART_LABEL, MetricQuery, TemplateError, metric_query
from kanari.scrape import ScrapeJobs


def variables(
    namespace: str,
    name: str,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    isvc: Mapping[str, Any] | None = None,
    *,
    jobs: ScrapeJobs,
) -> dict[str, str]:
    """The query variables for a ModelDeployment's current rollout; `jobs`: the operator's configured scrape jobs.

    RawDeployment: canary/stable revisions are Kanari rollout revisions (the pods' kanari.dev/revision
    label). Serverless: they are Knative revision names, read from the InferenceService's
    status.components.predictor (the traffic entries tagged "latest" and "prev" while a canary split is
    set). One that cannot be known yet stays empty: a query needing it reports an Error, never a pass.
    """
    out = {"namespace": namespace, "name": name, "canaryRevision": "", "stableRevision": "",
           "monitorJob": label_value(jobs.monitor), "controllerJob": label_value(jobs.controller)}
    for key, ref in (("canaryTag", status.canaryModel), ("stableTag", status.stableModel)):
        out[key] = runtime_tag(namespace, name, ref.revision) if ref else ""
    canary = status.canaryModel
    # spec.model.version is free text: quoted, so it cannot reshape a query.
    out["canaryMonitorRevision"] = label_value(canary.monitor_revision) if canary else ""
    for metric, variable in CBPE_TEMPLATES.values():
        # The registry's figure is a proportion; anything else would move the gate (a negative one passes every
        # canary), so it counts as not registered: the query is an Error, never a pass.
        registered = canary.registered(metric) if canary else None
        out[variable] = repr(registered) if registered is not None else ""
    if spec.rollout.analysis and any(m.judge for m in spec.rollout.analysis.metrics):
        out.update(judge_variables(status))
    if spec.serving.deploymentMode == "RawDeployment":
        out["canaryRevision"] = status.canaryModel.revision if status.canaryModel else ""
        out["stableRevision"] = status.stableModel.revision if status.stableModel else ""
        return out
    predictor = ((isvc or {}).get("status") or {}).get("components", {}).get("predictor") or {}
    tagged = {t.get("tag"): t.get("revisionName") for t in predictor.get("traffic") or [] if t.get("tag")}
    out["canaryRevision"] = tagged.get("latest") or predictor.get("latestCreatedRevision") or ""
    out["stableRevision"] = (
        tagged.get("prev") or predictor.get("previousRolledoutRevision") or predictor.get("latestRolledoutRevision") or ""
    )
    return out


async def measure(
    spec: ModelDeploymentSpec,
    variables: dict[str, str],
    prom: PrometheusClient,
    now: datetime,
    metrics: Collection[str] | None = None,
) -> list[MetricResult]:
    """Measure the analysis metrics (only those named in `metrics`, when given) at `now`.

    `variables`: namespace, name, canaryRevision, stableRevision ({{interval}} comes from the spec).
    Never raises for Prometheus trouble: it becomes an Error verdict naming the metric.
    """
    analysis = spec.rollout.analysis
    if analysis is None:
        return []
    chosen = [m for m in analysis.metrics if metrics is None or m.name in metrics]
    at = now_iso(now)
    return list(
        await asyncio.gather(*(_one(spec, m, variables, prom, now, at, analysis.min_samples(m)) for m in chosen))
    )


async def _one(
    spec: ModelDeploymentSpec,
    metric: MetricSpec,
    variables: dict[str, str],
    prom: PrometheusClient,
    now: datetime,
    at: str,
    min_samples: int,
) -> MetricResult:
    if metric.judge is not None:
        return await measure_judge(spec, metric, variables, prom, now, at, min_samples)
    try:
        q = metric_query(spec, metric, variables)
    except TemplateError as exc:
        return error(metric, str(exc), at)
    samples = await query(prom, q.promql, now)
    if isinstance(samples, str):
        return error(metric, samples, at, q.promql)
    try:
        value, count, stable = _read(q, samples)
    except ValueError as exc:
        return error(metric, str(exc), at, q.promql)
    # minSampleCount 0 is the explicit opt-out (a custom query without sampleQuery must state it).
    checked = min_samples if q.has_samples and min_samples > 0 else None
    return judge(metric, value, count, checked, at, stable, q.promql)


def _read(q: MetricQuery, samples: list[Sample]) -> tuple[float | None, float | None, float | None]:
    if not q.combined:
        return _single(samples, "the query"), None, None
    parts: dict[str, list[Sample]] = {}
    for s in samples:
        parts.setdefault(s.labels.get(PART_LABEL, ""), []).append(s)
    value = _single(parts.get("value", []), "the query")
    count = _single(parts.get("samples", []), "the sample query")
    stable = _single(parts.get("stable", []), "the stable query")
    if count is not None and math.isnan(count):
        count = None
    return value, count, stable


def _single(samples: list[Sample], what: str) -> float | None:
    if len(samples) > 1:
        raise ValueError(f"{what} returned {len(samples)} series; aggregate it to one (sum, max, ...)")
    return samples[0].value if samples else None
