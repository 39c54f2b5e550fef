"""The router standing in for Istio/Knative routing, queue-proxy metrics and KServe's payload logger.

The backends here are small aiohttp servers; the logged events are parsed by the drift monitor's own
parser, and the metrics are queried through real Prometheus with the rollout engine's own templates.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kanari.api.v1alpha1 import ModelDeploymentSpec
from kanari.monitor.payload import REQUEST_TYPE, RESPONSE_TYPE, parse_event
from kanari.rollout import analysis
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig

from devstack.router import REVISION_HEADER, LoggerSpec, Route, Router, Target
from devstack.stack import ScrapeTarget, free_port, start_prometheus


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def _backend(name: str, status: int = 200, delay: float = 0.0, fail_every: int = 0) -> web.Application:
    calls = Counter[str]()

    async def predict(request: web.Request) -> web.Response:
        await request.read()
        calls["n"] += 1
        if delay:
            await asyncio.sleep(delay)
        code = 500 if fail_every and calls["n"] % fail_every == 0 else status
        return web.json_response({"predictions": [1], "served_by": name}, status=code)

    app = web.Application()
    app.router.add_post("/v1/models/fraud:predict", predict)
    return app


class Sink:
    """A payload-logger sink that keeps what it was sent (headers, body)."""

    def __init__(self, delay: float = 0.0):
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.delay = delay

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.events.append((dict(request.headers), await request.read()))
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/", receive)
        return app


@pytest.fixture()
async def stack() -> AsyncIterator[dict[str, Any]]:
    runners = []
    out: dict[str, Any] = {}
    for name in ("stable", "canary"):
        runner, url = await _serve(_backend(name))
        runners.append(runner)
        out[name] = url
    router = Router(seed=7)
    runner, url = await _serve(router.app())
    runners.append(runner)
    out.update(router=router, url=url)
    yield out
    for r in reversed(runners):
        await r.cleanup()


async def _send(url: str, n: int, session: aiohttp.ClientSession) -> list[tuple[int, str]]:
    async def one() -> tuple[int, str]:
        async with session.post(f"{url}/serving/ml/fraud/v1/models/fraud:predict",
                                json={"instances": [{"a": 1}]}) as resp:
            await resp.read()
            return resp.status, resp.headers.get(REVISION_HEADER, "")

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_traffic_is_split_by_the_route_percentages(stack: dict[str, Any]) -> None:
    stack["router"].set_route(Route("ml", "fraud", (
        Target("fraud-predictor-00001", stack["stable"], 70), Target("fraud-predictor-00002", stack["canary"], 30),
    )))
    async with aiohttp.ClientSession() as session:
        results = await _send(stack["url"], 400, session)
    by = Counter(rev for _, rev in results)
    assert {status for status, _ in results} == {200}
    assert 0.22 <= by["fraud-predictor-00002"] / 400 <= 0.38
    assert by["fraud-predictor-00001"] + by["fraud-predictor-00002"] == 400


async def test_a_revision_that_went_away_is_retried_on_another_one(stack: dict[str, Any]) -> None:
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    stack["router"].set_route(Route("ml", "fraud", (
        Target("fraud-predictor-00001", stack["stable"], 50), Target("fraud-predictor-00002", gone, 50),
    )))
    async with aiohttp.ClientSession() as session:
        results = await _send(stack["url"], 60, session)
    assert results == [(200, "fraud-predictor-00001")] * 60


async def test_no_ready_revision_is_a_503_counted_as_unrouted(stack: dict[str, Any]) -> None:
    router: Router = stack["router"]
    async with aiohttp.ClientSession() as session:
        results = await _send(stack["url"], 3, session)
        async with session.get(f"{stack['url']}/metrics") as resp:
            text = await resp.text()
    assert results == [(503, "")] * 3
    assert 'kanari_local_router_unrouted_total{namespace_name="ml",service_name="fraud"} 3.0' in text
    assert router.inflight == {}


async def test_queue_proxy_metrics_carry_knatives_names_and_labels(stack: dict[str, Any]) -> None:
    stack["router"].set_route(Route("ml", "fraud", (Target("fraud-predictor-00001", stack["stable"], 100),)))
    async with aiohttp.ClientSession() as session:
        await _send(stack["url"], 5, session)
        async with session.get(f"{stack['url']}/metrics") as resp:
            text = await resp.text()
    labels = ('configuration_name="fraud-predictor",namespace_name="ml",response_code="200",'
              'response_code_class="2xx",revision_name="fraud-predictor-00001",service_name="fraud-predictor"')
    assert f"revision_app_request_count{{{labels}}} 5.0" in text
    assert f"revision_app_request_latencies_count{{{labels}}} 5.0" in text
    assert "revision_app_request_count_total" not in text  # Knative's name, not prometheus_client's


async def test_payload_logger_events_are_what_kserves_logger_sends() -> None:
    sink = Sink()
    runners = []
    runner, sink_url = await _serve(sink.app())
    runners.append(runner)
    runner, backend = await _serve(_backend("canary"))
    runners.append(runner)
    router = Router()
    runner, url = await _serve(router.app())
    runners.append(runner)
    try:
        logger = LoggerSpec(sink_url + "/", "all", {"kanari.dev/model-version": "fraud/2"})
        router.set_route(Route("ml", "fraud", (Target("fraud-predictor-00002", backend, 100, "canary", "fraud/2", logger),)))
        async with aiohttp.ClientSession() as session:
            await _send(url, 3, session)
        for _ in range(50):
            if len(sink.events) == 6:
                break
            await asyncio.sleep(0.05)
    finally:
        for r in reversed(runners):
            await r.cleanup()
    assert len(sink.events) == 6
    parsed = [parse_event(h, b) for h, b in sink.events]
    assert Counter(e.kind for e in parsed) == {"request": 3, "response": 3}
    by_id: dict[str, set[str]] = {}
    for e in parsed:
        by_id.setdefault(e.id, set()).add(e.kind)
        assert (e.namespace, e.model, e.component, e.endpoint) == ("ml", "fraud", "predictor", "canary")
        assert e.annotations == {"kanari.dev/model-version": "fraud/2"}
    assert all(kinds == {"request", "response"} for kinds in by_id.values()) and len(by_id) == 3
    headers = sink.events[0][0]
    assert headers["ce-specversion"] == "1.0" and headers["ce-type"] in (REQUEST_TYPE, RESPONSE_TYPE)
    assert json.loads(headers["ce-metadata"]) == {}
    datetime.fromisoformat(headers["ce-time"])


async def test_a_slow_logger_sink_drops_events_but_never_holds_requests() -> None:
    sink = Sink(delay=5.0)
    runners = []
    runner, sink_url = await _serve(sink.app())
    runners.append(runner)
    runner, backend = await _serve(_backend("stable"))
    runners.append(runner)
    router = Router(queue_size=4, senders=1)
    runner, url = await _serve(router.app())
    runners.append(runner)
    try:
        router.set_route(Route("ml", "fraud", (
            Target("fraud-predictor-00001", backend, 100, logger=LoggerSpec(sink_url + "/")),
        )))
        started = asyncio.get_running_loop().time()
        async with aiohttp.ClientSession() as session:
            results = await _send(url, 20, session)
            elapsed = asyncio.get_running_loop().time() - started
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
    finally:
        for r in reversed(runners):
            await r.cleanup()
    assert {s for s, _ in results} == {200}
    assert elapsed < 2.0
    dropped = next(line for line in text.splitlines() if line.startswith('kanari_local_logger_events_total{outcome="dropped"}'))
    assert float(dropped.split()[-1]) >= 40 - 4 - 1 - 1  # 40 events, a queue of 4, one being sent


async def _first_scrape(prom_url: str) -> None:
    """Prometheus hands targets to its scrapers after its discovery delay (about 5 s)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"{prom_url}/api/v1/query", params={"query": "up"}) as resp:
                if (await resp.json())["data"]["result"]:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError("Prometheus never scraped the router")


@pytest.mark.prometheus
@pytest.mark.timeout(60)
async def test_the_rollout_templates_measure_a_canary_through_the_routers_metrics(tmp_path: Path) -> None:
    """The contract with the rollout engine: its Serverless queries, sent to real Prometheus scraping the
    router, see the canary's failures and the stable's successes."""
    runners = []
    runner, stable = await _serve(_backend("stable"))
    runners.append(runner)
    runner, canary = await _serve(_backend("canary", fail_every=2))
    runners.append(runner)
    router = Router(seed=3)
    runner, url = await _serve(router.app())
    runners.append(runner)
    prom = start_prometheus(tmp_path / "prom", [ScrapeTarget("router", [url.removeprefix("http://")])])
    try:
        await _first_scrape(prom.url)
        router.set_route(Route("ml", "fraud", (
            Target("fraud-predictor-00001", stable, 50), Target("fraud-predictor-00002", canary, 50, "canary"),
        )))
        async with aiohttp.ClientSession() as session:
            for _ in range(8):
                await _send(url, 20, session)
                await asyncio.sleep(0.5)
        await asyncio.sleep(2.5)
        spec = ModelDeploymentSpec.model_validate({
            "model": {"storageUri": "s3://b/m.tar.gz", "format": "pytorch"},
            "serving": {"accelerator": "cpu"},
            "rollout": {"steps": [{"setWeight": 50}, {"analysis": {}}], "analysis": {
                "interval": "5s", "minSampleCount": 20, "metrics": [
                    {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.95}},
                    {"name": "p99", "template": "request-latency-p99", "thresholdRange": {"max": 0.25}},
                ]}},
        })
        variables = {"namespace": "ml", "name": "fraud", "canaryRevision": "fraud-predictor-00002",
                     "stableRevision": "fraud-predictor-00001"}
        async with PrometheusClient(PrometheusConfig(url=prom.url)) as client:
            results = {r.name: r for r in await analysis.measure(spec, variables, client, datetime.now(UTC))}
    finally:
        prom.stop()
        for r in reversed(runners):
            await r.cleanup()
    assert results["success-rate"].verdict == "Failed", results["success-rate"]
    assert results["success-rate"].value == pytest.approx(0.5, abs=0.1)
    assert "stable: 1" in results["success-rate"].message
    assert results["p99"].verdict == "Successful", results["p99"]


async def test_a_failed_request_is_logged_without_a_response_as_kserve_does() -> None:
    sink = Sink()
    runners = []
    runner, sink_url = await _serve(sink.app())
    runners.append(runner)
    runner, backend = await _serve(_backend("broken", status=500))
    runners.append(runner)
    router = Router()
    runner, url = await _serve(router.app())
    runners.append(runner)
    try:
        router.set_route(Route("ml", "fraud", (Target("fraud-predictor-00003", backend, 100, logger=LoggerSpec(sink_url + "/")),)))
        async with aiohttp.ClientSession() as session:
            assert await _send(url, 4, session) == [(500, "fraud-predictor-00003")] * 4
        for _ in range(40):
            if len(sink.events) >= 4:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    finally:
        for r in reversed(runners):
            await r.cleanup()
    assert [parse_event(h, b).kind for h, b in sink.events] == ["request"] * 4
