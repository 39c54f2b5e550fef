"""The delayed-ground-truth endpoint: labels (and the predictions they belong to) over authenticated HTTP,
joined in a JoinStore, realised quality per revision exported as Prometheus gauges.

  POST /v1/labels       {"labels": [{"id": "<inference id>", "label": 1}, ...]}
  POST /v1/predictions  {"predictions": [{"id": "<inference id>", "revision": "<rev>", "value": 0.93}, ...]}
  GET  /metrics         kanari_realised_quality{namespace,model,revision,metric}, join counters
  GET  /healthz

Both POSTs need `Authorization: Bearer <token>` (compared in constant time); a body is at most
MAX_BODY bytes and MAX_ITEMS items, and a bad item is refused with its index and field, the whole batch
untouched (so a retried batch is never half-applied).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from kanari.judging.cbpe import Estimate
from kanari.judging.groundtruth import JoinStore

MAX_BODY = 1 << 20
MAX_ITEMS = 10_000


class QualityMetrics:
    def __init__(self, namespace: str, model: str, registry: CollectorRegistry | None = None):
        self.namespace, self.model = namespace, model
        self.registry = registry or CollectorRegistry()
        self.quality = Gauge("kanari_realised_quality", "Realised model quality from delayed labels",
                             ["namespace", "model", "revision", "metric"], registry=self.registry)
        self.joined = Gauge("kanari_groundtruth_joined", "Predictions joined with their label",
                            ["namespace", "model", "revision"], registry=self.registry)
        self.pending = Gauge("kanari_groundtruth_pending", "Predictions and labels waiting for their other half",
                             ["namespace", "model"], registry=self.registry)
        self.dropped = Counter("kanari_groundtruth_dropped", "Halves dropped: expired, evicted or duplicate",
                               ["namespace", "model", "reason"], registry=self.registry)
        self.estimated = Gauge("kanari_estimated_quality",
                               "Label-free quality estimate (CBPE) from calibrated scores of served predictions",
                               ["namespace", "model", "revision", "metric"], registry=self.registry)
        self._dropped_seen: dict[str, int] = {}
        self._estimated_labels: set[tuple[str, str, str, str]] = set()

    def set_estimate(self, revision: str, estimate: Estimate) -> None:
        """Export a CBPE estimate beside the realised figures (same metric names, so one panel shows both)."""
        for metric in ("precision", "recall", "f1", "roc_auc"):
            value = getattr(estimate, metric)
            key = (self.namespace, self.model, revision, metric)
            if value is not None:
                self.estimated.labels(*key).set(value)
                self._estimated_labels.add(key)
            elif key in self._estimated_labels:  # undefined now (e.g. no predicted positives): no stale figure
                self.estimated.remove(*key)
                self._estimated_labels.discard(key)

    def update(self, store: JoinStore) -> None:
        for revision, quality in store.quality.items():
            self.joined.labels(self.namespace, self.model, revision).set(quality.joined)
            for metric, value in quality.metrics().items():
                self.quality.labels(self.namespace, self.model, revision, metric).set(value)
        self.pending.labels(self.namespace, self.model).set(store.pending())
        for reason, total in store.dropped.items():
            delta = total - self._dropped_seen.get(reason, 0)
            if delta:
                self.dropped.labels(self.namespace, self.model, reason).inc(delta)
            self._dropped_seen[reason] = total


def _bad(status: int, detail: str) -> web.Response:
    return web.json_response({"error": detail}, status=status)


def label_app(store: JoinStore, token: str, metrics: QualityMetrics) -> web.Application:
    if not token:
        raise ValueError("token: the label endpoint never runs open")
    secret = token.encode()

    def authorized(request: web.Request) -> bool:
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), secret)

    async def items(request: web.Request, key: str) -> list[dict[str, Any]] | web.Response:
        if not authorized(request):
            return _bad(401, "missing or wrong bearer token")
        if (request.content_length or 0) > MAX_BODY:
            return _bad(413, f"body over {MAX_BODY} bytes")
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return _bad(413, f"body over {MAX_BODY} bytes")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _bad(400, "body is not JSON")
        entries = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            return _bad(400, f"{key}: expected a list")
        if len(entries) > MAX_ITEMS:
            return _bad(413, f"{key}: more than {MAX_ITEMS} items")
        return entries

    def field(entry: Any, key: str, index: int, name: str, kind: type | tuple[type, ...]) -> Any:
        value = entry.get(name) if isinstance(entry, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{key}[{index}].{name}: missing or not a {getattr(kind, '__name__', 'number')}")
        return value

    async def post_labels(request: web.Request) -> web.Response:
        entries = await items(request, "labels")
        if isinstance(entries, web.Response):
            return entries
        try:
            parsed = [(field(e, "labels", i, "id", str), float(field(e, "labels", i, "label", (int, float))))
                      for i, e in enumerate(entries)]
            for i, (_, label) in enumerate(parsed):
                if store.task == "binary" and label not in (0, 1):
                    raise ValueError(f"labels[{i}].label: {label:g} is not 0 or 1")
        except ValueError as exc:
            return _bad(400, str(exc))
        joined = sum(store.label(i, v) is not None for i, v in parsed)
        metrics.update(store)
        return web.json_response({"accepted": len(parsed), "joined": joined})

    async def post_predictions(request: web.Request) -> web.Response:
        entries = await items(request, "predictions")
        if isinstance(entries, web.Response):
            return entries
        try:
            parsed = [(field(e, "predictions", i, "id", str), field(e, "predictions", i, "revision", str),
                       float(field(e, "predictions", i, "value", (int, float)))) for i, e in enumerate(entries)]
        except ValueError as exc:
            return _bad(400, str(exc))
        joined = sum(store.prediction(i, r, v) for i, r, v in parsed)
        metrics.update(store)
        return web.json_response({"accepted": len(parsed), "joined": joined})

    async def get_metrics(_: web.Request) -> web.Response:
        metrics.update(store)  # expiry happens on writes; a scrape reports what is current
        return web.Response(body=generate_latest(metrics.registry), content_type="text/plain")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/labels", post_labels)
    app.router.add_post("/v1/predictions", post_predictions)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    return app


def quality_rule(namespace: str, model: str, metric: str, minimum: float, for_: str = "15m") -> dict[str, Any]:
    """A PrometheusRule alerting when a revision's realised quality falls below `minimum`."""
    expr = (f'min by (revision) (kanari_realised_quality{{namespace="{namespace}", model="{model}", '
            f'metric="{metric}"}}) < {minimum:g}')
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": f"{model}-realised-quality", "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "kanari"}},
        "spec": {"groups": [{
            "name": f"kanari-realised-quality-{model}",
            "rules": [{
                "alert": "KanariRealisedQualityDrop",
                "expr": expr,
                "for": for_,
                "labels": {"severity": "critical", "namespace": namespace, "model": model},
                "annotations": {
                    "summary": f"Realised {metric} of {namespace}/{model} revision {{{{ $labels.revision }}}} "
                               f"is below {minimum:g}",
                    "description": "Computed from delayed ground-truth labels joined with logged predictions.",
                },
            }],
        }]},
    }
