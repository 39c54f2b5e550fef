"""The local router: stands in for the Istio ingress, Knative's traffic split and queue-proxy, and the
KServe agent's payload logger, in one aiohttp process on loopback.

- Requests to /serving/{namespace}/{name}/{path} go to one of the InferenceService's ready revisions,
  chosen at random by the traffic percentages the KServe stand-in sets (Knative's route).
- Requests to /tags/{tag}/{namespace}/{name}/{path} go to the revision carrying that traffic tag whatever
  its percent (Knative's tag URL, which KServe exposes for `latest` with serving.kserve.io/enable-tag-routing;
  a host name per tag on a cluster, a path prefix here).
- Like Knative's queue-proxy it exports revision_app_request_count and revision_app_request_latencies
  (milliseconds) labelled by namespace_name, revision_name and response_code_class: the metrics
  kanari.rollout.templates queries in Serverless mode.
- Like KServe's logger (pkg/logger/handler.go, worker.go) it posts each request, and each response that
  is a 200, as a binary-mode CloudEvent to the InferenceService's logger URL, from a bounded queue: when
  the sink is slow, events are dropped and counted (KServe's agent would block instead), requests are
  never held up.
- A connection failure to a revision is retried once on another ready revision, as Istio's default
  retry policy (connect-failure) does; an answer from the model, even an error, is passed through as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import Metric

log = logging.getLogger("devstack.router")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
# Response headers naming what served a request; they are the router's own (the stand-in says so).
REVISION_HEADER = "x-kanari-local-revision"
VERSION_HEADER = "x-kanari-local-model-version"
# Knative queue-proxy's latency buckets, in milliseconds.
LATENCY_BUCKETS_MS = (5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 900,
                      1000, 2000, 5000, 10000)
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass(frozen=True)
class LoggerSpec:
    """spec.predictor.logger of the InferenceService, with the annotation values a revision carries."""

    url: str
    mode: str = "all"  # all | request | response
    annotations: dict[str, str] = field(default_factory=dict)
    metadata_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """One revision's share of an InferenceService's traffic."""

    revision: str
    url: str
    percent: int
    endpoint: str = "default"  # the logger's ce-endpoint: default (stable) or canary
    version: str = ""
    logger: LoggerSpec | None = None
    tag: str = ""  # a Knative traffic tag routed by its own URL (tag routing on), "" for none


@dataclass(frozen=True)
class Route:
    namespace: str
    name: str
    targets: tuple[Target, ...]
    component: str = "predictor"

    def pick(self, rng: random.Random, exclude: Iterable[str] = ()) -> Target | None:
        skip = set(exclude)
        live = [t for t in self.targets if t.percent > 0 and t.revision not in skip]
        if not live:
            return None
        return rng.choices(live, weights=[t.percent for t in live])[0]


class _RequestCounts:
    """revision_app_request_count, exposed under Knative's exact name: prometheus_client would append
    _total to a Counter, so the family is yielded untyped (PromQL's rate() does not care)."""

    NAME = "revision_app_request_count"
    LABELS = ("namespace_name", "configuration_name", "service_name", "revision_name", "response_code",
              "response_code_class")

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...]) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + 1.0

    def collect(self) -> Iterable[Metric]:
        m = Metric(self.NAME, "The number of requests that are routed to user-container", "unknown")
        for labels, value in self.values.items():
            m.add_sample(self.NAME, dict(zip(self.LABELS, labels, strict=True)), value)
        yield m


class Router:
    def __init__(self, queue_size: int = 2000, senders: int = 4, seed: int | None = None):
        self.routes: dict[tuple[str, str], Route] = {}
        self.inflight: dict[str, int] = {}
        self._rng = random.Random(seed)
        self._queue: asyncio.Queue[tuple[str, dict[str, str], bytes]] = asyncio.Queue(maxsize=queue_size)
        self._senders = senders
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.registry = CollectorRegistry()
        self.requests = _RequestCounts()
        self.registry.register(self.requests)  # type: ignore[arg-type]
        self.latency = Histogram(
            "revision_app_request_latencies", "The response time in millisecond",
            ["namespace_name", "configuration_name", "service_name", "revision_name", "response_code",
             "response_code_class"],
            buckets=LATENCY_BUCKETS_MS, registry=self.registry,
        )
        self.percent = Gauge(
            "kanari_local_route_percent", "Traffic percent the local router sends to a revision",
            ["namespace_name", "service_name", "revision_name", "model_version", "endpoint"], registry=self.registry,
        )
        self.logger_events = Counter(
            "kanari_local_logger_events", "Payload-logger CloudEvents by outcome (sent, failed, dropped)",
            ["outcome"], registry=self.registry,
        )
        self.no_route = Counter(
            "kanari_local_router_unrouted", "Requests the router could not send to any revision",
            ["namespace_name", "service_name"], registry=self.registry,
        )

    # ----------------------------------------------------------------------------- route table
    def set_route(self, route: Route) -> None:
        old = self.routes.get((route.namespace, route.name))
        self.routes[(route.namespace, route.name)] = route
        if old:
            for t in old.targets:
                with contextlib.suppress(KeyError):
                    self.percent.remove(route.namespace, route.name, t.revision, t.version, t.endpoint)
        for t in route.targets:
            self.percent.labels(route.namespace, route.name, t.revision, t.version, t.endpoint).set(t.percent)

    def remove_route(self, namespace: str, name: str) -> None:
        route = self.routes.pop((namespace, name), None)
        for t in route.targets if route else ():
            with contextlib.suppress(KeyError):
                self.percent.remove(namespace, name, t.revision, t.version, t.endpoint)

    async def drained(self, url: str, timeout: float = 30.0) -> bool:
        """Wait until no request is in flight to `url` (a revision taken out of the route)."""
        deadline = time.monotonic() + timeout
        while self.inflight.get(url, 0) > 0:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # ----------------------------------------------------------------------------- app
    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/serving/{namespace}/{name}/{tail:.*}", self._proxy)
        app.router.add_route("*", "/tags/{tag}/{namespace}/{name}/{tail:.*}", self._proxy_tag)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self._tasks = [asyncio.create_task(self._send_events()) for _ in range(self._senders)]

    async def _stop(self, _: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session:
            await self._session.close()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        ns, name, tail = request.match_info["namespace"], request.match_info["name"], request.match_info["tail"]
        route = self.routes.get((ns, name))
        body = await request.read()
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        tried: list[str] = []
        while True:
            target = route.pick(self._rng, tried) if route else None
            if target is None:
                self.no_route.labels(ns, name).inc()
                why = "no ready revision" if route else "no such InferenceService"
                return web.json_response({"error": f"{ns}/{name}: {why}"}, status=503)
            tried.append(target.revision)
            try:
                return await self._forward(request, route, target, tail, body, request_id)  # type: ignore[arg-type]
            except aiohttp.ClientConnectionError as exc:
                if len(tried) >= 2:
                    self.no_route.labels(ns, name).inc()
                    return web.json_response({"error": f"revision {target.revision} unreachable: {exc}"}, status=502)
                log.warning("revision %s unreachable (%s); retrying on another revision", target.revision, exc)

    async def _proxy_tag(self, request: web.Request) -> web.StreamResponse:
        ns, name, tag = request.match_info["namespace"], request.match_info["name"], request.match_info["tag"]
        route = self.routes.get((ns, name))
        target = next((t for t in route.targets if t.tag and t.tag == tag), None) if route else None
        if route is None or target is None:
            self.no_route.labels(ns, name).inc()
            return web.json_response({"error": f"{ns}/{name}: no revision tagged {tag[:63]}"}, status=404)
        body = await request.read()
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        try:
            return await self._forward(request, route, target, request.match_info["tail"], body, request_id)
        except aiohttp.ClientConnectionError as exc:
            self.no_route.labels(ns, name).inc()
            return web.json_response({"error": f"revision {target.revision} unreachable: {exc}"}, status=502)

    async def _forward(
        self, request: web.Request, route: Route, target: Target, tail: str, body: bytes, request_id: str
    ) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers["x-request-id"] = request_id
        url = f"{target.url.rstrip('/')}/{tail}"
        if request.query_string:
            url += f"?{request.query_string}"
        self.inflight[target.url] = self.inflight.get(target.url, 0) + 1
        started = time.perf_counter()
        try:
            async with self._session.request(request.method, url, data=body, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
                content_type = resp.headers.get("Content-Type", "application/json")
        finally:
            self.inflight[target.url] -= 1
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        labels = (route.namespace, f"{route.name}-predictor", f"{route.name}-predictor", target.revision,
                  str(status), f"{status // 100}xx")
        self.requests.inc(labels)
        self.latency.labels(*labels).observe(elapsed_ms)
        if target.logger and request.method == "POST":
            self._log(route, target, body, payload, status, request.headers, request.content_type)
        return web.Response(
            body=payload, status=status,
            headers={"Content-Type": content_type, "x-request-id": request_id,
                     REVISION_HEADER: target.revision, VERSION_HEADER: target.version},
        )

    # ----------------------------------------------------------------------------- payload logger
    def _log(
        self, route: Route, target: Target, request_body: bytes, response_body: bytes, status: int,
        request_headers: Any, content_type: str,
    ) -> None:
        """As pkg/logger/handler.go: the request always, the response only when it is a 200; both with the
        request's Content-Type and the id from its Ce-Id header (or a new one)."""
        spec = target.logger
        assert spec is not None
        base = {
            "ce-specversion": "1.0",
            "ce-id": request_headers.get("Ce-Id") or str(uuid.uuid4()),
            "ce-source": f"{target.revision}-deployment",  # the agent's --source-uri: the pod's name
            "ce-time": datetime.now(UTC).isoformat(),
            "ce-inferenceservicename": route.name,
            "ce-namespace": route.namespace,
            "ce-component": route.component,
            "ce-endpoint": target.endpoint,
            # metadataHeaders: always sent, as a JSON object of header name -> values
            "ce-metadata": json.dumps({h: request_headers.getall(h) for h in spec.metadata_headers
                                       if h in request_headers}),
            "Content-Type": content_type or "application/json",
        }
        if spec.annotations:
            base["ce-annotations"] = json.dumps(spec.annotations)
        halves = []
        if spec.mode in ("all", "request"):
            halves.append((REQUEST_TYPE, request_body))
        if spec.mode in ("all", "response") and status == 200:
            halves.append((RESPONSE_TYPE, response_body))
        for ce_type, data in halves:
            try:
                self._queue.put_nowait((spec.url, {**base, "ce-type": ce_type}, data))
            except asyncio.QueueFull:
                self.logger_events.labels("dropped").inc()

    async def _send_events(self) -> None:
        while True:
            url, headers, data = await self._queue.get()
            assert self._session is not None
            try:
                async with self._session.post(url, data=data, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    await resp.read()
                    # KServe's logger treats anything but 200 as an error and only logs it.
                    ok = resp.status == 200
                    if not ok:
                        log.warning("payload logger: %s answered %s", url, resp.status)
                    self.logger_events.labels("sent" if ok else "failed").inc()
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.logger_events.labels("failed").inc()
                log.warning("payload logger: %s unreachable: %s", url, exc)
            finally:
                self._queue.task_done()
