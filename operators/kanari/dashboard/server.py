"""The dashboard's web server (aiohttp): pages, a JSON API per view, server-sent events, and actions.

Live updates: one watch per identity (ModelDeployments and Events), fanned out to that identity's browser
tabs over server-sent events. Writes: only the rollout actions, each an annotation patch made with the user's
own credentials, behind a per-session CSRF token and a same-origin check; the API server's RBAC decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kubernetes import client

from kanari.dashboard import pages, views
from kanari.dashboard.cluster import Cluster, ClusterError, Watcher, token_client
from kanari.dashboard.prom import Prometheus, serving_reading
from kanari.dashboard.status_view import read_status
from kanari.rollout.prometheus import PrometheusError

log = logging.getLogger("kanari.dashboard")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SESSION_COOKIE = "kanari_session"
SESSION_SECONDS = 8 * 3600
QUEUE_SIZE = 256
HEARTBEAT = 15.0
READINGS_EVERY = 5.0
DRIFT_WINDOW = 3600.0


@dataclass
class Identity:
    """One set of credentials and the browser tabs using it."""

    cluster: Cluster
    user: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    watcher: Watcher | None = None
    subscribers: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    expires: float = 0.0


@dataclass
class Settings:
    port: int = 3100
    address: str = "127.0.0.1"
    actions: bool = True
    in_cluster: bool = False
    secure_cookie: bool = False
    drift_window: float = DRIFT_WINDOW


class Dashboard:
    def __init__(self, settings: Settings, prometheus: Prometheus | None, local: Identity | None = None,
                 reviewer: client.ApiClient | None = None):
        """`local`: the kubeconfig identity (local mode). `reviewer`: the service account's client that
        reviews pasted tokens (in-cluster mode); it is used for nothing else."""
        assert (local is None) != (reviewer is None), "either a local identity or a token reviewer"
        self.settings = settings
        self.prometheus = prometheus
        self.local = local
        self.reviewer = reviewer
        self.sessions: dict[str, Identity] = {}
        self.readings: dict[tuple[str, str], dict[str, views.DriftReading]] = {}
        self.prometheus_error = "" if prometheus else "no Prometheus configured (--prometheus-url)"
        self._tasks: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------------------------------------ app
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/", self._page("list"))
        r.add_get("/md/{namespace}/{name}", self._page("detail"))
        r.add_get("/md/{namespace}/{name}/drift", self._page("drift"))
        r.add_get("/md/{namespace}/{name}/lineage", self._page("lineage"))
        r.add_get("/static/{path:.+}", self._static)
        r.add_get("/api/list", self._api_list)
        r.add_get("/api/md/{namespace}/{name}", self._api_detail)
        r.add_get("/api/md/{namespace}/{name}/drift", self._api_drift)
        r.add_get("/api/md/{namespace}/{name}/lineage", self._api_lineage)
        r.add_get("/api/stream", self._stream)
        r.add_post("/api/md/{namespace}/{name}/action", self._action)
        r.add_get("/login", self._login_page)
        r.add_post("/login", self._login)
        r.add_post("/logout", self._logout)
        r.add_get("/healthz", self._healthz)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._close_streams)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        if self.prometheus is not None:
            self._tasks.append(asyncio.create_task(self._poll_readings()))

    async def _close_streams(self, _: web.Application) -> None:
        """Event streams never end by themselves: end them, or shutdown waits out its timeout."""
        for ident in [*self.sessions.values(), *([self.local] if self.local else [])]:
            queues = list(ident.subscribers)
            ident.subscribers.clear()
            for q in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait({"kind": "bye"})

    async def _stop(self, _: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ident in [*self.sessions.values(), *([self.local] if self.local else [])]:
            if ident.watcher:
                ident.watcher.stop()
            ident.cluster.close()
        if self.prometheus is not None:
            await self.prometheus.close()

    # ----------------------------------------------------------------------------- security
    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        if not self.settings.in_cluster and not self._local_host(request.host):
            # DNS rebinding: a page on another name resolving to 127.0.0.1 must not reach the user's cluster.
            return web.Response(status=421, text="unexpected Host header")
        resp = await handler(request)
        resp.headers.update({
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                       "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        })
        return resp

    def _local_host(self, host: str) -> bool:
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        return name in ("127.0.0.1", "localhost", "[::1]", self.settings.address) and port == str(self.settings.port)

    def _identity(self, request: web.Request) -> Identity | None:
        if self.local is not None:
            return self.local
        sid = request.cookies.get(SESSION_COOKIE, "")
        ident = self.sessions.get(sid)
        if ident is None or ident.expires < time.time():
            self.sessions.pop(sid, None)
            return None
        return ident

    def _require(self, request: web.Request) -> Identity:
        ident = self._identity(request)
        if ident is None:
            if request.path.startswith("/api/"):
                raise web.HTTPUnauthorized(text=json.dumps({"error": "sign in first"}), content_type="application/json")
            raise web.HTTPSeeOther("/login")
        return ident

    @staticmethod
    def _names(request: web.Request) -> tuple[str, str]:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if not (NAME.match(ns) and NAME.match(name) and len(ns) <= 63 and len(name) <= 63):
            raise web.HTTPBadRequest(text=json.dumps({"error": "namespace and name must be Kubernetes names"}),
                                     content_type="application/json")
        return ns, name

    # -------------------------------------------------------------------------------- pages
    def _page(self, view: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            ident = self._require(request)
            if view == "list":
                title, api, nav = "ModelDeployments", "/api/list", {}
            else:
                ns, name = self._names(request)
                base = f"/md/{ns}/{name}"
                title = f"{ns}/{name}" + ("" if view == "detail" else f" · {view}")
                api = f"/api{base}" + ("" if view == "detail" else f"/{view}")
                nav = {"Rollout": base, "Drift": f"{base}/drift", "Lineage": f"{base}/lineage"}
            nav = {"All": "/", **nav}
            body = pages.page(view, title, root="/", api=api, nav=nav, csrf=ident.csrf)
            return web.Response(text=body, content_type="text/html")

        return handler

    async def _static(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        try:
            data = pages.static_file(path)
        except (FileNotFoundError, OSError):
            raise web.HTTPNotFound() from None
        kind = {"js": "text/javascript", "css": "text/css"}.get(path.rsplit(".", 1)[-1], "text/plain")
        return web.Response(body=data, content_type=kind, charset="utf-8")

    async def _healthz(self, _: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    # ---------------------------------------------------------------------------------- API
    @staticmethod
    def _cluster_error(exc: ClusterError) -> web.Response:
        status = exc.status if exc.status in (401, 403, 404, 409, 422) else 502
        return web.json_response({"error": exc.message}, status=status)

    def _reading(self, obj: dict[str, Any]) -> views.DriftReading | None:
        meta = obj.get("metadata") or {}
        per = self.readings.get((str(meta.get("namespace")), str(meta.get("name"))))
        if not per:
            return None
        st = read_status(obj.get("status"))
        return serving_reading(per, {x for v in (st.stable, st.canary) if v for x in (v.label, v.revision)})

    def _row(self, obj: dict[str, Any]) -> dict[str, Any]:
        return views.summary_row(obj, self._reading(obj))

    async def _api_list(self, request: web.Request) -> web.StreamResponse:
        ident = self._require(request)
        try:
            items = await ident.cluster.list()
        except ClusterError as exc:
            return self._cluster_error(exc)
        rows = sorted((self._row(o) for o in items), key=lambda r: (r["namespace"], r["name"]))
        return web.json_response({"rows": rows, **self._meta(ident)})

    def _meta(self, ident: Identity) -> dict[str, Any]:
        return {"user": ident.user, "actionsEnabled": self.settings.actions, "prometheus": self.prometheus_error,
                "scope": "all namespaces" if ident.cluster.cluster_wide is not False else f"namespace {ident.cluster.namespace}"}

    async def _api_detail(self, request: web.Request) -> web.StreamResponse:
        ident = self._require(request)
        ns, name = self._names(request)
        try:
            obj = await ident.cluster.get(ns, name)
            events = await ident.cluster.events(ns, name)
        except ClusterError as exc:
            return self._cluster_error(exc)
        doc = views.detail(obj, events, time.time(), self._reading(obj))
        return web.json_response({**doc, **self._meta(ident)})

    async def _api_lineage(self, request: web.Request) -> web.StreamResponse:
        ident = self._require(request)
        ns, name = self._names(request)
        try:
            obj = await ident.cluster.get(ns, name)
        except ClusterError as exc:
            return self._cluster_error(exc)
        return web.json_response({"summary": self._row(obj), "lineage": views.lineage_view(obj), **self._meta(ident)})

    async def _api_drift(self, request: web.Request) -> web.StreamResponse:
        ident = self._require(request)
        ns, name = self._names(request)
        try:
            obj = await ident.cluster.get(ns, name)
        except ClusterError as exc:
            return self._cluster_error(exc)
        now = time.time()
        doc = await drift_document(self.prometheus, obj, now - self.settings.drift_window, now)
        return web.json_response({**doc, **self._meta(ident)})

    # --------------------------------------------------------------------------------- live
    def _ensure_watch(self, ident: Identity) -> None:
        if ident.watcher is None:
            ident.watcher = Watcher(ident.cluster, asyncio.get_running_loop(),
                                    lambda kind, type_, obj: self._publish(ident, kind, type_, obj))
            ident.watcher.start()

    def _publish(self, ident: Identity, kind: str, type_: str, obj: dict[str, Any]) -> None:
        if kind == "md":
            msg = {"kind": "md", "type": type_, "key": views.key(obj), "row": self._row(obj)}
        else:
            inv = obj.get("involvedObject") or obj.get("regarding") or {}
            if inv.get("kind") != "ModelDeployment":
                return
            msg = {"kind": "event", "key": f"{inv.get('namespace') or (obj.get('metadata') or {}).get('namespace')}/{inv.get('name')}",
                   "reason": str(obj.get("reason") or "")}
        for q in list(ident.subscribers):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:
                # A tab that stopped reading: it reconnects (EventSource does) and reloads its view.
                ident.subscribers.discard(q)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        ident = self._require(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        ident.subscribers.add(queue)
        self._ensure_watch(ident)
        try:
            await resp.write(b"retry: 1000\nevent: hello\ndata: {}\n\n")
            while queue in ident.subscribers:
                try:
                    msg = await asyncio.wait_for(queue.get(), HEARTBEAT)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if queue not in ident.subscribers:
                    break
                await resp.write(f"event: {msg['kind']}\ndata: {json.dumps(msg)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            ident.subscribers.discard(queue)
            if not ident.subscribers and ident is not self.local and ident.watcher is not None:
                ident.watcher.stop()
                ident.watcher = None
        return resp

    async def _push_rows(self, keys: set[tuple[str, str]]) -> None:
        """Open lists learn of a drift change as of a status change: rows read with each user's credentials."""
        for ident in [*self.sessions.values(), *([self.local] if self.local else [])]:
            if not ident.subscribers:
                continue
            for namespace, name in sorted(keys):
                try:
                    obj = await ident.cluster.get(namespace, name)
                except ClusterError:
                    continue  # gone, or not this user's to see
                self._publish(ident, "md", "MODIFIED", obj)

    async def _poll_readings(self) -> None:
        assert self.prometheus is not None
        while True:
            try:
                readings = await self.prometheus.readings()
                changed = {k for k in set(readings) | set(self.readings) if readings.get(k) != self.readings.get(k)}
                self.readings = readings
                self.prometheus_error = ""
                if changed:
                    await self._push_rows(changed)
            except PrometheusError as exc:
                self.prometheus_error = f"Prometheus: {exc}"
                log.warning("drift readings: %s", exc)
            except Exception as exc:  # the poll must outlive any one bad answer: a dead task shows stale drift forever
                self.prometheus_error = f"Prometheus: {type(exc).__name__}"
                log.exception("drift readings failed")
            await asyncio.sleep(READINGS_EVERY)

    # ------------------------------------------------------------------------------ actions
    async def _action(self, request: web.Request) -> web.StreamResponse:
        ident = self._require(request)
        ns, name = self._names(request)
        if not self.settings.actions:
            return web.json_response({"error": "this dashboard is read-only (actions are not enabled)"}, status=403)
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            return web.json_response({"error": "cross-origin request refused"}, status=403)
        if not secrets.compare_digest(request.headers.get("X-Kanari-CSRF", ""), ident.csrf):
            return web.json_response({"error": "missing or stale page token: reload the page"}, status=403)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        action = body.get("action") if isinstance(body, dict) else None
        if action not in views.ACTIONS:
            return web.json_response({"error": f"action: one of {', '.join(views.ACTIONS)}"}, status=400)
        try:
            value = await ident.cluster.act(ns, name, action)
        except ClusterError as exc:
            log.info("action %s on %s/%s by %s refused: %s", action, ns, name, ident.user, exc.message)
            return self._cluster_error(exc)
        log.info("action %s on %s/%s requested by %s", action, ns, name, ident.user)
        return web.json_response({"requested": action, "annotation": value})

    # --------------------------------------------------------------------- in-cluster sign-in
    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        if self.local is not None:
            raise web.HTTPSeeOther("/")
        return web.Response(text=pages.page("login", "Sign in", root="/", nav={}), content_type="text/html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if self.reviewer is None:
            raise web.HTTPNotFound()
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            return web.json_response({"error": "cross-origin request refused"}, status=403)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip() or len(token) > 16384:
            return web.json_response({"error": "token: paste a Kubernetes bearer token"}, status=400)
        # Where to look when the user may not list across namespaces (a namespaced Role).
        namespace = (body.get("namespace") or "default") if isinstance(body, dict) else "default"
        if not isinstance(namespace, str) or not NAME.match(namespace) or len(namespace) > 63:
            return web.json_response({"error": "namespace: not a Kubernetes namespace name"}, status=400)
        try:
            user = await review_token(self.reviewer, token.strip())
        except ClusterError as exc:
            return web.json_response({"error": exc.message}, status=401 if exc.status in (0, 401) else 502)
        base = self.reviewer.configuration
        cluster = Cluster(token_client(base, token.strip()), namespace=namespace)
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = Identity(cluster=cluster, user=user, expires=time.time() + SESSION_SECONDS)
        resp = web.json_response({"user": user})
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", secure=self.settings.secure_cookie,
                        max_age=SESSION_SECONDS, path="/")
        return resp

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        ident = self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        if ident is not None:
            if ident.watcher:
                ident.watcher.stop()
            ident.cluster.close()
        resp = web.json_response({})
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp


async def review_token(reviewer: client.ApiClient, token: str) -> str:
    """The user a token belongs to, by TokenReview; ClusterError(401) when the API server rejects it."""
    def review() -> str:
        api = client.AuthenticationV1Api(reviewer)
        try:
            out = api.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)))
        except Exception as exc:
            from kanari.dashboard.cluster import _error

            raise _error(exc, "token review") from None
        status = out.status
        if status is None or not status.authenticated or status.user is None:
            raise ClusterError(401, "the token was not accepted by the Kubernetes API")
        return str(status.user.username)

    return await asyncio.to_thread(review)


async def drift_document(prometheus: Prometheus | None, obj: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """The drift view of one ModelDeployment over [start, end]; what Prometheus could not answer is said."""
    spec = obj.get("spec") or {}
    method = ((spec.get("monitoring") or {}).get("drift") or {}).get("method", "psi")
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace")), str(meta.get("name"))
    series: list[dict[str, Any]] = []
    alerts: list[dict[str, str]] = []
    problem = ""
    if prometheus is None:
        problem = "no Prometheus configured (--prometheus-url)"
    else:
        try:
            series = await prometheus.drift_series(ns, name, str(method), start, end)
            alerts = await prometheus.alerts(ns, name)
        except (PrometheusError, ValueError) as exc:
            problem = f"Prometheus: {exc}"
    doc = views.drift_view(obj, series, alerts, end)
    doc["problem"] = problem
    doc["window"] = [start, end]
    return doc


