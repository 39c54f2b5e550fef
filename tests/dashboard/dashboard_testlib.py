"""What the dashboard tests run against: the devstack API emulator (with one read-only user), a real
Prometheus scraping a small exporter of `kanari_*` series, the real operator, and `kanari dashboard` itself as
a subprocess per user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import kmock
import yaml
from kanari.api import v1alpha1 as api
from kubernetes import client

from devstack.cluster import ClusterEmulator, kubeconfig
from devstack.stack import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "kanari-local"
VIEWER_TOKEN = "viewer-token"
REVIEWER_TOKEN = "dashboard-sa-token"  # the in-cluster dashboard's own service account: token reviews only
USERS = {ADMIN_TOKEN: "alice", VIEWER_TOKEN: "viewer"}
T = TypeVar("T")


class RbacEmulator(ClusterEmulator):
    """devstack's emulator, plus the RBAC the tests need: the viewer may read in namespaces (a Role), never
    across them, and never write."""

    seen_tokens: list[str]

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if not hasattr(self, "seen_tokens"):
            self.seen_tokens = []
        self.seen_tokens.append(auth.removeprefix("Bearer "))
        if str(request.url.path).endswith("/apis/authentication.k8s.io/v1/tokenreviews"):
            # TokenReview, as the API server answers it; only the dashboard's service account may ask.
            if auth != f"Bearer {REVIEWER_TOKEN}":
                return aiohttp.web.json_response({"kind": "Status", "code": 403, "reason": "Forbidden",
                                                  "message": "cannot create tokenreviews"}, status=403)
            token = ((request.data or {}).get("spec") or {}).get("token", "")
            user = USERS.get(token)
            status = {"authenticated": True, "user": {"username": user}} if user else {"authenticated": False}
            return aiohttp.web.json_response({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                              "spec": {"token": token}, "status": status}, status=201)
        if auth == f"Bearer {VIEWER_TOKEN}" and request.namespace is None and request.action in (
                kmock.action.LIST, kmock.action.WATCH):
            # A namespaced Role only: nothing across namespaces.
            return aiohttp.web.json_response({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden",
                "code": 403, "message": f'User "viewer" cannot list resource "{getattr(request.resource, "plural", "")}" '
                                        "at the cluster scope"}, status=403)
        if auth == f"Bearer {VIEWER_TOKEN}" and request.action in (kmock.action.CREATE, kmock.action.UPDATE,
                                                                     kmock.action.DELETE):
            plural = getattr(request.resource, "plural", "")
            group = getattr(request.resource, "group", "")
            return aiohttp.web.json_response({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden",
                "code": 403,
                "message": f'{plural}.{group} "{request.name}" is forbidden: User "viewer" cannot patch resource '
                           f'"{plural}" in API group "{group}" in the namespace "{request.namespace}"',
            }, status=403)
        return await super()._handle(request)


class ApiServer:
    """The emulator on 127.0.0.1 in a thread of its own, with kubeconfigs for an admin and a viewer."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._run, daemon=True, name="dashboard-apiserver")

    def __enter__(self) -> ApiServer:
        self._thread.start()
        if not self._ready.wait(20) or self._error:
            raise RuntimeError(f"the API emulator did not start: {self._error}")
        self.admin_kubeconfig = self._kubeconfig("admin", ADMIN_TOKEN)
        self.viewer_kubeconfig = self._kubeconfig("viewer", VIEWER_TOKEN)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _kubeconfig(self, who: str, token: str) -> Path:
        doc = kubeconfig(self.url, "ml-prod")
        doc["users"][0]["user"]["token"] = token
        path = self.workdir / f"kubeconfig-{who}"
        path.write_text(yaml.safe_dump(doc))
        return path

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        emulator = self.emulator = RbacEmulator()
        emulator.declare()
        await emulator.__aenter__()
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(emulator), shutdown_timeout=1.0)
        await runner.setup()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await emulator.__aexit__(None, None, None)
            # Watches still streaming end here, on this loop, not when their coroutines are collected later.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    def client(self) -> client.ApiClient:
        conf = client.Configuration(host=self.url)
        conf.api_key = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        return client.ApiClient(conf)


class Kube:
    """What a user and the KServe controller do, through the official client (admin credentials)."""

    def __init__(self, server: ApiServer):
        self.api = server.client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.namespace = "ml-prod"

    def create_md(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name, "namespace": namespace},
                "spec": spec}
        return dict(self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body))

    def md(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name))

    def patch(self, namespace: str, name: str, patch: dict[str, Any], status: bool = False,
              plural: str = api.PLURAL, group: str = api.GROUP, version: str = api.VERSION) -> Any:
        path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}" + ("/status" if status else "")
        return self.api.call_api(
            path, "PATCH", header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
            body=patch, response_type="object", auth_settings=["BearerToken"], _return_http_data_only=True,
        )

    def event(self, namespace: str, md: dict[str, Any], reason: str, message: str, type_: str = "Normal",
              at: str | None = None) -> None:
        meta = md["metadata"]
        self.core.create_namespaced_event(namespace, {
            "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"],
                               "namespace": namespace, "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": type_, "count": 1,
            "firstTimestamp": at, "lastTimestamp": at, "source": {"component": "kanari"},
        })

    # The KServe controller's part for the isvc, via the operator tests' stand-in.
    def isvc(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object("serving.kserve.io", "v1beta1", self.namespace,
                                                                 "inferenceservices", name))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def set_isvc_status(self, name: str, status: dict[str, Any]) -> Any:
        return self.patch(self.namespace, name, {"status": status}, status=True, plural="inferenceservices",
                          group="serving.kserve.io", version="v1beta1")


class KServeLoop:
    """Keeps named InferenceServices reconciled (Ready) in a thread, as the KServe controller would."""

    def __init__(self, kube: Kube):
        from tests.operator.harness import KServe

        self.kserve = KServe(kube)  # type: ignore[arg-type]
        self.kube = kube
        self.names: set[str] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="kserve-standin")

    def _run(self) -> None:
        seen: dict[str, Any] = {}
        while not self.stopped.wait(0.2):
            for name in list(self.names):
                with contextlib.suppress(Exception):
                    isvc = self.kube.isvc(name)
                    if isvc is None:
                        continue
                    gen = (isvc["metadata"].get("generation"), (isvc.get("status") or {}).get("observedGeneration"))
                    if seen.get(name) != gen or gen[0] != gen[1]:
                        self.kserve.reconcile(name)
                        seen[name] = gen


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 20.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = check()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class DashboardProcess:
    """`kanari dashboard` as a user runs it: its own process, a kubeconfig, loopback."""

    def __init__(self, kubeconfig_path: Path, log: Path, prometheus: str | None = None, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "KANARI_"))}
        env.update(KUBECONFIG=str(kubeconfig_path), PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "kanari.cli.main", "dashboard", "--port", str(self.port), *extra]
        if prometheus:
            argv += ["--prometheus-url", prometheus]
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_ready(f"{self.url}/healthz", self.proc, 30, log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


@contextlib.contextmanager
def exporter(port: int) -> Iterator[Any]:
    """A /metrics endpoint on loopback whose gauges the test sets (what the drift monitor exports)."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    gauges = {
        "drift": Gauge("kanari_feature_drift", "test", ["namespace", "model", "endpoint", "revision", "feature", "method"],
                       registry=registry),
        "success": Gauge("kanari_test_success_rate", "test", ["namespace", "revision"], registry=registry),
    }
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield gauges
    finally:
        server.shutdown()
        server.server_close()


class WebhookReceiver:
    """Slack, Teams and generic webhooks on loopback: records every POST per path; /fail answers 500 and
    /slow answers after `slow_seconds`."""

    def __init__(self, slow_seconds: float = 5.0):
        import http.server
        import json as _json

        received: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.received = received
        lock = threading.Lock()
        slow = slow_seconds

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/slow":
                    time.sleep(slow)
                with lock:
                    received.append((self.path, _json.loads(body or b"{}"), dict(self.headers)))
                self.send_response(500 if self.path == "/fail" else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="webhooks")

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def at(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body, _ in list(self.received) if p == path]
