"""Drift series and alerts from Prometheus, through the controller's own client (auth, SigV4, retries). Drift
series are read from the drift monitor's scrape job only (kanari.scrape), as the controller reads them."""

from __future__ import annotations

import math
import re
from typing import Any

import httpx

from kanari.dashboard.views import DriftReading
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig
from kanari.scrape import ScrapeJobs

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _quote(value: str) -> str:
    """A label value as a PromQL string; names come from the API server and are checked, not trusted."""
    if not _LABEL.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes name")
    return f'"{value}"'


class Prometheus(PrometheusClient):
    """The controller's client, plus the dashboard's queries."""

    def __init__(self, config: PrometheusConfig, transport: httpx.AsyncBaseTransport | None = None,
                 jobs: ScrapeJobs | None = None):
        super().__init__(config, transport)
        self.jobs = jobs or ScrapeJobs.from_env()

    async def range_series(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """The client's range query, NaN and infinities as gaps (None) for the charts."""
        out = []
        for series in await self.query_range(promql, start, end, step):
            t = [ts for ts, _ in series.points]
            v = [x if math.isfinite(x) else None for _, x in series.points]
            out.append({"labels": series.labels, "t": t, "v": v})
        return out

    async def drift_series(self, namespace: str, name: str, method: str, start: float, end: float) -> list[dict[str, Any]]:
        step = max(1.0, math.ceil((end - start) / 300))
        promql = (f"max by (feature, revision, endpoint) (kanari_feature_drift{{{self.jobs.monitor_matcher}, "
                  f"namespace={_quote(namespace)}, "
                  f"model={_quote(name)}, method={_quote(method)}}})")
        return [{"feature": s["labels"].get("feature", "?"), "revision": s["labels"].get("revision", ""),
                 "endpoint": s["labels"].get("endpoint", ""), "t": s["t"], "v": s["v"]}
                for s in await self.range_series(promql, start, end, step)]

    async def alerts(self, namespace: str, name: str) -> list[dict[str, str]]:
        promql = f'ALERTS{{alertstate="firing", namespace={_quote(namespace)}, model={_quote(name)}}}'
        return [{k: s.labels.get(k, "") for k in ("alertname", "severity", "feature", "revision", "endpoint")}
                for s in await self.query(promql)]

    async def readings(self) -> dict[tuple[str, str], dict[str, DriftReading]]:
        """Per (namespace, model) and revision: the worst feature drift now, and critical alerts firing."""
        out: dict[tuple[str, str], dict[str, DriftReading]] = {}
        drift = await self.query(
            f"max by (namespace, model, revision, feature) (kanari_feature_drift{{{self.jobs.monitor_matcher}}})")
        for s in drift:
            k = (s.labels.get("namespace", ""), s.labels.get("model", ""))
            rev = s.labels.get("revision", "")
            old = out.setdefault(k, {}).get(rev)
            if math.isfinite(s.value) and (old is None or old.value is None or s.value > old.value):
                out[k][rev] = DriftReading(s.value, s.labels.get("feature", ""))
        firing = await self.query('count by (namespace, model, revision) (ALERTS{alertstate="firing", severity="critical"})')
        for s in firing:
            k = (s.labels.get("namespace", ""), s.labels.get("model", ""))
            rev = s.labels.get("revision", "")
            old = out.setdefault(k, {}).get(rev) or DriftReading(None)
            out[k][rev] = DriftReading(old.value, old.feature, int(s.value))
        return out


def serving_reading(per_revision: dict[str, DriftReading], revisions: set[str]) -> DriftReading | None:
    """The worst reading among the revisions serving now: an idle revision's stale gauges are not current."""
    live = [r for rev, r in per_revision.items() if rev in revisions or rev == ""]
    if not live:
        return None
    values = [r for r in live if r.value is not None]
    worst = max(values, key=lambda r: r.value or 0.0) if values else None
    return DriftReading(worst.value if worst else None, worst.feature if worst else "", sum(r.firing for r in live))
