"""The demo's report: the dashboard's static export (`kanari dashboard --export`) plus a text summary.

What the demo shows is what users get: the same list, rollout, drift and lineage views, rendered by the same
page script from the same view documents, read from the cluster stand-in and the real Prometheus of the run.
The demo adds what only it knows (its decisions with their time, each version's registry lineage, the traffic
totals, the stand-ins) as notes on the list page, written as text lines, never as data structures.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoEvent:
    t: float
    kind: str  # phase | decision | promoted | rolled-back | alert | retrain | chaos | info | drift
    text: str


@dataclass
class VersionLineage:
    version: str
    model_package_arn: str = ""
    approval: str = ""
    dataset: str = ""
    pipeline_run: str = ""
    training_job: str = ""
    revision: str = ""
    outcome: str = ""
    note: str = ""


@dataclass
class Report:
    title: str
    started: float
    finished: float
    events: list[DemoEvent]
    lineage: list[VersionLineage]
    totals: dict[str, Any]
    stand_ins: list[str]
    alerts: list[tuple[str, float, float]]  # (alertname, first, last firing sample)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "started": self.started,
            "finished": self.finished,
            "seconds": round(self.finished - self.started, 1),
            "events": [asdict(e) for e in self.events],
            "lineage": [asdict(v) for v in self.lineage],
            "totals": self.totals,
            "stand_ins": self.stand_ins,
            "alerts": [{"alert": a, "start": s, "end": e} for a, s, e in self.alerts],
        }


# ----------------------------------------------------------------------------------------- Prometheus
def _get(url: str, path: str, params: dict[str, str]) -> Any:
    with urllib.request.urlopen(f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}", timeout=30) as resp:
        doc = json.loads(resp.read())
    if doc.get("status") != "success":
        raise RuntimeError(f"Prometheus rejected {params.get('query')!r}: {doc.get('error')}")
    return doc["data"]["result"]


def instant_query(url: str, promql: str) -> list[tuple[dict[str, str], float]]:
    return [(r["metric"], float(r["value"][1])) for r in _get(url, "/api/v1/query", {"query": promql})]


def firing_alerts(url: str, namespace: str, name: str, start: float, end: float, step: float = 1.0
                  ) -> list[tuple[str, float, float]]:
    """Spans during which each critical alert of the model fired (ALERTS, as Prometheus kept it)."""
    promql = f'ALERTS{{alertstate="firing", severity="critical", namespace="{namespace}", model="{name}"}}'
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    firing: dict[str, set[float]] = {}
    for r in _get(url, "/api/v1/query_range", params):
        # A drift alert fires once per drifted feature, at about the same time: one span per alert name.
        firing.setdefault(r["metric"].get("alertname", "?"), set()).update(
            float(t) for t, v in r["values"] if float(v) > 0)
    return [(alert, a, b) for alert, times in sorted(firing.items()) for a, b in _spans(sorted(times), step)]


def _spans(times: Sequence[float], step: float) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    for t in times:
        if spans and t - spans[-1][1] <= step * 1.5:
            spans[-1] = (spans[-1][0], t)
        else:
            spans.append((t, t))
    return spans


# ------------------------------------------------------------------------------------------------- text
def _clock(t: float, t0: float) -> str:
    s = max(0, int(round(t - t0)))
    return f"T+{s // 60:02d}:{s % 60:02d}"


def _lines(key: str, value: Any, indent: str = "  ") -> list[str]:
    """`key: value` for a plain value; a mapping or list as indented lines of its own."""
    if isinstance(value, Mapping):
        if not value:
            return [f"{indent}{key}: none"]
        out = [f"{indent}{key}:"]
        for k, v in value.items():
            out += _lines(str(k), v, indent + "  ")
        return out
    if isinstance(value, list | tuple):
        if not value:
            return [f"{indent}{key}: none"]
        return [f"{indent}{key}:", *(f"{indent}  - {v}" for v in value)]
    return [f"{indent}{key}: {value}"]


def decisions(report: Report) -> list[str]:
    return [f"{_clock(e.t, report.started)}  {e.kind:<11} {e.text}" for e in report.events if e.kind != "info"]


def lineage_lines(report: Report) -> list[str]:
    lines = []
    for v in report.lineage:
        lines.append(f"{v.version}: {v.outcome}{' (' + v.note + ')' if v.note else ''}")
        for key, label in (("dataset", "data"), ("pipeline_run", "pipeline run"), ("training_job", "training job"),
                           ("model_package_arn", "model package"), ("approval", "approval"),
                           ("revision", "deployment")):
            value = getattr(v, key)
            if value:
                lines.append(f"    {label:<14} {value}")
    return lines


def render_text(report: Report) -> str:
    lines = [report.title, "=" * len(report.title), ""]
    started = datetime.fromtimestamp(report.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines.append(f"started {started}, took {report.finished - report.started:.0f}s")
    lines.append("")
    lines.append("Stand-ins (what replaces the cluster here; everything else is the production code path):")
    lines.extend(f"  - {s}" for s in report.stand_ins)
    lines.append("")
    lines.append("Decisions and events:")
    lines.extend(f"  {line}" for line in decisions(report))
    lines.append("")
    lines.append("Model versions (lineage):")
    lines.extend(f"  {line}" for line in lineage_lines(report))
    lines.append("")
    lines.append("Traffic:")
    for key, value in report.totals.items():
        lines += _lines(str(key), value)
    return "\n".join(lines) + "\n"


def notes(report: Report) -> dict[str, list[str]]:
    """The demo's own sections of the exported list page."""
    totals = [line.strip() for key, value in report.totals.items() for line in _lines(str(key), value)]
    return {
        "Decisions and events": decisions(report),
        "Model versions (lineage from the model registry)": lineage_lines(report),
        "Traffic": totals,
        "Stand-ins (everything else is the production code path)": list(report.stand_ins),
    }


# ----------------------------------------------------------------------------------------------- export
def write_report(report: Report, out: Path, kubeconfig: Path | None = None, prometheus: str = "") -> dict[str, Path]:
    """The dashboard export of the run into out/dashboard (when the cluster is still up), the text summary
    and the run's data as JSON."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if kubeconfig is not None:
        paths["dashboard"] = export_dashboard(report, out / "dashboard", kubeconfig, prometheus)
    text = out / "summary.txt"
    text.write_text(render_text(report))
    data = out / "report.json"
    data.write_text(json.dumps(report.to_json(), indent=1))
    return {**paths, "text": text, "json": data}


def export_dashboard(report: Report, out: Path, kubeconfig: Path, prometheus: str) -> Path:
    from kanari.dashboard.cluster import Cluster, kubeconfig_client
    from kanari.dashboard.export import export
    from kanari.dashboard.prom import Prometheus
    from kanari.rollout.prometheus import PrometheusConfig

    api, namespace, _ = kubeconfig_client(str(kubeconfig), None)
    cluster = Cluster(api, namespace)

    async def go() -> None:
        prom = Prometheus(PrometheusConfig(url=prometheus.rstrip("/"))) if prometheus else None
        try:
            await export(cluster, prom, out, since=report.started, notes=notes(report))
        finally:
            if prom is not None:
                await prom.close()
            cluster.close()

    asyncio.run(go())
    return out / "index.html"
