"""Realised-quality alerts for a ModelDeployment with `spec.rollout.rollbackWindow`: a PrometheusRule (Prometheus
Operator) the controller owns beside the drift one (kanari.controller.drift_rules).

One alert, KanariRealisedQualityDrop, per served revision (stable and canary) whose model package registered the
window's metric. It fires on the retro-verdict's own rule (kanari.judging.retro), written in PromQL: the
one-sided (1 - alpha) Wilson upper bound of the realised proportion (kanari_realised_quality over
kanari_realised_quality_denominator rows, from delayed labels) is below `registered - tolerance`, with at least
`minLabels` rows behind it. So a revision that meets registered - tolerance raises it with probability at most
alpha per evaluation, and it keeps saying so after the rollback window has closed, when only a person can act.

The figure compared with is the revision's own registered one (status.stableModel / canaryModel
.registeredMetrics): a revision without one gets no alert, never one against a made-up floor.
"""

from __future__ import annotations

from typing import Any

from kanari.api.v1alpha1 import ModelDeployment
from kanari.controller.drift_rules import RETRAIN_LABEL
from kanari.judging.retro import one_sided_z
from kanari.rollout.prometheus import label_value
from kanari.scrape import ScrapeJobs

ALERT = "KanariRealisedQualityDrop"
# The bound already holds false alarms to alpha per evaluation; the hold only keeps one label batch that moves
# the figure across the floor and back from paging anyone.
HOLD = "10m"


def drop_expr(namespace: str, model: str, metric: str, floors: dict[str, float], alpha: float, min_labels: int,
              jobs: ScrapeJobs) -> str:
    """PromQL that returns, per revision in `floors` (monitor revision label -> registered - tolerance), the
    Wilson upper bound of its realised `metric` when that bound is below the floor over >= min_labels rows.
    Only the drift monitor's scrape job counts: another target's figures neither raise nor hide the alert."""
    z = one_sided_z(alpha)
    z2 = z * z
    parts = []
    for revision, floor in sorted(floors.items()):
        sel = (f'{jobs.monitor_matcher}, namespace="{label_value(namespace)}", model="{label_value(model)}", '
               f'revision="{label_value(revision)}", metric="{label_value(metric)}"')
        # max by: a sharded or restarted monitor may export the same series from more than one target.
        p = f"max by (namespace, model, revision, metric) (kanari_realised_quality{{{sel}}})"
        n = f"max by (namespace, model, revision, metric) (kanari_realised_quality_denominator{{{sel}}})"
        upper = (f"(({p}) + {z2!r} / (2 * ({n})) + {z!r} * sqrt(({p}) * (1 - ({p})) / ({n}) + {z2!r} / (4 * ({n}) * "
                 f"({n})))) / (1 + {z2!r} / ({n}))")
        parts.append(f"(({upper}) < {floor!r} and ({n}) >= {min_labels})")
    return " or ".join(parts)


def floors(md: ModelDeployment) -> dict[str, float]:
    """Monitor revision label -> registered figure less the tolerance, for the served revisions whose status
    records one. Status is the one source: a version recorded before its registered metrics were kept there gets
    them from its own package in the same reconcile (engine._fill_registry_facts) before this reads them."""
    rw = md.spec.rollout.rollbackWindow
    if rw is None or md.status is None:
        return {}
    out: dict[str, float] = {}
    for ref in (md.status.stableModel, md.status.canaryModel):
        registered = ref.registered(rw.metric) if ref is not None else None
        if ref is not None and registered is not None:
            out[ref.monitor_revision] = registered - rw.tolerance
    return out


def _labels(md: ModelDeployment) -> dict[str, str]:
    """A realised-quality drop is the surest sign a model needs retraining: with spec.monitoring.retrain the alert
    carries the drift alerts' routing label, and the receiver applies the ModelDeployment's own policy to it."""
    labels = {"severity": "critical", "namespace": md.metadata.namespace, "model": md.metadata.name}
    mon = md.spec.monitoring
    if mon is not None and mon.enabled and mon.retrain is not None:
        labels[RETRAIN_LABEL] = "true"
    return labels


def build_prometheus_rule(md: ModelDeployment, jobs: ScrapeJobs) -> dict[str, Any] | None:
    """A monitoring.coreos.com/v1 PrometheusRule, or None when there is nothing to alert on (no rollbackWindow,
    or no served revision registered the metric). The controller adds the ownerReferences."""
    rw = md.spec.rollout.rollbackWindow
    limits = floors(md)
    if rw is None or not limits:
        return None
    ns, name = md.metadata.namespace, md.metadata.name
    listed = ", ".join(f"{rev}: {floor:.4g}" for rev, floor in sorted(limits.items()))
    rule = {
        "alert": ALERT,
        "expr": drop_expr(ns, name, rw.metric, limits, rw.alpha, rw.minLabels, jobs),
        "for": HOLD,
        "labels": _labels(md),
        "annotations": {
            "summary": f"Realised {rw.metric} of {ns}/{name} revision {{{{ $labels.revision }}}} is below its "
                       f"registered {rw.metric} less {rw.tolerance:g}",
            "description": (
                f"From delayed ground-truth labels: the {1 - rw.alpha:g} upper bound of the realised {rw.metric} "
                f"is {{{{ $value | printf \"%.4f\" }}}}, below the floor (registered less {rw.tolerance:g}; "
                f"{listed}) over at least {rw.minLabels} labels."
            ),
        },
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": f"{name}-realised-quality",
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/managed-by": "kanari",
                "app.kubernetes.io/component": "quality-alerts",
                "kanari.dev/model-deployment": name,
            },
        },
        "spec": {"groups": [{"name": f"kanari-realised-quality.{ns}.{name}", "rules": [rule]}]},
    }
