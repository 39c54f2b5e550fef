"""Analysis runs as `kubectl argo rollouts get` shows AnalysisRuns: one line per run with its status icon and
counters (✔ successful, ✖ failed, ? inconclusive, ⚠ error), then one line per metric with its latest
measurement, the stable version's figure beside the canary's, and the threshold it was judged against."""

from __future__ import annotations

from datetime import UTC, datetime

from kanari.api.conditions import parse_time
from kanari.api.v1alpha1 import AnalysisRun, Measurement, MetricRun

ICONS = {
    "Successful": "✔",
    "Failed": "✖",
    "Inconclusive": "?",
    "Error": "⚠",
    "Running": "◌",
    "Pending": "◷",
}


def _age(since: str, now: datetime) -> str:
    t = parse_time(since)
    if t is None:
        return "-"
    seconds = max(0, int((now - t).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _counters(m: MetricRun | AnalysisRun) -> str:
    if isinstance(m, AnalysisRun):
        totals = {k: sum(getattr(x, k) for x in m.metrics if not x.dryRun)
                  for k in ("successful", "failed", "inconclusive", "error")}
    else:
        totals = {k: getattr(m, k) for k in ("successful", "failed", "inconclusive", "error")}
    parts = [f"{ICONS[name]} {totals[key]}" for name, key in
             (("Successful", "successful"), ("Failed", "failed"), ("Inconclusive", "inconclusive"), ("Error", "error"))
             if totals[key]]
    return "  ".join(parts)


def _latest(m: MetricRun) -> str:
    if not m.measurements:
        return "not measured yet"
    last: Measurement = m.measurements[-1]
    text = f"{_num(last.value)}"
    if last.stableValue is not None:
        text += f" (stable {_num(last.stableValue)})"
    if last.threshold:
        text += f"  {last.threshold}"
    if last.sampleCount is not None:
        text += f"  {last.sampleCount:.0f} samples"
    if last.phase != "Successful" and last.message:
        text += f"  - {last.message}"
    return text


def render_runs(runs: list[AnalysisRun], now: datetime | None = None) -> list[str]:
    """The lines of the analysis-run tree (empty when there is none)."""
    if not runs:
        return []
    now = now or datetime.now(UTC)
    rows = [["NAME", "KIND", "STATUS", "AGE", "INFO"]]
    for run in runs:
        where = f"step {run.step}" if run.step is not None else "whole rollout"
        rows.append([
            f"α {run.name}", "AnalysisRun", f"{ICONS.get(run.phase, '')} {run.phase}", _age(run.startedAt, now),
            f"{_counters(run)}  ({where}, revision {run.revision})".strip(),
        ])
        for i, m in enumerate(run.metrics):
            branch = "└──" if i == len(run.metrics) - 1 else "├──"
            dry = " (dryRun)" if m.dryRun else ""
            rows.append([
                f"  {branch} {m.name}{dry}", "Metric", f"{ICONS.get(m.phase, '')} {m.phase}", "",
                f"{_counters(m)}  latest {_latest(m)}".strip(),
            ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
