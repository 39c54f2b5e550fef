"""The dashboard server's guarantees, over HTTP against the API emulator: it acts only as its user, writes
only rollout actions behind a page token and a same-origin check, answers nothing to a foreign Host (DNS
rebinding), and in the cluster lets in only users whose token the API server accepts, read-only by default."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.dashboard.cluster import Cluster, kubeconfig_client
from kanari.dashboard.server import Dashboard, Identity, Settings
from kubernetes import client

from devstack.stack import free_port
from tests.dashboard.dashboard_testlib import REVIEWER_TOKEN, VIEWER_TOKEN, ApiServer, Kube

ACTION = "kanari.dev/action"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer(tmp_path_factory.mktemp("api")) as s:
        kube = Kube(s)
        kube.create_md("ml-prod", "fraud", {"model": {"storageUri": "s3://m/v1", "format": "sklearn"},
                                            "serving": {"accelerator": "cpu"}})
        yield s


async def _client(dash: Dashboard, port: int) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(dash.app(), host="127.0.0.1", port=port)) as c:
        yield c


def local(server: ApiServer, kubeconfig: Path, actions: bool = True) -> tuple[Dashboard, int]:
    api, ns, ctx = kubeconfig_client(str(kubeconfig), None)
    port = free_port()
    return Dashboard(Settings(port=port, actions=actions), None,
                     local=Identity(cluster=Cluster(api, ns), user=ctx)), port


@pytest.fixture
async def admin(server: ApiServer) -> AsyncIterator[tuple[TestClient[Any, Any], Dashboard]]:
    dash, port = local(server, server.admin_kubeconfig)
    async for c in _client(dash, port):
        yield c, dash


def annotation(server: ApiServer) -> str | None:
    return (Kube(server).md("ml-prod", "fraud")["metadata"].get("annotations") or {}).get(ACTION)


async def test_foreign_host_header_is_refused(admin: Any) -> None:
    c, _ = admin
    resp = await c.get("/api/list", headers={"Host": "attacker.example:80"})
    assert resp.status == 421
    resp = await c.get("/api/list")
    assert resp.status == 200 and [r["name"] for r in (await resp.json())["rows"]] == ["fraud"]


async def test_actions_need_the_page_token_and_the_same_origin(admin: Any, server: ApiServer) -> None:
    c, dash = admin
    url = "/api/md/ml-prod/fraud/action"
    body = json.dumps({"action": "pause"})
    before = annotation(server)
    assert (await c.post(url, data=body)).status == 403  # no page token: a form post from another site
    assert (await c.post(url, data=body, headers={"X-Kanari-CSRF": "guess"})).status == 403
    evil = {"X-Kanari-CSRF": dash.local.csrf, "Origin": "http://attacker.example"}
    assert (await c.post(url, data=body, headers=evil)).status == 403
    assert annotation(server) == before
    ok = await c.post(url, data=body, headers={"X-Kanari-CSRF": dash.local.csrf, "Origin": f"http://127.0.0.1:{dash.settings.port}"})
    assert ok.status == 200
    value = (await ok.json())["annotation"]
    assert value.startswith("pause/") and annotation(server) == value
    # The page carries the token; nothing else the server sends does.
    page = await (await c.get("/md/ml-prod/fraud")).text()
    assert f'data-csrf="{dash.local.csrf}"' in page
    assert dash.local.csrf not in await (await c.get("/api/md/ml-prod/fraud")).text()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode),
                      st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=3)
                      .map(lambda d: json.dumps(d).encode())))
def test_hostile_action_bodies_get_a_clear_400(server: ApiServer, body: bytes) -> None:
    async def go() -> tuple[int, Any]:
        dash, port = local(server, server.admin_kubeconfig)
        async for c in _client(dash, port):
            resp = await c.post("/api/md/ml-prod/fraud/action", data=body, headers={"X-Kanari-CSRF": dash.local.csrf})
            return resp.status, await resp.json()
        raise AssertionError("no client")

    status, doc = asyncio.run(go())
    assert status == 400 and doc["error"].startswith("action: one of promote")


async def test_bad_names_and_unknown_objects(admin: Any) -> None:
    c, dash = admin
    assert (await c.get("/api/md/ML_PROD/fraud")).status == 400
    resp = await c.get("/api/md/ml-prod/nope")
    assert resp.status == 404 and "nope" in (await resp.json())["error"]
    resp = await c.post("/api/md/ml-prod/nope/action", data='{"action": "promote"}',
                        headers={"X-Kanari-CSRF": dash.local.csrf})
    assert resp.status == 404


async def test_a_user_without_rbac_is_refused_by_the_api_server(server: ApiServer) -> None:
    dash, port = local(server, server.viewer_kubeconfig)
    before = annotation(server)
    async for c in _client(dash, port):
        resp = await c.post("/api/md/ml-prod/fraud/action", data='{"action": "abort"}',
                            headers={"X-Kanari-CSRF": dash.local.csrf})
        assert resp.status == 403
        assert 'User "viewer" cannot patch' in (await resp.json())["error"]
        # Reading is allowed: the same user sees the rollout; the list falls back to the context's namespace.
        assert (await c.get("/api/md/ml-prod/fraud")).status == 200
        listing = await (await c.get("/api/list")).json()
        assert listing["scope"] == "namespace ml-prod" and [r["name"] for r in listing["rows"]] == ["fraud"]
    assert annotation(server) == before


async def test_read_only_dashboard_refuses_actions(server: ApiServer) -> None:
    dash, port = local(server, server.admin_kubeconfig, actions=False)
    async for c in _client(dash, port):
        resp = await c.post("/api/md/ml-prod/fraud/action", data='{"action": "promote"}',
                            headers={"X-Kanari-CSRF": dash.local.csrf})
        assert resp.status == 403 and "read-only" in (await resp.json())["error"]
        assert (await (await c.get("/api/md/ml-prod/fraud")).json())["actionsEnabled"] is False


async def test_live_stream_sends_a_status_change(admin: Any, server: ApiServer) -> None:
    c, _ = admin
    resp = await c.get("/api/stream")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert (await resp.content.readuntil(b"\n\n")).startswith(b"retry:")

    async def next_md(weight: int) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            chunk = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
            if chunk.startswith(b"event: md"):
                msg = json.loads(chunk.split(b"data: ", 1)[1])
                if msg["key"] == "ml-prod/fraud" and msg["row"]["canaryWeight"] == weight:
                    return loop.time() - start

    await asyncio.to_thread(Kube(server).patch, "ml-prod", "fraud", {"status": {
        "canaryWeight": 35, "canaryModel": {"revision": "r2"}, "stableModel": {"revision": "r1"}}}, True)
    assert await next_md(35) < 2.0
    resp.close()


async def test_in_cluster_only_reviewed_tokens_get_in_and_act_as_themselves(server: ApiServer) -> None:
    conf = client.Configuration(host=server.url)
    conf.api_key = {"authorization": f"Bearer {REVIEWER_TOKEN}"}
    port = free_port()
    dash = Dashboard(Settings(port=port, address="0.0.0.0", in_cluster=True, actions=False), None,
                     reviewer=client.ApiClient(conf))
    async for c in _client(dash, port):
        assert (await c.get("/api/list")).status == 401
        page = await c.get("/", allow_redirects=False)
        assert page.status == 303 and page.headers["Location"] == "/login"
        assert (await c.post("/login", data=json.dumps({"token": "forged"}))).status == 401
        assert (await c.post("/login", data=json.dumps({"token": VIEWER_TOKEN}),
                             headers={"Origin": "http://attacker.example"})).status == 403
        assert (await c.post("/login", data="[]")).status == 400
        assert (await c.post("/login", data=json.dumps({"token": VIEWER_TOKEN, "namespace": "../x"}))).status == 400
        ok = await c.post("/login", data=json.dumps({"token": VIEWER_TOKEN, "namespace": "ml-prod"}))
        assert ok.status == 200 and (await ok.json())["user"] == "viewer"
        cookie = ok.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        seen = len(server.emulator.seen_tokens)
        resp = await c.get("/api/list")
        listing = await resp.json()
        assert resp.status == 200 and listing["user"] == "viewer"
        assert listing["scope"] == "namespace ml-prod" and [r["name"] for r in listing["rows"]] == ["fraud"]
        # The list was read with the user's own token, never the dashboard's service account.
        assert server.emulator.seen_tokens[seen:] and set(server.emulator.seen_tokens[seen:]) == {VIEWER_TOKEN}
        ident = next(iter(dash.sessions.values()))
        resp = await c.post("/api/md/ml-prod/fraud/action", data='{"action": "promote"}',
                            headers={"X-Kanari-CSRF": ident.csrf})
        assert resp.status == 403 and "read-only" in (await resp.json())["error"]
        assert (await c.post("/logout")).status == 200
        assert (await c.get("/api/list")).status == 401


async def test_unreachable_prometheus_is_said_not_shown_as_no_drift(server: ApiServer) -> None:
    from kanari.dashboard.prom import Prometheus
    from kanari.dashboard.server import drift_document
    from kanari.rollout.prometheus import PrometheusConfig

    prom = Prometheus(PrometheusConfig(url=f"http://127.0.0.1:{free_port()}", attempts=2, backoff=0.01))
    obj = Kube(server).md("ml-prod", "fraud")
    try:
        doc = await drift_document(prom, obj, 0.0, 60.0)
    finally:
        await prom.close()
    assert doc["problem"].startswith("Prometheus: ") and "after 2 attempts" in doc["problem"]
    assert doc["worst"] == [] and doc["summary"]["drift"] == "off"  # no monitoring in this spec: not "ok"
    none = await drift_document(None, obj, 0.0, 60.0)
    assert none["problem"] == "no Prometheus configured (--prometheus-url)"
