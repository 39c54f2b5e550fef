"""End to end, on loopback: a Serverless BlueGreen preview at 0% gets its analysis samples from replayed
traffic and nothing else.

devstack's KServe stand-in router plays Knative (the stable revision at 100%, the preview at 0% behind its
`latest` tag URL, the queue-proxy's request metrics) and KServe's payload logger (events to the monitor).
Users' requests reach only the stable revision; the drift monitor (the real app: intake, ring, replay) keeps
them and replays them to the preview's tag URL; real Prometheus scrapes the router; the rollout's own
analysis (kanari.rollout.analysis with the shipped `request-success-rate` template) judges the preview.

Three ModelDeployments side by side: a healthy preview passes, a broken one (500s) fails, and one with
`previewTraffic.replay: false` has no samples at all (inconclusive), which is what every preview had before.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from drift_testlib import cancer_frame
from kanari.api.v1alpha1 import ModelDeploymentSpec
from kanari.monitor.registry import ModelRegistry
from kanari.monitor.replay import Replayer, aiohttp_sender
from kanari.monitor.server import DriftMonitor, build_app
from kanari.monitor.settings import MonitorSettings
from kanari.rollout import analysis
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig

from devstack.router import LoggerSpec, Route, Router, Target
from devstack.stack import ScrapeTarget, free_port, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(90)]

NS = "ml"
FEATURES = [c for c in cancer_frame().columns if c != "target"]
# name -> (what the preview answers, replay on)
MODELS = {"fraud": (200, True), "churn": (500, True), "quiet": (200, False)}


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def _model_server(status: int, seen: list[str]) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(request.headers.get("Ce-Id", ""))
        return web.json_response({"predictions": [0] * len(body.get("instances") or [])}, status=status)

    app = web.Application()
    app.router.add_post("/{tail:.*}", predict)
    return app


def _md(name: str, baseline: Path, preview_url: str, replay: bool) -> dict[str, Any]:
    def ref(v: str) -> dict[str, str]:
        return {"revision": f"rev-{v}", "version": v, "storageUri": f"s3://models/{name}/{v}/"}

    return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"storageUri": f"s3://models/{name}/8/", "format": "sklearn"},
                     "serving": {"deploymentMode": "Serverless"},
                     "rollout": {"strategy": "BlueGreen",
                                 "blueGreen": {"previewTraffic": {"replay": replay, "ratePerSecond": 20}}},
                     "monitoring": {"enabled": True, "baselineUri": f"file://{baseline}"}},
            "status": {"stableModel": ref("7"), "canaryModel": ref("8"), "canaryWeight": 0,
                       "previewUrl": preview_url}}


async def _first_scrape(prom_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(150):
            async with session.get(f"{prom_url}/api/v1/query", params={"query": "up"}) as resp:
                if (await resp.json())["data"]["result"]:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError("Prometheus never scraped the router")


async def test_replayed_traffic_gives_a_serverless_preview_its_analysis(tmp_path: Path,
                                                                        cancer_baseline_dir: Path) -> None:
    runners: list[web.AppRunner] = []
    seen: dict[str, list[str]] = {}
    reports: dict[str, dict[str, Any]] = {}
    router = Router(seed=5)
    runner, router_url = await _serve(router.app())
    runners.append(runner)
    registry = ModelRegistry(preview_domains=None)  # the stand-in's tag URLs are paths on loopback
    monitor = DriftMonitor(MonitorSettings(window_size=100, min_samples=10, evaluate_interval=0.5), registry)

    async def report(ns: str, name: str, body: dict[str, Any]) -> None:
        reports[name] = body

    sender, close_sender = aiohttp_sender(timeout=5)
    replayer = Replayer(registry.previews, monitor.recent, sender, report, max_rate=20, report_interval=0.5)
    runner, monitor_url = await _serve(build_app(monitor, replayer=replayer))
    runners.append(runner)
    prom = start_prometheus(tmp_path / "prom", [ScrapeTarget("router", [router_url.removeprefix("http://")])])
    try:
        for name, (status, replay) in MODELS.items():
            seen[f"{name}-stable"], seen[f"{name}-preview"] = [], []
            runner, stable = await _serve(_model_server(200, seen[f"{name}-stable"]))
            runners.append(runner)
            runner, preview = await _serve(_model_server(status, seen[f"{name}-preview"]))
            runners.append(runner)

            def logger(rev: str) -> LoggerSpec:
                return LoggerSpec(monitor_url + "/", annotations={"kanari.dev/revision": rev})

            # What the KServe stand-in routes for a preview with tag routing on: stable 100%, preview 0% + tag.
            router.set_route(Route(NS, name, (
                Target(f"{name}-predictor-00002", preview, 0, "canary", "8", logger("rev-8"), "latest"),
                Target(f"{name}-predictor-00001", stable, 100, "default", "7", logger("rev-7")),
            )))
            registry.update(_md(name, cancer_baseline_dir, f"{router_url}/tags/latest/{NS}/{name}", replay))
        await _first_scrape(prom.url)

        rows = cancer_frame()[FEATURES].to_numpy()
        async with aiohttp.ClientSession() as session:
            for i in range(40):  # users: every request to the main URL, none to a tag URL
                for name in MODELS:
                    async with session.post(f"{router_url}/serving/{NS}/{name}/v1/models/{name}:predict",
                                            data=json.dumps({"instances": rows[i:i + 2].tolist()}),
                                            headers={"Content-Type": "application/json"}) as resp:
                        assert resp.status == 200
                await asyncio.sleep(0.05)
            await asyncio.sleep(6)  # replay at 20/s for a few seconds, then two scrapes

        spec = ModelDeploymentSpec.model_validate({
            "model": {"storageUri": "s3://b/m.tar.gz", "format": "sklearn"},
            "serving": {"accelerator": "cpu"},
            "rollout": {"strategy": "BlueGreen", "analysis": {"interval": "30s", "minSampleCount": 20, "metrics": [
                {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.95}}]}},
        })
        results = {}
        async with PrometheusClient(PrometheusConfig(url=prom.url)) as client:
            for name in MODELS:
                variables = {"namespace": NS, "name": name, "canaryRevision": f"{name}-predictor-00002",
                             "stableRevision": f"{name}-predictor-00001"}
                results[name] = (await analysis.measure(spec, variables, client, datetime.now(UTC)))[0]
    finally:
        prom.stop()
        await replayer.close()
        await close_sender()
        for r in reversed(runners):
            await r.cleanup()

    # The preview was reached only by replay (every request it saw carries the replay's Ce-Id)...
    for name in ("fraud", "churn"):
        assert len(seen[f"{name}-preview"]) >= 20, (name, len(seen[f"{name}-preview"]))
        assert all(i.startswith("kanari-replay-") for i in seen[f"{name}-preview"])
        assert len(seen[f"{name}-stable"]) == 40  # and the replay never went to the stable
    assert seen["quiet-preview"] == []
    # ...and its analysis has samples: a healthy preview passes, a broken one fails.
    assert results["fraud"].verdict == "Successful", results["fraud"]
    assert results["churn"].verdict == "Failed", results["churn"]
    assert results["churn"].value == pytest.approx(0.0)
    assert results["quiet"].verdict == "Inconclusive", results["quiet"]  # without replay: nothing to judge
    # The user sees what fed it, in status.previewTraffic.
    for name in ("fraud", "churn"):
        r = reports[name]
        assert r["source"] == "replay" and r["revision"] == "rev-8" and r["ratePerSecond"] == 20
        assert r["sent"] >= 20 and r["available"] == 40
    assert reports["fraud"]["errors"] == 0 and reports["churn"]["errors"] == reports["churn"]["sent"]
    assert "quiet" not in reports
    # The preview's logged copies went neither back into the ring nor into the stable model's window.
    assert len(monitor.recent.recent(NS, "fraud")) == 40
    stable = next(w for k, w in monitor.windows.items() if k.model == "fraud" and k.revision == "7")
    assert stable.window.samples <= 80  # 40 requests of 2 rows, not one row more
