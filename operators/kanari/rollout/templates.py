"""PromQL for the built-in analysis templates and custom queries.

Every metric is sent to Prometheus as ONE instant query. A built-in template's query returns up to three
series told apart by the label `kanari_part`: `value` (what is judged, for the canary), `samples` (how many
requests or drift samples stand behind it, checked against minSampleCount) and `stable` (the same figure
for the stable version, shown next to the canary's so a reader can compare). They are glued with
`label_replace(...) or label_replace(...)`: each part keeps its own empty-or-not result, so a missing part
(no traffic yet) is seen as missing instead of hiding the others.

Where the numbers come from:
- Serverless (Knative): the queue-proxy's `revision_app_request_count` and
  `revision_app_request_latencies_bucket` (milliseconds), labelled `namespace_name`, `revision_name`,
  `response_code_class`. `{{canaryRevision}}`/`{{stableRevision}}` are Knative revision names.
- RawDeployment: the KServe model server's own histograms (kserve 0.21 `kserve.metrics`:
  `request_preprocess_seconds`, `request_predict_seconds`, `request_postprocess_seconds`, label
  `model_name`). The model server counts no status codes, but `Model.__call__` enters postprocess only
  after predict succeeded, while preprocess is timed for every request that reached the model: success
  rate = postprocess count / preprocess count. Canary and stable pods are told apart by the pod label
  `kanari.dev/revision`, which Prometheus' Kubernetes discovery (labelmap) exposes as
  `kanari_dev_revision`; `{{canaryRevision}}`/`{{stableRevision}}` are its values. Latency is predict
  time as the model server measures it, in seconds.
- CBPE (`estimated-f1-drop`, `estimated-roc-auc-drop`): the drift monitor's label-free estimate of the canary's
  quality, `kanari_estimated_quality{namespace,model,revision,metric}` with the rows behind it
  (`kanari_estimated_quality_rows`), subtracted from the figure the canary's model package registered on the
  test split (status.canaryModel.registeredMetrics, from kanari:metric.<name>). The value is the drop (positive:
  worse than registered), judged with `thresholdRange: {max: <tolerated drop>}`. `revision` is the monitor's
  label for the canary (its registry version, else its rollout revision). No calibration, no estimate: no
  value (Inconclusive); no registered figure: an Error naming the variable. Never a pass on either.
- Drift: the drift monitor's gauges `kanari_canary_divergence{namespace,model,method}`,
  `kanari_prediction_drift{namespace,model,endpoint,revision,method}` and
  `kanari_drift_window_samples{namespace,model,endpoint}`; `endpoint` is KServe's logger endpoint,
  `default` (stable) or `canary`.

Every selector over a `kanari_*` series pins the scrape job that produces it, `{{monitorJob}}` (the drift
monitor's) or `{{controllerJob}}` (the operator's own, for cold start), from the operator's configuration
(kanari.scrape): a model container or any other target exporting a series of the same name and labels is not
read, so it cannot pass a canary. Custom queries over Kanari's series should do the same (`job="{{monitorJob}}"`).

Latency is always reported in seconds so one thresholdRange works in both deployment modes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kanari.api.duration import format_duration, parse_duration
from kanari.api.v1alpha1 import MetricSpec, ModelDeploymentSpec
from kanari.capacity import cost

PART_LABEL = "kanari_part"
RAW_REVISION_LABEL = "kanari_dev_revision"
# canaryTag/stableTag: the revisions' Neuron runtime tags (kanari.capacity.cost.runtime_tag).
# canaryMonitorRevision: the drift monitor's `revision` label for the canary; canaryRegistered<Metric>: the
# test metric its model package registered (empty when it registered none). monitorJob/controllerJob: the scrape
# jobs of the drift monitor's and the operator's series (kanari.scrape), quoted for a label matcher.
CBPE_TEMPLATES = {"estimated-f1-drop": ("f1", "canaryRegisteredF1"),
                  "estimated-roc-auc-drop": ("roc_auc", "canaryRegisteredRocAuc")}
VARIABLES = ("namespace", "name", "canaryRevision", "stableRevision", "interval", "canaryTag", "stableTag",
             "canaryMonitorRevision", "monitorJob", "controllerJob",
             *(variable for _, variable in CBPE_TEMPLATES.values()))
MONITOR = 'job="{{monitorJob}}"'
_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateError(ValueError):
    """A query that cannot be built (unknown variable, missing value)."""


@dataclass(frozen=True)
class MetricQuery:
    """The one PromQL sent for a metric; `combined` means it carries kanari_part-labelled parts."""

    promql: str
    combined: bool
    has_samples: bool


def substitute(query: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in VARIABLES:
            raise TemplateError(f"unknown variable {{{{{key}}}}} (known: {', '.join(VARIABLES)})")
        if not variables.get(key):
            raise TemplateError(f"variable {{{{{key}}}}} has no value")
        return variables[key]

    return _VAR.sub(repl, query)


def metric_interval(spec: ModelDeploymentSpec, metric: MetricSpec) -> float:
    analysis = spec.rollout.analysis
    return parse_duration(metric.interval or (analysis.interval if analysis else "1m"))


def _part(expr: str, name: str) -> str:
    return f'label_replace({expr}, "{PART_LABEL}", "{name}", "", "")'


def combine(parts: dict[str, str]) -> str:
    return " or ".join(_part(expr, name) for name, expr in parts.items())


def _serverless(template: str, revision: str, window: str) -> tuple[str, str]:
    sel = f'namespace_name="{{{{namespace}}}}", revision_name="{revision}"'
    count = f"revision_app_request_count{{{sel}}}"
    if template == "request-success-rate":
        ok = f'revision_app_request_count{{{sel}, response_code_class!="5xx"}}'
        # A canary failing every request has no non-5xx series at all: that is a success rate of 0, not "no data".
        return (
            f"(sum(rate({ok}[{window}])) or vector(0)) / sum(rate({count}[{window}]))",
            f"sum(increase({count}[{window}]))",
        )
    if template == "request-latency-p99":
        bucket = f"revision_app_request_latencies_bucket{{{sel}}}"
        return (
            f"histogram_quantile(0.99, sum by (le) (rate({bucket}[{window}]))) / 1000",
            f"sum(increase(revision_app_request_latencies_count{{{sel}}}[{window}]))",
        )
    return f"sum(rate({count}[{window}]))", f"sum(increase({count}[{window}]))"


def _raw(template: str, revision: str, window: str) -> tuple[str, str]:
    sel = f'namespace="{{{{namespace}}}}", {RAW_REVISION_LABEL}="{revision}"'
    entered = f"request_preprocess_seconds_count{{{sel}}}"
    if template == "request-success-rate":
        done = f"request_postprocess_seconds_count{{{sel}}}"
        return (
            f"(sum(rate({done}[{window}])) or vector(0)) / sum(rate({entered}[{window}]))",
            f"sum(increase({entered}[{window}]))",
        )
    if template == "request-latency-p99":
        bucket = f"request_predict_seconds_bucket{{{sel}}}"
        return (
            f"histogram_quantile(0.99, sum by (le) (rate({bucket}[{window}])))",
            f"sum(increase(request_predict_seconds_count{{{sel}}}[{window}]))",
        )
    return f"sum(rate({entered}[{window}]))", f"sum(increase({entered}[{window}]))"


def _drift(template: str, spec: ModelDeploymentSpec, endpoint: str) -> tuple[str, str]:
    who = MONITOR + ', namespace="{{namespace}}", model="{{name}}"'
    if template == "canary-vs-stable-psi":
        return (
            f'max(kanari_canary_divergence{{{who}, method="psi"}})',
            f'min(kanari_drift_window_samples{{{who}, endpoint=~"default|canary"}})',
        )
    method = spec.monitoring.drift.method if spec.monitoring else "psi"
    return (
        f'max(kanari_prediction_drift{{{who}, endpoint="{endpoint}", method="{method}"}})',
        f'sum(kanari_drift_window_samples{{{who}, endpoint="{endpoint}"}})',
    )


def _cbpe(template: str) -> dict[str, str]:
    metric, registered = CBPE_TEMPLATES[template]
    who = MONITOR + ', namespace="{{namespace}}", model="{{name}}", revision="{{canaryMonitorRevision}}"'
    # max(): with a sharded monitor only the owner exports a model, and a restarted one starts again.
    return {
        "value": f'{{{{{registered}}}}} - max(kanari_estimated_quality{{{who}, metric="{metric}"}})',
        "samples": f"max(kanari_estimated_quality_rows{{{who}}})",
    }


def builtin_parts(spec: ModelDeploymentSpec, metric: MetricSpec) -> dict[str, str]:
    """value/samples/stable PromQL (with {{variables}} still in) for a built-in template."""
    template = metric.template or ""
    window = "{{interval}}"
    if template in cost.TEMPLATES:
        return cost.parts(template, spec.serving.deploymentMode, metric_interval(spec, metric))
    if template in CBPE_TEMPLATES:
        return _cbpe(template)
    if template in ("canary-vs-stable-psi", "prediction-drift"):
        value, samples = _drift(template, spec, "canary")
        parts = {"value": value, "samples": samples}
        if template == "prediction-drift":
            parts["stable"] = _drift(template, spec, "default")[0]
        return parts
    build = _serverless if spec.serving.deploymentMode == "Serverless" else _raw
    value, samples = build(template, "{{canaryRevision}}", window)
    stable, _ = build(template, "{{stableRevision}}", window)
    return {"value": value, "samples": samples, "stable": stable}


def metric_query(spec: ModelDeploymentSpec, metric: MetricSpec, variables: dict[str, str]) -> MetricQuery:
    """The single instant query for `metric`; raises TemplateError naming a bad variable."""
    values = {**variables, "interval": format_duration(max(1.0, metric_interval(spec, metric)))}
    if metric.template:
        return MetricQuery(substitute(combine(builtin_parts(spec, metric)), values), True, True)
    assert metric.query is not None
    if metric.sampleQuery:
        promql = combine({"value": f"({metric.query})", "samples": f"({metric.sampleQuery})"})
        return MetricQuery(substitute(promql, values), True, True)
    return MetricQuery(substitute(metric.query, values), False, False)
