"""Delivery: a bounded queue, a background task, and one poster per sink (Slack, Teams, generic webhook)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from string import Template
from typing import Any
from urllib.parse import urlparse

import httpx
import yaml
from prometheus_client import Counter

from kanari.api.conditions import now_iso
from kanari.notify.messages import KINDS, Notification, TemplateError, check_templates
from kanari.observability import REGISTRY

log = logging.getLogger("kanari.notify")
QUEUE_SIZE = 1000
TIMEOUT = 5.0
ATTEMPTS = 2

SENT = Counter("kanari_notifications_sent", "Notifications delivered, by sink and kind.", ("sink", "kind"),
               registry=REGISTRY)
FAILED = Counter("kanari_notifications_failed",
                 "Notifications not delivered, by sink and reason (http_<status>, unreachable, timeout, "
                 "rate_limited, queue_full).", ("sink", "reason"), registry=REGISTRY)

ENV = {"slack": "KANARI_NOTIFY_SLACK_URL", "teams": "KANARI_NOTIFY_TEAMS_URL", "webhook": "KANARI_NOTIFY_WEBHOOK_URL"}


class ConfigError(ValueError):
    """A bad notification setting; the message names the environment variable."""


@dataclass(frozen=True)
class NotifyConfig:
    sinks: dict[str, str]
    webhook_token: str = ""
    kinds: frozenset[str] = frozenset(KINDS)
    rate_per_minute: int = 30
    templates: dict[str, Template] = field(default_factory=lambda: check_templates({}))
    dashboard_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NotifyConfig:
        sinks = {}
        for sink, var in ENV.items():
            url = env.get(var, "").strip()
            if not url:
                continue
            parsed = urlparse(url)
            if parsed.scheme not in ("https", "http") or not parsed.netloc:
                # Never echo the URL: a webhook URL is a secret.
                raise ConfigError(f"{var}: not an http(s) URL")
            sinks[sink] = url
        kinds = frozenset(k.strip() for k in env.get("KANARI_NOTIFY_EVENTS", "").split(",") if k.strip()) or frozenset(KINDS)
        unknown = sorted(kinds - set(KINDS))
        if unknown:
            raise ConfigError(f"KANARI_NOTIFY_EVENTS: unknown {', '.join(unknown)} (known: {', '.join(KINDS)})")
        raw_rate = env.get("KANARI_NOTIFY_RATE_PER_MINUTE", "30").strip()
        if not raw_rate.isdigit() or not 1 <= int(raw_rate) <= 10000:
            raise ConfigError(f"KANARI_NOTIFY_RATE_PER_MINUTE: {raw_rate!r} is not a number from 1 to 10000")
        overrides: dict[str, str] = {}
        raw = env.get("KANARI_NOTIFY_TEMPLATES", "").strip()
        if raw:
            try:
                doc = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError("KANARI_NOTIFY_TEMPLATES: not YAML or JSON") from None
            if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
                raise ConfigError("KANARI_NOTIFY_TEMPLATES: expected a mapping of event kind to template text")
            overrides = {str(k): v for k, v in doc.items()}
        try:
            templates = check_templates(overrides)
        except TemplateError as exc:
            raise ConfigError(f"KANARI_NOTIFY_TEMPLATES: {exc}") from None
        return cls(sinks=sinks, webhook_token=env.get("KANARI_NOTIFY_WEBHOOK_TOKEN", "").strip(), kinds=kinds,
                   rate_per_minute=int(raw_rate), templates=templates,
                   dashboard_url=env.get("KANARI_NOTIFY_DASHBOARD_URL", "").rstrip("/"))


def payload(sink: str, n: Notification, text: str, link: str) -> dict[str, Any]:
    """The body each service expects."""
    if sink == "slack":
        return {"text": f"{text} <{link}|dashboard>" if link else text}
    if sink == "teams":
        # A Teams workflow ("When a Teams webhook request is received") posts the Adaptive Card it is given.
        facts = [{"title": k, "value": v} for k, v in n.fields.items() if k != "message"]
        body: list[dict[str, Any]] = [
            {"type": "TextBlock", "text": text, "wrap": True,
             "color": {"error": "Attention", "warning": "Warning"}.get(n.severity, "Default")},
            {"type": "FactSet", "facts": facts},
        ]
        card: dict[str, Any] = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                                "version": "1.4", "body": body}
        if link:
            card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in the dashboard", "url": link}]
        return {"type": "message", "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}
    return {"kind": n.kind, "severity": n.severity, "namespace": n.namespace, "name": n.name, "text": text,
            "fields": n.fields, "link": link, "time": now_iso()}


class _Bucket:
    """Token bucket: `rate` per minute, bursts up to `rate`."""

    def __init__(self, rate: int):
        self.rate = rate
        self.tokens = float(rate)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate / 60.0)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Notifier:
    """One bounded queue and one drain task per sink: a slow service delays only its own messages."""

    def __init__(self, config: NotifyConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.queues: dict[str, asyncio.Queue[Notification]] = {}
        self.buckets = {sink: _Bucket(config.rate_per_minute) for sink in config.sinks}
        self._transport = transport
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def submit(self, n: Notification) -> None:
        """Queue `n` for every sink without waiting; drain tasks start on the caller's event loop."""
        if n.kind not in self.config.kinds:
            return
        for sink, url in self.config.sinks.items():
            queue = self.queues.setdefault(sink, asyncio.Queue(QUEUE_SIZE))
            task = self._tasks.get(sink)
            if task is None or task.done():
                self._tasks[sink] = asyncio.get_running_loop().create_task(self._drain(sink, url, queue),
                                                                           name=f"kanari-notify-{sink}")
            try:
                queue.put_nowait(n)
            except asyncio.QueueFull:
                FAILED.labels(sink, "queue_full").inc()
                log.warning("notification queue for %s full: dropped %s for %s/%s", sink, n.kind, n.namespace, n.name)

    async def idle(self) -> None:
        await asyncio.gather(*(q.join() for q in self.queues.values()))

    def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def _drain(self, sink: str, url: str, queue: asyncio.Queue[Notification]) -> None:
        # Built in a thread: loading the CA bundle takes a few hundred ms the event loop must not wait for.
        client = await asyncio.to_thread(httpx.AsyncClient, timeout=TIMEOUT, transport=self._transport)
        async with client as http:
            while True:
                n = await queue.get()
                try:
                    await self._deliver(http, sink, url, n)
                except Exception:  # a bug in one delivery must not stop the others
                    FAILED.labels(sink, "error").inc()
                    log.exception("notification %s for %s/%s to %s", n.kind, n.namespace, n.name, sink)
                finally:
                    queue.task_done()

    async def _deliver(self, http: httpx.AsyncClient, sink: str, url: str, n: Notification) -> None:
        if not self.buckets[sink].take():
            FAILED.labels(sink, "rate_limited").inc()
            log.warning("notification to %s rate-limited (%d/min): dropped %s for %s/%s",
                        sink, self.config.rate_per_minute, n.kind, n.namespace, n.name)
            return
        link = f"{self.config.dashboard_url}/md/{n.namespace}/{n.name}" if self.config.dashboard_url else ""
        body = payload(sink, n, n.text(self.config.templates), link)
        headers = {"Authorization": f"Bearer {self.config.webhook_token}"} if sink == "webhook" and self.config.webhook_token else {}
        reason = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.5)
            try:
                resp = await http.post(url, json=body, headers=headers)
            except httpx.TimeoutException:
                reason = "timeout"
                continue
            except httpx.TransportError:
                reason = "unreachable"
                continue
            if resp.status_code < 300:
                SENT.labels(sink, n.kind).inc()
                return
            reason = f"http_{resp.status_code}"
            if resp.status_code != 429 and resp.status_code < 500:
                break  # the service refuses this message; sending it again will not help
        FAILED.labels(sink, reason).inc()
        # The URL is a secret (it authorises posting): name the sink, not the URL.
        log.warning("notification %s for %s/%s to %s failed: %s", n.kind, n.namespace, n.name, sink, reason)
