"""The drift monitor's recent requests and their replay to a BlueGreen preview: what is kept (only the stable
model's accepted requests, bounded by count and bytes), who may read it (GET /v1/recent-requests with the API
token), and the replay (only to status.previewUrl, never faster than asked, reported in status.previewTraffic,
and its own logged copies never kept again nor counted in the stable model's window)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from drift_testlib import REQUEST, RESPONSE, cancer_frame, kserve_headers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.api.v1alpha1 import ModelDeployment
from kanari.monitor.recent import REPLAY_ID_PREFIX, RecentRequests
from kanari.monitor.registry import ModelRegistry
from kanari.monitor.replay import Pacer, PreviewTarget, Replayer, aiohttp_sender, preview_target
from kanari.monitor.server import DriftMonitor, build_app
from kanari.monitor.settings import MonitorSettings

pytestmark = pytest.mark.timeout(60)

NS = "ml"
FEATURES = [c for c in cancer_frame().columns if c != "target"]
TOKEN = "s3cret-token"


def md(name: str, baseline: Path, *, strategy: str = "BlueGreen", weight: int = 0, preview_url: str | None =
       "http://latest-fraud-predictor.ml.svc.cluster.local", replay: bool = True, rate: float = 5.0,
       mode: str = "Serverless", canary: bool = True) -> dict[str, Any]:
    def ref(v: str) -> dict[str, str]:
        return {"revision": f"rev-{v}", "version": v, "storageUri": f"s3://models/{name}/{v}/"}

    rollout: dict[str, Any] = {"strategy": strategy}
    if strategy == "BlueGreen":
        rollout["blueGreen"] = {"previewTraffic": {"replay": replay, "ratePerSecond": rate}}
    status: dict[str, Any] = {"stableModel": ref("7"), "previewUrl": preview_url}
    if canary:
        status.update(canaryModel=ref("8"), canaryWeight=weight)
    return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"storageUri": f"s3://models/{name}/8/", "format": "sklearn"},
                     "serving": {"deploymentMode": mode}, "rollout": rollout,
                     "monitoring": {"enabled": True, "baselineUri": f"file://{baseline}"}},
            "status": status}


def rows(n: int, seed: int = 0) -> list[list[float]]:
    frame = cancer_frame()[FEATURES]
    return frame.sample(n, random_state=seed).to_numpy().tolist()


def monitor_for(baseline: Path, names: tuple[str, ...] = ("fraud",), **overrides: Any) -> DriftMonitor:
    registry = ModelRegistry(preview_domains=None)  # previews on loopback here
    for name in names:
        registry.update(md(name, baseline))
    return DriftMonitor(MonitorSettings(**{"window_size": 100, "min_samples": 10, **overrides}), registry)


async def send(monitor: DriftMonitor, i: int, payload: Any, *, kind: str = REQUEST, revision: str = "rev-7",
               ce_id: str | None = None, model: str = "fraud") -> int:
    headers = kserve_headers(ce_id=ce_id or f"id-{i}", ce_type=kind, model=model, namespace=NS,
                             annotations={"kanari.dev/revision": revision})
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, _ = await monitor.handle(headers, raw)
    return status


# ------------------------------------------------------------------------------------------ what is kept
def test_only_the_stable_models_accepted_requests_are_kept(cancer_baseline_dir: Path) -> None:
    monitor = monitor_for(cancer_baseline_dir, max_rows_per_event=50, recent_max_body_bytes=3000)

    async def feed() -> list[int]:
        return [
            await send(monitor, 0, {"instances": rows(2, 1)}),  # kept
            await send(monitor, 1, {"instances": rows(2, 2)}, revision="rev-8"),  # the preview's own: not kept
            await send(monitor, 2, {"predictions": [0, 1]}, kind=RESPONSE),  # a response: not kept
            await send(monitor, 3, {"instances": rows(60, 3)}),  # over max_rows_per_event: 413
            await send(monitor, 4, {"instances": rows(40, 4)}),  # accepted, but over recent_max_body_bytes
            await send(monitor, 5, b'{"instances": [[1, 2'),  # malformed JSON: 400
            await send(monitor, 6, {"rows": [[1.0]]}),  # neither V1 nor V2: 400
            await send(monitor, 7, b"[" * 5000 + b"]" * 5000),  # nesting built to exhaust the parser: 400
            await send(monitor, 8, {"instances": rows(1, 8)}, ce_id=f"{REPLAY_ID_PREFIX}x"),  # a replayed copy
            await send(monitor, 9, {"instances": rows(1, 9)}, model="unknown"),  # not monitored: 404
        ]

    statuses = asyncio.run(feed())
    assert statuses == [200, 200, 200, 413, 200, 400, 400, 400, 200, 404]
    assert monitor.recent.recent(NS, "fraud") == [{"instances": rows(2, 1)}]
    assert monitor.recent.models() == [(NS, "fraud")]


def test_a_replayed_copy_is_not_counted_again_in_the_stable_window(cancer_baseline_dir: Path) -> None:
    monitor = monitor_for(cancer_baseline_dir)

    async def feed() -> None:
        for i in range(5):
            assert await send(monitor, i, {"instances": rows(3, i)}, ce_id=f"real-{i}") == 200
            assert await send(monitor, i, {"predictions": [0, 1, 1]}, kind=RESPONSE, ce_id=f"real-{i}") == 200
        for i in range(5):  # the same requests coming back from a replay, logged under the stable's revision
            for kind, body in ((REQUEST, {"instances": rows(3, i)}), (RESPONSE, {"predictions": [0, 1, 1]})):
                assert await send(monitor, i, body, kind=kind, ce_id=f"{REPLAY_ID_PREFIX}{i}") == 200

    asyncio.run(feed())
    stable = next(w for k, w in monitor.windows.items() if k.revision == "7")
    assert stable.window.samples == 15  # the five real requests of 3 rows; their replayed copies not again
    assert monitor.metrics.events.labels("replayed")._value.get() == 10
    assert len(monitor.recent) == 5


finite = st.floats(-1e6, 1e6, allow_nan=False)
body_strategy = st.one_of(
    st.builds(lambda r: {"instances": r}, st.lists(st.lists(finite, min_size=1, max_size=4), max_size=30)),
    st.builds(lambda d: {"inputs": [{"name": "x", "shape": [len(d)], "datatype": "FP64", "data": d}]},
              st.lists(finite, max_size=40)),
    st.just({"instances": [float("nan")]}),  # not JSON a model server takes back
    st.just({"other": 1}),
    st.just([1, 2]),
    st.text(max_size=5),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(per_model=st.integers(1, 8), max_models=st.integers(1, 4), max_body=st.integers(16, 400),
       max_model_bytes=st.integers(16, 1200),
       adds=st.lists(st.tuples(st.integers(0, 6), body_strategy), max_size=80))
def test_the_ring_bounds_hold_whatever_arrives(per_model: int, max_models: int, max_body: int, max_model_bytes: int,
                                                adds: list[tuple[int, Any]]) -> None:
    ring = RecentRequests(per_model, max_models, max_body, max_model_bytes)
    last: dict[str, Any] = {}
    for model, body in adds:
        kept = ring.add(NS, f"m{model}", body)
        encoded = json.dumps(body, separators=(",", ":")) if isinstance(body, dict | list) else ""
        if kept:
            assert isinstance(body, dict) and ("instances" in body or "inputs" in body)
            assert len(encoded.encode()) <= min(max_body, max_model_bytes)
            last[f"m{model}"] = body
        for name in {f"m{m}" for m, _ in adds}:
            assert ring.count(NS, name) <= per_model
        assert len(ring.models()) <= max_models
        assert ring.bytes() <= max_models * max_model_bytes
        for ns_, name in ring.models():
            kept_bodies = ring.recent(ns_, name)
            size = sum(len(json.dumps(b, separators=(",", ":")).encode()) for b in kept_bodies)
            assert size <= max_model_bytes
    for name, body in last.items():
        got = ring.recent(NS, name, 1)
        assert got in ([], [body])  # newest last (or the model was evicted)


# ------------------------------------------------------------------------------------------ who reads it
def test_recent_requests_need_the_api_token(cancer_baseline_dir: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async def scenario(token: str | None) -> list[tuple[int, Any]]:
        monitor = monitor_for(cancer_baseline_dir)
        for i in range(5):
            await send(monitor, i, {"instances": rows(1, i)})
        client = TestClient(TestServer(build_app(monitor, api_token=token), host="127.0.0.1"))
        await client.start_server()
        out = []
        try:
            for headers, path in [({}, "fraud?limit=2"), ({"Authorization": "Bearer wrong"}, "fraud?limit=2"),
                                  ({"Authorization": f"Bearer {TOKEN}"}, "fraud?limit=2"),
                                  ({"Authorization": f"Bearer {TOKEN}"}, "fraud?limit=0"),
                                  ({"Authorization": f"Bearer {TOKEN}"}, "fraud?limit=x"),
                                  ({"Authorization": f"Bearer {TOKEN}"}, "nobody")]:
                resp = await client.get(f"/v1/recent-requests/{NS}/{path}", headers=headers)
                out.append((resp.status, await resp.json()))
        finally:
            await client.close()
        return out

    closed = asyncio.run(scenario(None))
    assert {s for s, _ in closed} == {403}  # no token configured: never open
    got = asyncio.run(scenario(TOKEN))
    assert [s for s, _ in got] == [401, 401, 200, 400, 400, 404]
    assert got[2][1] == {"requests": [{"instances": rows(1, 3)}, {"instances": rows(1, 4)}]}  # newest last
    assert "limit" in got[3][1]["error"]


def test_the_controllers_warmup_reads_the_monitors_recent_requests_with_the_charts_token(
    cancer_baseline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both halves of the read API: the controller's warm-up client, configured from the environment the chart
    gives it (KANARI_MONITOR_API_TOKEN), against the real monitor app holding logged requests."""
    from aiohttp.test_utils import TestClient, TestServer
    from kanari.controller.warmup import NoSamples, monitor_from_env
    from kanari.monitor.settings import API_TOKEN_ENV

    async def fetch(token: str) -> Any:
        monitor = monitor_for(cancer_baseline_dir)
        for i in range(3):
            await send(monitor, i, {"instances": rows(1, i)})
        server = TestClient(TestServer(build_app(monitor, api_token=TOKEN), host="127.0.0.1"))
        await server.start_server()
        monkeypatch.setenv(API_TOKEN_ENV, token)
        client = monitor_from_env(str(server.make_url("/")))
        assert client is not None
        try:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                return await client.fetch(session, NS, "fraud", 2)
        except NoSamples as exc:
            return str(exc)
        finally:
            await server.close()

    assert asyncio.run(fetch(TOKEN)) == [{"instances": rows(1, 1)}, {"instances": rows(1, 2)}]
    assert "HTTP 401" in asyncio.run(fetch("not-the-token"))


# ------------------------------------------------------------------------------------------ the replay
def test_a_preview_in_progress_is_read_from_spec_and_status(cancer_baseline_dir: Path) -> None:
    def target(**kw: Any) -> PreviewTarget | None:
        return preview_target(ModelDeployment.model_validate(md("fraud", cancer_baseline_dir, **kw)))

    t = target()
    assert t == PreviewTarget(NS, "fraud", "rev-8", "http://latest-fraud-predictor.ml.svc.cluster.local", 5.0)
    # Only the predictor's own tag host in a cluster domain: a status.previewUrl written by anyone else cannot
    # send logged request bodies elsewhere.
    for url in ("http://169.254.169.254/latest", "http://latest-fraud-predictor.other.svc.cluster.local",
                "http://latest-fraud-predictor.ml.svc.cluster.local.evil.com", "http://latest-churn-predictor.ml.svc.cluster.local",
                "http://fraud-predictor.ml.svc.cluster.local"):
        assert target(preview_url=url) is None, url
    assert target(preview_url="https://LATEST-fraud-predictor.ml.svc.cluster.local./") is not None
    assert target(weight=100) is None  # switched: users feed it
    assert target(strategy="Canary") is None
    assert target(replay=False) is None
    assert target(canary=False) is None
    assert target(preview_url=None) is None
    for url in ("file:///etc/passwd", "http://user:pw@host/", "gopher://x", "http:///nohost"):
        assert target(preview_url=url) is None, url
    with pytest.raises(ValueError, match="ratePerSecond"):
        ModelDeployment.model_validate(md("fraud", cancer_baseline_dir, rate=500))


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.5, 50), delays=st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_the_pacer_never_sends_faster_than_its_rate(rate: float, delays: list[float]) -> None:
    pacer, now, sent = Pacer(rate), 0.0, []
    for d in delays:  # d: how long the previous request took (a slow or a fast preview)
        now += d
        now += pacer.wait(now)
        sent.append(now)
    window = 1.0
    for i, t in enumerate(sent):
        in_window = sum(1 for u in sent[i:] if u < t + window)
        assert in_window <= rate * window + 1 + 1e-9


class Preview:
    """A preview model server on loopback: counts what reaches it; answers `status`."""

    def __init__(self, status: int = 200):
        self.status = status
        self.seen: list[tuple[str, dict[str, str], Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.seen.append((request.path, dict(request.headers), await request.json()))
            return web.json_response({"predictions": [0]}, status=self.status)

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.mark.parametrize("answer", [200, 500])
def test_replay_feeds_the_preview_at_its_rate_and_reports_it(cancer_baseline_dir: Path, answer: int) -> None:
    monitor = monitor_for(cancer_baseline_dir)
    reports: list[dict[str, Any]] = []

    async def scenario() -> Preview:
        preview = Preview(answer)
        await preview.start()
        obj = md("fraud", cancer_baseline_dir, preview_url=preview.url + "/", rate=10)
        monitor.models.update(obj)
        for i in range(4):
            await send(monitor, i, {"instances": rows(1, i)})

        async def report(ns: str, name: str, body: dict[str, Any]) -> None:
            reports.append({"key": (ns, name), **body})

        sender, close = aiohttp_sender(timeout=2)
        replayer = Replayer(monitor.models.previews, monitor.recent, sender, report, max_rate=20,
                            report_interval=0.5)
        await replayer.sync()
        started = time.monotonic()
        await asyncio.sleep(1.5)
        elapsed = time.monotonic() - started
        obj["status"]["canaryWeight"] = 100  # switched: the preview is over
        monitor.models.update(obj)
        await replayer.sync()
        sent_at_stop = len(preview.seen)
        await asyncio.sleep(0.3)
        assert len(preview.seen) == sent_at_stop, "replay went on after the preview ended"
        assert len(preview.seen) <= 10 * elapsed + 1
        assert len(preview.seen) >= 5
        await close()
        await preview.stop()
        return preview

    preview = asyncio.run(scenario())
    paths = {p for p, _, _ in preview.seen}
    assert paths == {"/v1/models/fraud:predict"}
    assert all(h["Ce-Id"].startswith(REPLAY_ID_PREFIX) for _, h, _ in preview.seen)
    assert all(h["Content-Type"] == "application/json" for _, h, _ in preview.seen)
    assert {json.dumps(b) for _, _, b in preview.seen} <= {json.dumps({"instances": rows(1, i)}) for i in range(4)}
    final = reports[-1]
    assert final["key"] == (NS, "fraud") and final["source"] == "replay" and final["active"] is False
    assert final["revision"] == "rev-8" and final["ratePerSecond"] == 10 and final["available"] == 4
    assert final["sent"] == len(preview.seen)
    assert final["errors"] == (0 if answer == 200 else len(preview.seen))
    assert any(r["active"] for r in reports)  # reported while it ran, not only at the end
    if answer == 500:
        assert "HTTP 500" in final["message"]


def test_an_unreachable_preview_is_counted_as_errors_never_as_success(cancer_baseline_dir: Path) -> None:
    from devstack.stack import free_port

    monitor = monitor_for(cancer_baseline_dir)
    reports: list[dict[str, Any]] = []

    async def scenario() -> None:
        obj = md("fraud", cancer_baseline_dir, preview_url=f"http://127.0.0.1:{free_port()}", rate=20)
        monitor.models.update(obj)
        await send(monitor, 0, {"instances": rows(1, 0)})

        async def report(ns: str, name: str, body: dict[str, Any]) -> None:
            reports.append(body)

        sender, close = aiohttp_sender(timeout=1)
        replayer = Replayer(monitor.models.previews, monitor.recent, sender, report)
        await replayer.sync()
        await asyncio.sleep(0.6)
        await replayer.close()
        await close()

    asyncio.run(scenario())
    assert reports[-1]["sent"] >= 1 and reports[-1]["errors"] == reports[-1]["sent"]
    assert "ClientConnectorError" in reports[-1]["message"] or "Error" in reports[-1]["message"]


def test_the_monitor_caps_the_rate_and_the_number_of_previews(cancer_baseline_dir: Path) -> None:
    ring = RecentRequests()
    targets = [PreviewTarget(NS, f"m{i}", "r", "http://127.0.0.1:9", 50.0) for i in range(5)]

    async def never(url: str, body: bytes, headers: dict[str, str]) -> int:
        return 200

    async def scenario() -> Replayer:
        r = Replayer(lambda: targets, ring, never, max_rate=3.0, max_feeds=2)
        await r.sync()
        await r.close()
        return r

    r = asyncio.run(scenario())
    assert r.feeds == {}
    r2 = Replayer(lambda: targets, ring, never, max_rate=3.0, max_feeds=2)

    async def count() -> list[float]:
        await r2.sync()
        rates = [f.rate for f in r2.feeds.values()]
        await r2.close()
        return rates

    assert asyncio.run(count()) == [3.0, 3.0]
    assert np.isfinite(3.0)


# ------------------------------------------------------------------------------------------ what a user sees
def test_preview_traffic_reaches_status_on_the_api_server_and_kanari_status_shows_it(
        cancer_baseline_dir: Path, tmp_path: Path) -> None:
    """The replayer's report as the monitor sends it in-cluster: a merge patch of status.previewTraffic through
    the status subresource (kmock's API server emulator validating it against the generated CRD), leaving the
    controller's fields alone; `kanari status` then says what fed the preview."""
    from kanari.api import v1alpha1 as api
    from kanari.cli.rollout import render_status
    from kanari.monitor.replay import Feed, kubernetes_reporter

    from tests.operator.harness import Cluster, Kube

    obj = md("fraud", cancer_baseline_dir)
    with pytest.MonkeyPatch.context() as mp:
        from tests.operator import harness

        mp.setattr(harness, "CRD_FILES", tuple(p for p in harness.CRD_FILES if p.name.startswith("kanari.dev")))
        with Cluster(tmp_path / "apiserver") as cluster:
            kube = Kube(cluster, NS)
            kube.create_md("fraud", obj["spec"])
            kube.custom.patch_namespaced_custom_object_status(api.GROUP, api.VERSION, NS, api.PLURAL, "fraud",
                                                              {"status": obj["status"]})
            feed = Feed(PreviewTarget(NS, "fraud", "rev-8", "http://x", 5.0), 5.0, "2026-11-30T08:00:00Z",
                        sent=120, errors=3, available=200, last_error="HTTP 503")
            report = kubernetes_reporter(lambda: kube.custom)
            asyncio.run(report(NS, "fraud", feed.status("2026-11-30T08:00:30Z", active=True)))
            got = kube.md("fraud")
    assert got is not None
    status = got["status"]
    assert status["previewTraffic"]["source"] == "replay" and status["previewTraffic"]["sent"] == 120
    assert status["canaryModel"]["revision"] == "rev-8" and status["previewUrl"] == obj["status"]["previewUrl"]
    text = render_status(got)
    assert "Fed by:      replay of logged stable requests (replaying, at most 5/s): 120 sent, 3 errors, 200 held" \
        in text, text
    # A report about an earlier preview is not shown against the current one.
    got["status"]["previewTraffic"]["revision"] = "rev-6"
    assert "Fed by:" not in render_status(got)

