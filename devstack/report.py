"""The demo's report: a timeline picture (PNG and an HTML page embedding it) and a text summary.

The series come from Prometheus range queries over the run (what the router, standing in for Knative's
queue-proxy, and the drift monitor exported, and the ALERTS Prometheus itself kept); the decisions from the
ModelDeployment's status and Events as the demo saw them; the lineage from the model registry. Fetching is
`fetch_timeline`; everything else renders what it is given.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kanari.rollout.prometheus import PrometheusConfig, run_blocking

# Event kinds drawn as vertical markers, with their colour.
MARKERS = {
    "promoted": "#2e7d32",
    "rolled-back": "#c62828",
    "alert": "#ef6c00",
    "retrain": "#6a1b9a",
    "chaos": "#455a64",
}


@dataclass(frozen=True)
class DemoEvent:
    t: float
    kind: str  # phase | decision | promoted | rolled-back | alert | retrain | chaos | info
    text: str


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]


@dataclass
class Timeline:
    traffic: list[Series] = field(default_factory=list)  # percent, per model version
    success: list[Series] = field(default_factory=list)  # ratio, per model version
    latency: list[Series] = field(default_factory=list)  # p99 milliseconds, per model version
    drift: list[Series] = field(default_factory=list)  # max feature drift, per model version and endpoint
    alerts: list[tuple[str, float, float]] = field(default_factory=list)  # (alertname, start, end)
    drift_thresholds: tuple[float, float] | None = None


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
    timeline: Timeline
    events: list[DemoEvent]
    lineage: list[VersionLineage]
    totals: dict[str, Any]
    stand_ins: list[str]

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
            "alerts": [{"alert": a, "start": s, "end": e} for a, s, e in self.timeline.alerts],
        }


# ----------------------------------------------------------------------------------------- Prometheus
def range_query(url: str, promql: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], list]]:
    """Kanari's Prometheus client (retries, errors named), used synchronously by the report."""
    series = run_blocking(PrometheusConfig(url=url.rstrip("/"), timeout=30.0),
                          lambda prom: prom.query_range(promql, start, end, step))
    return [(s.labels, s.points) for s in series]


def instant_query(url: str, promql: str) -> list[tuple[dict[str, str], float]]:
    samples = run_blocking(PrometheusConfig(url=url.rstrip("/"), timeout=30.0), lambda prom: prom.query(promql))
    return [(s.labels, s.value) for s in samples]


def _finite(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(t, v) for t, v in points if math.isfinite(v)]


def fetch_timeline(
    url: str, namespace: str, name: str, start: float, end: float, step: float = 1.0, window: str = "5s",
    drift_method: str = "psi", drift_thresholds: tuple[float, float] | None = None,
) -> Timeline:
    svc = f'namespace_name="{namespace}", service_name="{name}"'
    tl = Timeline(drift_thresholds=drift_thresholds)
    versions: dict[str, str] = {}
    by_version: dict[str, dict[float, float]] = {}
    for labels, points in range_query(url, f"kanari_local_route_percent{{{svc}}}", start, end, step):
        version = labels.get("model_version") or labels.get("revision_name", "?")
        versions[labels.get("revision_name", "")] = version
        acc = by_version.setdefault(version, {})
        for t, v in points:
            acc[t] = acc.get(t, 0.0) + v
    tl.traffic = [Series(v, sorted(acc.items())) for v, acc in sorted(by_version.items())]

    sel = f'namespace_name="{namespace}", configuration_name="{name}-predictor"'
    ok = f'sum by (revision_name) (rate(revision_app_request_count{{{sel}, response_code_class!="5xx"}}[{window}]))'
    total = f"sum by (revision_name) (rate(revision_app_request_count{{{sel}}}[{window}]))"
    for labels, points in range_query(url, f"({ok} or ({total} * 0)) / {total}", start, end, step):
        rev = labels.get("revision_name", "?")
        tl.success.append(Series(versions.get(rev, rev), _finite(points)))
    p99 = (f"histogram_quantile(0.99, sum by (le, revision_name) "
           f"(rate(revision_app_request_latencies_bucket{{{sel}}}[{window}])))")
    for labels, points in range_query(url, p99, start, end, step):
        rev = labels.get("revision_name", "?")
        tl.latency.append(Series(versions.get(rev, rev), _finite(points)))
    # One line per model version and endpoint: a promoted version's drift is not hidden by the window of
    # the version it replaced, which the monitor keeps exporting until it has been idle a while.
    drift = (f'max by (endpoint, revision) (kanari_feature_drift{{namespace="{namespace}", model="{name}", '
             f'method="{drift_method}"}})')
    for labels, points in range_query(url, drift, start, end, step):
        role = "canary" if labels.get("endpoint") == "canary" else "stable"
        tl.drift.append(Series(f"{labels.get('revision', '?')} ({role})", _finite(points)))
    alerts = f'ALERTS{{alertstate="firing", severity="critical", namespace="{namespace}", model="{name}"}}'
    # One span per alert name: a drift alert fires once per drifted feature, at about the same time.
    firing: dict[str, set[float]] = {}
    for labels, points in range_query(url, alerts, start, end, step):
        firing.setdefault(labels.get("alertname", "?"), set()).update(t for t, v in points if v > 0)
    for alertname, times in sorted(firing.items()):
        tl.alerts.extend((alertname, a, b) for a, b in _spans(sorted(times), step))
    return tl


def _spans(times: Sequence[float], step: float) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    for t in times:
        if spans and t - spans[-1][1] <= step * 1.5:
            spans[-1] = (spans[-1][0], t)
        else:
            spans.append((t, t))
    return spans


# ---------------------------------------------------------------------------------------------- picture
def _version_of(label: str) -> str:
    return label.split(" (", 1)[0]


def _with_gaps(points: Sequence[tuple[float, float]], t0: float, gap: float = 3.0) -> tuple[list[float], list[float]]:
    """x, y with a NaN where samples are missing, so a line is not drawn across a time with no data."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (t, v) in enumerate(points):
        if i and t - points[i - 1][0] > gap:
            xs.append(t - t0 - 0.5)
            ys.append(math.nan)
        xs.append(t - t0)
        ys.append(v)
    return xs, ys


def render_png(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = report.started
    tl = report.timeline
    fig, axes = plt.subplots(4, 1, figsize=(12, 10), sharex=True, constrained_layout=True)
    panels = [
        (axes[0], tl.traffic, "traffic %", (0, 105)),
        (axes[1], tl.success, "success rate", (0, 1.05)),
        (axes[2], tl.latency, "p99 latency (ms)", None),
        (axes[3], tl.drift, "feature drift (max, psi)", None),
    ]
    # One colour per model version in every panel; a canary's drift line is dashed.
    versions = list(dict.fromkeys(_version_of(s.label) for _, series, _, _ in panels for s in series))
    palette = plt.get_cmap("tab10")
    colors = {v: palette(i % 10) for i, v in enumerate(versions)}
    for ax, series, label, ylim in panels:
        for s in series:
            if s.points:
                xs, ys = _with_gaps(s.points, t0)
                style = "--" if s.label.endswith("(canary)") else "-"
                ax.plot(xs, ys, style, label=s.label, linewidth=1.6, color=colors[_version_of(s.label)])
        ax.set_ylabel(label)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        if any(s.points for s in series):
            ax.legend(loc="upper left", fontsize=8, ncol=4)
    if tl.drift_thresholds:
        warn, critical = tl.drift_thresholds
        axes[3].axhline(warn, color="#f9a825", linestyle=":", linewidth=1, label=f"warn {warn:g}")
        axes[3].axhline(critical, color="#c62828", linestyle=":", linewidth=1, label=f"critical {critical:g}")
        axes[3].legend(loc="upper left", fontsize=8, ncol=4)
    for _alert, a, b in tl.alerts:
        for ax in axes:
            ax.axvspan(a - t0, max(b, a + 1) - t0, color=MARKERS["alert"], alpha=0.12, linewidth=0)
    for e in report.events:
        color = MARKERS.get(e.kind)
        if color is None:
            continue
        for ax in axes:
            ax.axvline(e.t - t0, color=color, linestyle="--", linewidth=1.1, alpha=0.85)
        axes[0].annotate(
            e.kind, xy=(e.t - t0, 102), xycoords="data", rotation=90, fontsize=7, color=color,
            ha="right", va="top",
        )
    axes[-1].set_xlim(0, report.finished - t0)
    axes[-1].set_xlabel("seconds since start (shaded: a critical alert firing)")
    fig.suptitle(report.title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- text
def _clock(t: float, t0: float) -> str:
    s = max(0, int(round(t - t0)))
    return f"T+{s // 60:02d}:{s % 60:02d}"


def render_text(report: Report) -> str:
    t0 = report.started
    lines = [report.title, "=" * len(report.title), ""]
    started = datetime.fromtimestamp(report.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines.append(f"started {started}, took {report.finished - report.started:.0f}s")
    lines.append("")
    lines.append("Stand-ins (what replaces the cluster here; everything else is the production code path):")
    lines.extend(f"  - {s}" for s in report.stand_ins)
    lines.append("")
    lines.append("Decisions and events:")
    for e in report.events:
        if e.kind == "info":
            continue
        lines.append(f"  {_clock(e.t, t0)}  {e.kind:<11} {e.text}")
    lines.append("")
    lines.append("Model versions (lineage):")
    for v in report.lineage:
        lines.append(f"  {v.version}: {v.outcome}{' (' + v.note + ')' if v.note else ''}")
        for key, label in (("dataset", "data"), ("pipeline_run", "pipeline run"), ("training_job", "training job"),
                           ("model_package_arn", "model package"), ("approval", "approval"),
                           ("revision", "deployment")):
            value = getattr(v, key)
            if value:
                lines.append(f"      {label:<14} {value}")
    lines.append("")
    lines.append("Traffic:")
    for key, value in report.totals.items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"


def render_html(report: Report, png: Path, path: Path) -> Path:
    t0 = report.started
    image = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(
        f"<tr class='{html.escape(e.kind)}'><td>{_clock(e.t, t0)}</td><td>{html.escape(e.kind)}</td>"
        f"<td>{html.escape(e.text)}</td></tr>"
        for e in report.events if e.kind != "info"
    )
    lineage = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
            v.version, v.outcome, v.dataset, v.pipeline_run, v.training_job, v.model_package_arn, v.approval,
            v.revision, v.note)) + "</tr>"
        for v in report.lineage
    )
    totals = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in report.totals.items())
    stand_ins = "".join(f"<li>{html.escape(s)}</li>" for s in report.stand_ins)
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px; }}
tr.promoted td {{ background: #e8f5e9; }} tr.rolled-back td {{ background: #ffebee; }}
tr.alert td {{ background: #fff3e0; }} tr.retrain td {{ background: #f3e5f5; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head><body>
<h1>{html.escape(report.title)}</h1>
<p>Took {report.finished - report.started:.0f}s.</p>
<img alt="rollout timeline" src="data:image/png;base64,{image}">
<h2>Decisions and events</h2><table><tr><th>time</th><th>kind</th><th>what and why</th></tr>{rows}</table>
<h2>Model versions</h2><table><tr><th>version</th><th>outcome</th><th>data</th><th>pipeline run</th>
<th>training job</th><th>model package</th><th>approval</th><th>deployment</th><th>note</th></tr>{lineage}</table>
<h2>Traffic</h2><ul>{totals}</ul>
<h2>Stand-ins</h2><p>What replaces the cluster on this machine; the rollout engine, analysis, drift code and
alert rules are the production code paths.</p><ul>{stand_ins}</ul>
</body></html>
"""
    path.write_text(doc)
    return path


def write_report(report: Report, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    png = render_png(report, out / "timeline.png")
    page = render_html(report, png, out / "report.html")
    text = out / "summary.txt"
    text.write_text(render_text(report))
    data = out / "report.json"
    data.write_text(json.dumps(report.to_json(), indent=1))
    return {"png": png, "html": page, "text": text, "json": data}
