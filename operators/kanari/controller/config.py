"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kanari.scrape import ScrapeJobs


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)  # empty: cluster-wide
    drift_monitor_url: str | None = None
    neuron_runtime: str = "kanari-neuron"
    inf2_selector_key: str = "karpenter.k8s.aws/instance-family"
    resync_seconds: float = 30.0
    peering_name: str | None = None
    prometheus_url: str | None = None  # what KEDA queries for NeuronCore autoscaling, unless the spec says
    scrape_jobs: ScrapeJobs = field(default_factory=ScrapeJobs)  # pinned in every query over a kanari_* series

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ if env is None else env)
        return cls(
            namespaces=_list(env.get("KANARI_NAMESPACES")),
            drift_monitor_url=env.get("KANARI_DRIFT_MONITOR_URL") or None,
            neuron_runtime=env.get("KANARI_NEURON_RUNTIME", "kanari-neuron"),
            resync_seconds=float(env.get("KANARI_RESYNC_SECONDS", "30")),
            peering_name=env.get("KANARI_PEERING_NAME") or None,
            prometheus_url=env.get("KANARI_PROMETHEUS_URL") or None,
            scrape_jobs=ScrapeJobs.from_env(env),
        )
