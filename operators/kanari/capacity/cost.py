"""Cost per 1,000 inferences and cold start, as PromQL for the analysis templates.

NeuronCore-seconds come from neuron-monitor's Prometheus exporter (neuron-monitor-prometheus.py):
`neuroncore_utilization_ratio` has one series per NeuronCore a Neuron runtime holds, labelled
`instance_type`, `neuroncore` and `runtime_tag` (plus instance_id, availability_zone, region, subnet_id,
instance_name). `runtime_tag` is the runtime's NEURON_PROCESS_TAG; Kanari sets it on every Neuron predictor
to `<namespace>.<name>.<revision>` (runtime_tag()), so the cores a revision holds are counted by that
label. A core is paid for while it is held, busy or not: cost counts held cores, not utilisation.

cost (USD) over the window = sum over time of (held cores per instance type x that type's price per
NeuronCore-second), integrated with a subquery. An instance type missing from the price table makes the
result NaN, which the judge reads as Inconclusive: an unknown price is never counted as free.

Requests are the same counters the request templates use (kanari.rollout.templates): the KServe model
server's preprocess count (RawDeployment) or Knative's revision_app_request_count (Serverless).

Cold start: the operator exports, per revision, its slowest pod's time from scheduling (the pod's
PodScheduled condition) to its first successful warm-up answer (kanari.rollout.warmup) as
`kanari_cold_start_seconds{namespace,model,revision}`; the template reads that gauge (the canary's, with
the stable's beside it), pinned to the operator's scrape job (`{{controllerJob}}`, kanari.scrape) so a model's
own /metrics cannot claim a faster cold start. A revision rolled out without spec.rollout.warmup has no figure:
inconclusive.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kanari.api.conditions import now_iso
from kanari.api.duration import format_duration
from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, RevisionCost
from kanari.capacity.topology import INSTANCES, PriceTableError, core_price_per_second, parse_price_table

ENV_PRICES = "KANARI_NEURON_PRICES"
NEURONCORE_SERIES = "neuroncore_utilization_ratio"
COST_TEMPLATES = ("cost-per-1k-inferences", "cost-per-1k-regression")
COLD_START_TEMPLATE = "cold-start-seconds"
TEMPLATES = (*COST_TEMPLATES, COLD_START_TEMPLATE)
PROCESS_TAG_ENV = "NEURON_PROCESS_TAG"
COLD_START_SERIES = "kanari_cold_start_seconds"  # kanari.observability.COLD_START


def runtime_tag(namespace: str, name: str, revision: str) -> str:
    return f"{namespace}.{name}.{revision}"


@functools.cache
def _prices(raw: str) -> dict[str, float]:
    return parse_price_table(raw)


def configured_prices(env: Mapping[str, str] | None = None) -> dict[str, float]:
    """The price table: defaults, overridden by KANARI_NEURON_PRICES (raises PriceTableError naming it)."""
    return _prices((os.environ if env is None else env).get(ENV_PRICES, ""))


def price_vector(prices: Mapping[str, float]) -> str:
    """USD per NeuronCore-second by instance_type, as a PromQL instant vector."""
    parts = []
    for itype in sorted(INSTANCES):
        per_core = core_price_per_second(itype, prices)
        if per_core is not None:
            parts.append(f'label_replace(vector({per_core:.12g}), "instance_type", "{itype}", "", "")')
    return " or ".join(parts)


def _cores(tag: str) -> str:
    return f'count by (instance_type) ({NEURONCORE_SERIES}{{runtime_tag="{tag}"}})'


def _step(window_seconds: float) -> float:
    return max(1.0, round(window_seconds / 60))


def cost_usd(tag: str, prices: Mapping[str, float], window_seconds: float) -> str:
    """USD the cores tagged `tag` cost over the window ({{interval}})."""
    step = _step(window_seconds)
    # Types without a price multiply by NaN, never by nothing.
    priced = f"({price_vector(prices)}) or on (instance_type) ({_cores(tag)} * NaN)"
    rate = f"sum({_cores(tag)} * on (instance_type) ({priced}))"
    return f"(sum_over_time(({rate})[{{{{interval}}}}:{format_duration(step)}]) * {step:g})"


def _requests(mode: str, revision: str) -> str:
    if mode == "Serverless":
        sel = f'namespace_name="{{{{namespace}}}}", revision_name="{revision}"'
        return f"sum(increase(revision_app_request_count{{{sel}}}[{{{{interval}}}}]))"
    sel = f'namespace="{{{{namespace}}}}", kanari_dev_revision="{revision}"'
    return f"sum(increase(request_preprocess_seconds_count{{{sel}}}[{{{{interval}}}}]))"


def per_1k(mode: str, tag: str, revision: str, prices: Mapping[str, float], window_seconds: float) -> str:
    return f"(1000 * {cost_usd(tag, prices, window_seconds)} / {_requests(mode, revision)})"


def cost_parts(template: str, mode: str, window_seconds: float, prices: Mapping[str, float] | None = None) -> dict[str, str]:
    """value/samples/stable PromQL for a cost template ({{variables}} still in)."""
    try:
        table = dict(prices) if prices is not None else configured_prices()
    except PriceTableError as exc:
        from kanari.rollout.templates import TemplateError

        raise TemplateError(str(exc)) from None
    canary = per_1k(mode, "{{canaryTag}}", "{{canaryRevision}}", table, window_seconds)
    stable = per_1k(mode, "{{stableTag}}", "{{stableRevision}}", table, window_seconds)
    samples = _requests(mode, "{{canaryRevision}}")
    if template == "cost-per-1k-regression":
        return {"value": f"(100 * ({canary} / {stable} - 1))", "samples": samples}
    return {"value": canary, "samples": samples, "stable": stable}


def cold_start_parts(mode: str) -> dict[str, str]:
    """The operator's own figure per revision (kanari_cold_start_seconds, measured by the warm-up gate)."""

    def figure(revision: str) -> str:
        sel = f'job="{{{{controllerJob}}}}", namespace="{{{{namespace}}}}", model="{{{{name}}}}", revision="{revision}"'
        return f"max({COLD_START_SERIES}{{{sel}}})"

    return {
        "value": figure("{{canaryRevision}}"),
        "samples": _requests(mode, "{{canaryRevision}}"),
        "stable": figure("{{stableRevision}}"),
    }


def parts(template: str, mode: str, window_seconds: float) -> dict[str, str]:
    if template == COLD_START_TEMPLATE:
        return cold_start_parts(mode)
    return cost_parts(template, mode, window_seconds)


COST_WINDOW_SECONDS = 300.0


async def measure_revision_costs(
    prom: Any,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    variables: Mapping[str, str],
    now: datetime,
    window_seconds: float = COST_WINDOW_SECONDS,
) -> list[RevisionCost]:
    """Cost per 1,000 inferences of the stable and canary revisions over the last window.

    Prometheus trouble or a missing price yields a record with no figure and the reason, never a number.
    """
    from kanari.rollout.prometheus import PrometheusError, PrometheusUnavailable
    from kanari.rollout.templates import TemplateError, substitute

    window = format_duration(window_seconds)
    at = now_iso(now)
    out: list[RevisionCost] = []
    unavailable: str | None = None
    for role, ref in (("stable", status.stableModel), ("canary", status.canaryModel)):
        if ref is None:
            continue
        rec = RevisionCost(revision=ref.revision, role=role, window=window, measuredAt=at)  # type: ignore[arg-type]
        if unavailable is not None:
            # One Prometheus outage is retried once per measurement, not once per query.
            out.append(rec.model_copy(update={"message": unavailable}))
            continue
        try:
            values = {**variables, "interval": window}
            prices = configured_prices()
            tag, rev = (values[f"{role}Tag"], values[f"{role}Revision"])
            usd_q = substitute(cost_usd(tag, prices, window_seconds), values)
            step = _step(window_seconds)
            cores_q = substitute(
                f"sum_over_time(sum({_cores(tag)})[{{{{interval}}}}:{format_duration(step)}]) * {step:g}", values
            )
            req_q = substitute(_requests(spec.serving.deploymentMode, rev), values)
            usd, core_s, reqs = [await _scalar(prom, q, now) for q in (usd_q, cores_q, req_q)]
        except (PrometheusError, TemplateError, PriceTableError) as exc:
            out.append(rec.model_copy(update={"message": f"not measured: {exc}"}))
            if isinstance(exc, PrometheusUnavailable):
                unavailable = f"not measured: {exc}"
            continue
        update: dict[str, Any] = {"neuronCoreSeconds": core_s, "requests": reqs}
        if usd is None or math.isnan(usd):
            update["message"] = "no price for an instance type this revision runs on, or no neuron-monitor data"
        elif not reqs:
            update["message"] = "no requests in the window"
        else:
            update["costPer1kInferences"] = 1000 * usd / reqs
        out.append(rec.model_copy(update=update))
    return out


async def _scalar(prom: Any, promql: str, now: datetime) -> float | None:
    samples = await prom.query(promql, now)
    return samples[0].value if samples else None
