"""The Prometheus scrape jobs that produce Kanari's own series, so every query over a `kanari_*` series can say which.

Any target Prometheus scrapes can publish a series named `kanari_estimated_quality{namespace="x",model="y"}` (a
tenant's model container exposing /metrics is scraped through KServe's annotations or the predictor PodMonitor).
A query that selects by namespace/model alone takes that series for the drift monitor's and can pass a canary or
silence a drift alert. The `job` label is the one a scraped process cannot set: Prometheus attaches it from the
scrape configuration and, with honor_labels off (the chart's ServiceMonitors and Prometheus' default), a `job`
the target exposes itself is renamed `exported_job`. So every query Kanari writes pins `job`.

With the chart's ServiceMonitors the job label is the Service's name (prometheus-operator: "if jobLabel is empty
or the label does not exist on the Service, the job label defaults to the name of the Service"), which the chart
names `<fullname>-controller` and `<fullname>-drift-monitor`. The chart passes both to the operator from the
helper that names the Services (`kanari.scrapeJob`); the defaults are the chart's with the release named `kanari`,
which the devstack Prometheus also uses.

  KANARI_MONITOR_JOB      job of the drift monitor's series (kanari_feature_drift, kanari_estimated_quality, ...)
  KANARI_CONTROLLER_JOB   job of the controller's own series (kanari_cold_start_seconds, ...)

A job that names no scraped target yields no series: the judge's answer is Inconclusive (never a pass), but the
drift and quality alerts stay silent, so the value must match the scrape configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kanari.rollout.prometheus import ConfigError, label_value

ENV_MONITOR_JOB = "KANARI_MONITOR_JOB"
ENV_CONTROLLER_JOB = "KANARI_CONTROLLER_JOB"
DEFAULT_MONITOR_JOB = "kanari-drift-monitor"
DEFAULT_CONTROLLER_JOB = "kanari-controller"
MAX_JOB = 253


def _job(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    if value is None:
        return default
    value = value.strip()
    if not value or len(value) > MAX_JOB or not value.isprintable():
        raise ConfigError(f"{name}: expected the Prometheus job label of a scrape target (1-{MAX_JOB} printable "
                          "characters)")
    return value


@dataclass(frozen=True)
class ScrapeJobs:
    """Which scrape job produces which of Kanari's series."""

    monitor: str = DEFAULT_MONITOR_JOB
    controller: str = DEFAULT_CONTROLLER_JOB

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ScrapeJobs:
        """Raises ConfigError naming the variable for an empty or unprintable value."""
        env = os.environ if env is None else env
        return cls(_job(env, ENV_MONITOR_JOB, DEFAULT_MONITOR_JOB),
                   _job(env, ENV_CONTROLLER_JOB, DEFAULT_CONTROLLER_JOB))

    @property
    def monitor_matcher(self) -> str:
        """`job="..."` for a PromQL selector over the drift monitor's series."""
        return f'job="{label_value(self.monitor)}"'

    @property
    def controller_matcher(self) -> str:
        return f'job="{label_value(self.controller)}"'
