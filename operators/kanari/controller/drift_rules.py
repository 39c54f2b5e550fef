"""Drift alerts for a ModelDeployment: a PrometheusRule (Prometheus Operator) or a plain rule file.

Alert names are stable so people can grep for them: KanariFeatureDriftWarning, KanariFeatureDriftCritical,
KanariPredictionDriftWarning, KanariPredictionDriftCritical, KanariSchemaViolations. Critical drift alerts
carry `kanari_retrain: "true"` when the ModelDeployment asks for retraining, which is what routes them to
the retraining receiver; the retraining policy rides along as annotations.

The metrics' `model` label is the InferenceService name, which is the ModelDeployment's name. Every selector pins
the drift monitor's scrape job (kanari.scrape): another target exporting the same names cannot raise or silence
these alerts, and so cannot start or hold back a retraining.
"""

from __future__ import annotations

import json
from typing import Any

from kanari.api.v1alpha1 import ModelDeployment
from kanari.rollout.prometheus import label_value
from kanari.scrape import ScrapeJobs

RETRAIN_LABEL = "kanari_retrain"
ANNOTATION_PIPELINE = "retrain_pipeline"
ANNOTATION_COOLDOWN = "retrain_cooldown"
ANNOTATION_MAX_PER_DAY = "retrain_max_per_day"
ANNOTATION_PARAMETERS = "retrain_parameters"
SCHEMA_WINDOW = "5m"


def _selector(md: ModelDeployment, jobs: ScrapeJobs, **extra: str) -> str:
    labels = {"namespace": md.metadata.namespace, "model": md.metadata.name, **extra}
    return ",".join([jobs.monitor_matcher, *(f'{k}="{label_value(v)}"' for k, v in labels.items())])


def rule_groups(md: ModelDeployment, jobs: ScrapeJobs) -> list[dict[str, Any]]:
    """The rule groups for one ModelDeployment; empty when monitoring is off."""
    mon = md.spec.monitoring
    if mon is None or not mon.enabled:
        return []
    drift = mon.drift
    method = drift.method
    ns, name = md.metadata.namespace, md.metadata.name
    base_labels = {"namespace": ns, "model": name, "kanari_method": method}
    retrain_annotations: dict[str, str] = {}
    if mon.retrain is not None:
        retrain_annotations = {
            ANNOTATION_PIPELINE: mon.retrain.pipeline,
            ANNOTATION_COOLDOWN: mon.retrain.cooldown,
            ANNOTATION_MAX_PER_DAY: str(mon.retrain.maxPerDay),
        }
        if mon.retrain.parameters:
            retrain_annotations[ANNOTATION_PARAMETERS] = json.dumps(mon.retrain.parameters, sort_keys=True)

    def labels(severity: str) -> dict[str, str]:
        out = {**base_labels, "severity": severity}
        if severity == "critical" and mon.retrain is not None:
            out[RETRAIN_LABEL] = "true"
        return out

    feature_expr = f"max by (namespace, model, feature) (kanari_feature_drift{{{_selector(md, jobs, method=method)}}})"
    prediction_expr = f"max by (namespace, model) (kanari_prediction_drift{{{_selector(md, jobs, method=method)}}})"
    rules: list[dict[str, Any]] = []
    for severity, threshold in (("warning", drift.warn), ("critical", drift.critical)):
        title = severity.capitalize()
        rules.append(
            {
                "alert": f"KanariFeatureDrift{title}",
                "expr": f"{feature_expr} > {threshold:g}",
                "for": drift.for_,
                "labels": labels(severity),
                "annotations": {
                    "summary": f"Input feature {{{{ $labels.feature }}}} of {ns}/{name} has drifted ({severity})",
                    "description": (
                        f"Feature {{{{ $labels.feature }}}} of model {ns}/{name}: {method} "
                        f"{{{{ $value | printf \"%.3f\" }}}} is above {threshold:g} for {drift.for_} "
                        "(live traffic vs the training baseline)."
                    ),
                    **(retrain_annotations if severity == "critical" else {}),
                },
            }
        )
        rules.append(
            {
                "alert": f"KanariPredictionDrift{title}",
                "expr": f"{prediction_expr} > {threshold:g}",
                "for": drift.for_,
                "labels": labels(severity),
                "annotations": {
                    "summary": f"Predictions of {ns}/{name} have drifted ({severity})",
                    "description": (
                        f"Predictions of model {ns}/{name}: {method} {{{{ $value | printf \"%.3f\" }}}} vs the "
                        f"training target is above {threshold:g} for {drift.for_}."
                    ),
                    **(retrain_annotations if severity == "critical" else {}),
                },
            }
        )
    rules.append(
        {
            "alert": "KanariSchemaViolations",
            "expr": (
                f"sum by (namespace, model, kind) "
                f"(increase(kanari_schema_violations_total{{{_selector(md, jobs)}}}[{SCHEMA_WINDOW}])) > 0"
            ),
            "for": drift.for_,
            "labels": {"namespace": ns, "model": name, "severity": "warning"},
            "annotations": {
                "summary": f"Requests to {ns}/{name} break the training schema ({{{{ $labels.kind }}}})",
                "description": (
                    f"{{{{ $value | printf \"%.0f\" }}}} {{{{ $labels.kind }}}} violations in the last {SCHEMA_WINDOW} "
                    f"for {ns}/{name}."
                ),
            },
        }
    )
    return [{"name": f"kanari-drift.{ns}.{name}", "rules": rules}]


def build_prometheus_rule(md: ModelDeployment, jobs: ScrapeJobs) -> dict | None:
    """A monitoring.coreos.com/v1 PrometheusRule, or None when monitoring is off. The controller adds
    the ownerReferences."""
    groups = rule_groups(md, jobs)
    if not groups:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": f"{md.metadata.name}-drift",
            "namespace": md.metadata.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "kanari",
                "app.kubernetes.io/component": "drift-alerts",
                "kanari.dev/model-deployment": md.metadata.name,
            },
        },
        "spec": {"groups": groups},
    }
