"""The controller's reading for the retro-verdict: the promoted version's realised quality and its denominator
(kanari_realised_quality / _denominator, exported by the drift monitor from delayed labels, read from its scrape
job only: kanari.scrape). Fetch only; the engine decides (engine._retro), against the figure recorded with the
version in status.stableModel.registeredMetrics."""

from __future__ import annotations

import math
from datetime import datetime

from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus
from kanari.rollout import engine
from kanari.rollout.prometheus import (
    PrometheusClient,
    PrometheusQueryError,
    PrometheusUnavailable,
    label_value,
)
from kanari.scrape import ScrapeJobs


def queries(namespace: str, name: str, revision: str, metric: str, jobs: ScrapeJobs) -> tuple[str, str]:
    sel = (f'{jobs.monitor_matcher}, namespace="{label_value(namespace)}", model="{label_value(name)}", '
           f'revision="{label_value(revision)}", metric="{label_value(metric)}"')
    # max(): with a sharded monitor only the owner exports a model, and a restarted one starts again from 0.
    return f"max(kanari_realised_quality{{{sel}}})", f"max(kanari_realised_quality_denominator{{{sel}}})"


async def observe_realised(
    prom: PrometheusClient, namespace: str, name: str, spec: ModelDeploymentSpec, status: ModelDeploymentStatus,
    now: datetime, jobs: ScrapeJobs,
) -> engine.RealisedQuality | None:
    """One reading, or None when the engine has nothing to judge now (no window open)."""
    if not engine.retro_due(spec, status, now):
        return None
    rw, stable, facts = spec.rollout.rollbackWindow, status.stableModel, status.retro
    assert rw is not None and stable is not None and facts is not None
    value_q, denominator_q = queries(namespace, name, stable.monitor_revision, rw.metric, jobs)

    def reading(value: float | None, denominator: int, error: str | None = None) -> engine.RealisedQuality:
        return engine.RealisedQuality(facts.revision, rw.metric, value, denominator, error)

    try:
        values = await prom.query(value_q, now)
        denominators = await prom.query(denominator_q, now)
    except PrometheusUnavailable as exc:
        return reading(None, 0, f"Prometheus unavailable: {exc}")
    except PrometheusQueryError as exc:
        return reading(None, 0, f"Prometheus rejected the query ({exc.error_type}): {exc.message}")
    if not values or not denominators:
        return reading(None, 0)  # no labels joined yet: no figure, never a pass
    value, denominator = values[0].value, denominators[0].value
    if not (math.isfinite(value) and 0 <= value <= 1 and math.isfinite(denominator) and denominator >= 0):
        return reading(None, 0, f"realised {rw.metric} {value} over {denominator} rows is not a proportion")
    return reading(value, int(denominator))
