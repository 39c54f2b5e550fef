"""The one rollout loop step: due metrics -> measure -> decide. Callers apply the decision themselves.

The operator (kanari.controller.handlers), the tests and bench/rollout_bench.py all go through `step`, so
what the tests and the benchmark measure is the production loop, not a copy of it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from kanari.api.v1alpha1 import MetricResult, ModelDeploymentSpec, ModelDeploymentStatus
from kanari.rollout import analysis, engine
from kanari.rollout.prometheus import PrometheusClient

T = TypeVar("T")


async def measure_due(
    spec: ModelDeploymentSpec | None,
    status: ModelDeploymentStatus,
    now: datetime,
    prom: PrometheusClient,
    variables: Callable[[], dict[str, str]],
) -> list[MetricResult] | None:
    """One measurement of the metrics due now, or None when none is due (or the spec is unreadable)."""
    if spec is None:
        return None
    due = engine.due_metrics(spec, status, now)
    if not due:
        return None
    return await analysis.measure(spec, variables(), prom, now, due)


async def step(
    spec: ModelDeploymentSpec | None,
    status: ModelDeploymentStatus,
    now: datetime,
    prom: PrometheusClient,
    variables: Callable[[], dict[str, str]],
    decide: Callable[[list[MetricResult] | None], T],
) -> T:
    """Measure what is due, then decide on it. `decide` is engine.decide or the controller's reconcile,
    bound to everything else they observe."""
    return decide(await measure_due(spec, status, now, prom, variables))
