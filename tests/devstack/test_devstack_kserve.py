"""The KServe stand-in: Serverless canary semantics, status in KServe's shape (read by the controller's own
health code and checked against the InferenceService CRD), and real model-server revisions behind the router."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kanari.controller import isvc_health
from kanari.monitor.payload import parse_event

from devstack.cluster import RunningCluster, start_cluster
from devstack.kserve_standin import KServeStandIn, Revision, Service, Traffic, build_status, plan_traffic
from devstack.kubeapi import KubeApi
from devstack.router import REVISION_HEADER, Router
from devstack.stack import free_port
from devstack.supervisor import pid_alive
from tests.devstack.devstack_testlib import FEATURES, model_tar_gz
from tests.support.schemas import validate_custom

ISVC_PATH = KubeApi.path("serving.kserve.io", "v1beta1", "inferenceservices", "ml")


def _svc(revisions: int, ready: int, rolled: str | None) -> Service:
    svc = Service("ml", "fraud")
    for i in range(1, revisions + 1):
        svc.revisions.append(Revision(f"fraud-predictor-{i:05d}", str(i), "s3://b/m", f"v{i}", None, ready=i <= ready))
    svc.latest_ready = f"fraud-predictor-{ready:05d}" if ready else None
    svc.rolled_out = rolled
    return svc


@pytest.mark.parametrize(
    ("revisions", "ready", "rolled", "canary", "expected"),
    [
        (1, 0, None, None, []),
        (1, 1, None, None, [Traffic("fraud-predictor-00001", 100, True, "latest")]),
        (2, 1, "fraud-predictor-00001", 20, [Traffic("fraud-predictor-00001", 100, True, "latest")]),
        (2, 2, "fraud-predictor-00001", 20,
         [Traffic("fraud-predictor-00002", 20, True, "latest"), Traffic("fraud-predictor-00001", 80, False, "prev")]),
        (2, 2, "fraud-predictor-00001", 0,
         [Traffic("fraud-predictor-00002", 0, True, "latest"), Traffic("fraud-predictor-00001", 100, False, "prev")]),
        (2, 2, "fraud-predictor-00001", None, [Traffic("fraud-predictor-00002", 100, True, "latest")]),
        (1, 1, None, 30, [Traffic("fraud-predictor-00001", 100, True, "latest")]),
    ],
    ids=["nothing-ready", "first", "canary-starting", "canary-20", "rolled-back", "promoted", "canary-without-stable"],
)
def test_traffic_follows_kserves_serverless_canary_rules(
    revisions: int, ready: int, rolled: str | None, canary: int | None, expected: list[Traffic]
) -> None:
    assert plan_traffic(_svc(revisions, ready, rolled), canary) == expected


def _isvc(canary: int | None = None, generation: int = 2) -> dict[str, Any]:
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "pytorch"}, "storageUri": "s3://b/m.tar.gz"}}
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "fraud", "namespace": "ml", "generation": generation}, "spec": {"predictor": predictor}}


def _with_status(svc: Service, isvc: dict[str, Any], canary: int | None) -> dict[str, Any]:
    return {**isvc, "status": build_status(svc, isvc, plan_traffic(svc, canary), "http://127.0.0.1:1/serving/ml/fraud")}


def test_the_controller_reads_a_starting_canary_as_not_ready_and_the_stable_as_serving() -> None:
    isvc = _with_status(_svc(2, 1, "fraud-predictor-00001"), _isvc(20), 20)
    validate_custom(isvc)
    reading = isvc_health.read(isvc)
    assert (reading.health, reading.stable_ready, reading.canary_ready) == ("Progressing", True, False)


def test_the_controller_reads_a_ready_canary_as_ready() -> None:
    isvc = _with_status(_svc(2, 2, "fraud-predictor-00001"), _isvc(20), 20)
    validate_custom(isvc)
    reading = isvc_health.read(isvc)
    assert (reading.health, reading.ready, reading.stable_ready, reading.canary_ready) == ("Healthy", True, True, True)
    assert isvc["status"]["observedGeneration"] == 2


def test_a_revision_that_cannot_start_is_degraded_like_a_failed_knative_revision() -> None:
    svc = _svc(2, 1, "fraud-predictor-00001")
    svc.revisions[-1].failed = "Container failed with: exit code 1"
    isvc = _with_status(svc, _isvc(20), 20)
    validate_custom(isvc)
    health, message = isvc_health.health(isvc)
    assert health == "Degraded" and "RevisionFailed" in message
    assert isvc["status"]["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"


# ------------------------------------------------------------------------------------------ real processes
@pytest.fixture()
async def serving(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    cluster: RunningCluster = await start_cluster(tmp_path / "kubeconfig", free_port(), "ml")
    router = Router(seed=1)
    runner = web.AppRunner(router.app(), shutdown_timeout=0.5)
    await runner.setup()
    router_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", router_port).start()
    events: list[tuple[dict[str, str], bytes]] = []

    async def sink(request: web.Request) -> web.Response:
        events.append((dict(request.headers), await request.read()))
        return web.Response()

    sink_app = web.Application()
    sink_app.router.add_post("/", sink)
    sink_runner = web.AppRunner(sink_app)
    await sink_runner.setup()
    sink_port = free_port()
    await web.TCPSite(sink_runner, "127.0.0.1", sink_port).start()
    api = KubeApi(cluster.url)
    standin = KServeStandIn(api, router, tmp_path / "kserve", f"http://127.0.0.1:{router_port}", "ml", idle_grace=1.0)
    task = asyncio.create_task(standin.run())
    yield {"api": api, "standin": standin, "router_url": f"http://127.0.0.1:{router_port}", "events": events,
           "sink": f"http://127.0.0.1:{sink_port}/", "tmp": tmp_path}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await api.close()
    await sink_runner.cleanup()
    await runner.cleanup()
    await cluster.stop()


async def _status(api: KubeApi) -> dict[str, Any]:
    return ((await api.get(f"{ISVC_PATH}/fraud")) or {}).get("status") or {}


async def _until(api: KubeApi, check: Any, timeout: float = 60) -> dict[str, Any]:
    for _ in range(int(timeout / 0.2)):
        status = await _status(api)
        if check(status):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out; status: {status}")


async def _predict(url: str, n: int) -> Counter[tuple[int, str]]:
    async with aiohttp.ClientSession() as session:
        async def one() -> tuple[int, str]:
            async with session.post(f"{url}/serving/ml/fraud/v1/models/fraud:predict",
                                    json={"instances": [dict.fromkeys(FEATURES, 1.0)]}) as resp:
                await resp.read()
                return resp.status, resp.headers.get(REVISION_HEADER, "")

        return Counter(await asyncio.gather(*(one() for _ in range(n))))


def _predictor(uri: str, sink: str, canary: int | None = None) -> dict[str, Any]:
    pred: dict[str, Any] = {
        "model": {"modelFormat": {"name": "pytorch"}, "storageUri": uri},
        "logger": {"url": sink, "mode": "all", "metadataAnnotations": ["kanari.dev/model-version"]},
    }
    if canary is not None:
        pred["canaryTrafficPercent"] = canary
    return pred


@pytest.mark.timeout(120)
async def test_revisions_are_model_servers_that_take_traffic_as_the_canary_percent_says(serving: dict[str, Any]) -> None:
    api, tmp = serving["api"], serving["tmp"]
    v1 = model_tar_gz(tmp / "v1.tar.gz")
    v2 = model_tar_gz(tmp / "v2.tar.gz", {"errorRate": 1.0, "latencySeconds": 0.0})
    await api.create(ISVC_PATH, {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "fraud", "namespace": "ml", "annotations": {"kanari.dev/model-version": "fraud/1"}},
        "spec": {"predictor": _predictor(f"file://{v1}", serving["sink"])},
    })
    await _until(api, lambda s: (s.get("components") or {}).get("predictor", {}).get("latestRolledoutRevision"))
    assert await _predict(serving["router_url"], 10) == {(200, "fraud-predictor-00001"): 10}

    await api.merge_patch(f"{ISVC_PATH}/fraud", {
        "metadata": {"annotations": {"kanari.dev/model-version": "fraud/2"}},
        "spec": {"predictor": _predictor(f"file://{v2}", serving["sink"], canary=50)},
    })
    status = await _until(api, lambda s: (s.get("components") or {}).get("predictor", {}).get("latestReadyRevision")
                          == "fraud-predictor-00002")
    assert {t["revisionName"]: t["percent"] for t in status["components"]["predictor"]["traffic"]} == {
        "fraud-predictor-00002": 50, "fraud-predictor-00001": 50}
    split = await _predict(serving["router_url"], 200)
    assert set(split) == {(200, "fraud-predictor-00001"), (500, "fraud-predictor-00002")}
    assert 60 <= split[(500, "fraud-predictor-00002")] <= 140

    await api.merge_patch(f"{ISVC_PATH}/fraud", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    await _until(api, lambda s: [t["percent"] for t in s["components"]["predictor"]["traffic"]] == [0, 100])
    assert await _predict(serving["router_url"], 20) == {(200, "fraud-predictor-00001"): 20}

    # Each revision logs with the annotations it was created with, and the endpoint it serves as.
    await asyncio.sleep(0.5)
    parsed = [parse_event(h, b) for h, b in serving["events"]]
    seen = {(e.endpoint, e.annotations["kanari.dev/model-version"]) for e in parsed}
    assert seen == {("default", "fraud/1"), ("canary", "fraud/2")}

    # The rolled-back revision gets no traffic: after the grace period its process is stopped.
    pid_file = tmp / "kserve" / "pids" / "fraud-predictor-00002.pid"
    pid = int(pid_file.read_text())
    for _ in range(50):
        if not pid_alive(pid) and not pid_file.exists():  # the file goes just after the process is reaped
            break
        await asyncio.sleep(0.2)
    assert not pid_alive(pid) and not pid_file.exists()


@pytest.mark.timeout(120)
async def test_with_tag_routing_a_preview_at_zero_percent_answers_on_its_tag_url(serving: dict[str, Any]) -> None:
    """KServe with serving.kserve.io/enable-tag-routing: the latest revision gets a tag URL in
    status.components.predictor.traffic[] (what the controller copies to status.previewUrl), which reaches it
    at 0%, while the main URL still reaches only the rolled-out revision."""
    api, tmp = serving["api"], serving["tmp"]
    v1 = model_tar_gz(tmp / "v1.tar.gz")
    v2 = model_tar_gz(tmp / "v2.tar.gz")
    tagged = {"kanari.dev/model-version": "fraud/1", "serving.kserve.io/enable-tag-routing": "true"}
    await api.create(ISVC_PATH, {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "fraud", "namespace": "ml", "annotations": tagged},
        "spec": {"predictor": _predictor(f"file://{v1}", serving["sink"])},
    })
    await _until(api, lambda s: (s.get("components") or {}).get("predictor", {}).get("latestRolledoutRevision"))
    await api.merge_patch(f"{ISVC_PATH}/fraud", {"spec": {"predictor": _predictor(f"file://{v2}", serving["sink"], canary=0)}})
    status = await _until(api, lambda s: (s.get("components") or {}).get("predictor", {}).get("latestReadyRevision")
                          == "fraud-predictor-00002")
    latest = next(t for t in status["components"]["predictor"]["traffic"] if t["tag"] == "latest")
    assert latest["percent"] == 0 and latest["url"] == f"{serving['router_url']}/tags/latest/ml/fraud"
    assert await _predict(serving["router_url"], 10) == {(200, "fraud-predictor-00001"): 10}
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(f"{latest['url']}/v1/models/fraud:predict",
                                    json={"instances": [dict.fromkeys(FEATURES, 1.0)]}) as resp:
                await resp.read()
                assert (resp.status, resp.headers.get(REVISION_HEADER)) == (200, "fraud-predictor-00002")
        await asyncio.sleep(1.5)  # past idle_grace: the tagged preview at 0% is still running
        async with session.post(f"{latest['url']}/v1/models/fraud:predict",
                                json={"instances": [dict.fromkeys(FEATURES, 1.0)]}) as resp:
            assert resp.status == 200
