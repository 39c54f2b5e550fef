"""`kanari dashboard --export DIR`: the same views as static pages, for a report, a ticket or the demo.

Each page is the live page's shell with its view document embedded instead of fetched, the same script and
the vendored chart library copied next to it: open DIR/index.html from disk, no server, no network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kanari.dashboard import pages, views
from kanari.dashboard.cluster import Cluster
from kanari.dashboard.prom import Prometheus, serving_reading
from kanari.dashboard.server import drift_document
from kanari.dashboard.status_view import read_status
from kanari.rollout.prometheus import PrometheusError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def export(cluster: Cluster, prometheus: Prometheus | None, out: Path, since: float | None = None,
                 notes: dict[str, Any] | None = None) -> list[Path]:
    """Write every ModelDeployment the identity can read; `since`: start of the drift window (epoch s).

    `notes`: extra sections for the list page (the demo's stand-ins and traffic totals), as
    {title: [text, ...]}: shown as lists, never as raw data structures.
    """
    now = time.time()
    since = since if since is not None else now - 3600
    items = sorted(await cluster.list(), key=views.key)
    readings: dict[tuple[str, str], dict[str, views.DriftReading]] = {}
    problem = ""
    if prometheus is not None:
        try:
            readings = await prometheus.readings()
        except PrometheusError as exc:
            problem = f"Prometheus: {exc}"
    written: list[Path] = []
    rows = []
    for obj in items:
        meta = obj.get("metadata") or {}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        st = read_status(obj.get("status"))
        reading = serving_reading(readings.get((ns, name), {}),
                                  {x for v in (st.stable, st.canary) if v for x in (v.label, v.revision)})
        rows.append(views.summary_row(obj, reading, now))
        root = "../../../"
        base = f"md/{ns}/{name}"
        nav = {"All": f"{root}index.html", "Rollout": f"{root}{base}/index.html",
               "Drift": f"{root}{base}/drift.html", "Lineage": f"{root}{base}/lineage.html"}
        meta_doc = {"actionsEnabled": False, "export": True, "exportedAt": now}
        detail = {**views.detail(obj, await cluster.events(ns, name), now, reading), **meta_doc}
        drift = {**await drift_document(prometheus, obj, since, now), **meta_doc}
        lineage = {"summary": rows[-1], "lineage": views.lineage_view(obj), **meta_doc}
        for view, fname, doc, title in (("detail", "index.html", detail, f"{ns}/{name}"),
                                        ("drift", "drift.html", drift, f"{ns}/{name} · drift"),
                                        ("lineage", "lineage.html", lineage, f"{ns}/{name} · lineage")):
            written.append(_write(out / base / fname,
                                  pages.page(view, title, root=root, data=doc, nav=nav, live=False)))
    listing = {"rows": rows, "actionsEnabled": False, "export": True, "exportedAt": now, "prometheus": problem,
               "notes": {k: [str(x) for x in v] for k, v in (notes or {}).items()}}
    written.append(_write(out / "index.html", pages.page("list", "ModelDeployments", root="", data=listing,
                                                          nav={"All": "index.html"}, live=False)))
    for name in pages.STATIC:
        target = out / "static" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pages.static_file(name))
    written.append(_write(out / "dashboard.json", json.dumps({"exportedAt": now, "rows": rows}, indent=1)))
    return written
