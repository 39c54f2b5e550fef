"""Traffic for a BlueGreen preview: the stable model's recently logged requests, replayed to the preview.

A Serverless BlueGreen preview sits at 0% behind KServe's tag URL (status.previewUrl): no user reaches it,
so its analysis would only ever be inconclusive. While a ModelDeployment shows a preview in progress (see
`preview_target`), the drift monitor, which already holds the requests (recent.py), sends them there at no
more than `ratePerSecond` (and the monitor's own `--max-replay-rate`), one request in flight per preview.
The preview's Prometheus series then have samples and its analysis can pass or fail on them.

Why the monitor and not the controller: the request bodies never leave the monitor pod for this, the
monitor already watches ModelDeployments, and the controller's reconcile stays pure and quick.

What a caller cannot steer: where requests go (status.previewUrl, which the controller copies from
KServe's status, plus a fixed `/v1/models/<name>:predict` or `/v2/models/<name>/infer` path), how fast,
or which headers are sent (Content-Type and a fresh `Ce-Id: kanari-replay-...`). A logged body only reaches
the ring after the monitor's intake accepted it for the stable model, and it is re-serialised, not passed
on as bytes. Someone able to post events could fill the ring with requests the preview fails on: that
holds a preview back (its analysis fails), it cannot make one pass that would fail on real traffic of the
same shape.

What a user sees: status.previewTraffic (source replay, the preview revision, rate, requests sent, errors,
requests available), patched by the monitor, which owns that field as the receiver owns status.retraining.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kanari.api.v1alpha1 import GROUP, PLURAL, VERSION, ModelDeployment
from kanari.monitor.recent import REPLAY_ID_PREFIX, RecentRequests, protocol_of

log = logging.getLogger("kanari.monitor.replay")

REQUEST_TIMEOUT = 10.0
REPORT_INTERVAL = 10.0
SYNC_INTERVAL = 1.0


@dataclass(frozen=True)
class PreviewTarget:
    namespace: str
    name: str
    revision: str
    url: str
    rate: float


DEFAULT_DOMAINS = ("svc.cluster.local",)


def tag_host(host: str, namespace: str, name: str, domains: tuple[str, ...]) -> bool:
    """Knative's tag URL of the InferenceService's predictor, `latest-<name>-predictor.<namespace>.<domain>` for one
    of the cluster's Knative domains: logged request bodies go nowhere else, whoever managed to write
    status.previewUrl."""
    host = host.lower().rstrip(".")
    prefix = f"latest-{name}-predictor.{namespace}".lower()
    return any(host == f"{prefix}.{d.lower().strip('.')}" for d in domains)


def preview_target(md: ModelDeployment, domains: tuple[str, ...] | None = DEFAULT_DOMAINS) -> PreviewTarget | None:
    """The preview to feed, from the ModelDeployment's spec and status; None when none is in progress.

    In progress: strategy BlueGreen with previewTraffic.replay on, a canary (the preview) at weight 0 not
    yet switched to (no bake), and the KServe tag URL the controller put in status.previewUrl, whose host must
    be the predictor's tag host in one of `domains` (None: any host, for devstack's path-based tag URLs only)."""
    ro, st = md.spec.rollout, md.status
    if ro.strategy != "BlueGreen" or ro.blueGreen is None or not ro.blueGreen.previewTraffic.replay:
        return None
    if st.canaryModel is None or st.canaryWeight != 0 or st.rollout.bakeUntil or not st.previewUrl:
        return None
    url = urllib.parse.urlsplit(st.previewUrl)
    if url.scheme not in ("http", "https") or not url.hostname or url.username or url.password:
        return None
    if domains is not None and not tag_host(url.hostname, md.metadata.namespace, md.metadata.name, domains):
        return None
    base = urllib.parse.urlunsplit((url.scheme, url.netloc, url.path.rstrip("/"), "", ""))
    return PreviewTarget(md.metadata.namespace, md.metadata.name, st.canaryModel.revision, base,
                         ro.blueGreen.previewTraffic.ratePerSecond)


def request_url(target: PreviewTarget, body: dict[str, Any]) -> str | None:
    protocol = protocol_of(body)
    name = urllib.parse.quote(target.name, safe="")
    if protocol == "v1":
        return f"{target.url}/v1/models/{name}:predict"
    if protocol == "v2":
        return f"{target.url}/v2/models/{name}/infer"
    return None


class Pacer:
    """At most `rate` sends a second: the k-th send waits until k/rate after the first. Falling behind (a
    slow preview) is not made up with a burst: the schedule restarts from the late send."""

    def __init__(self, rate: float):
        if rate <= 0:
            raise ValueError(f"rate: must be positive, got {rate}")
        self.interval = 1.0 / rate
        self._next: float | None = None

    def wait(self, now: float) -> float:
        """Seconds to wait before the next send, then counts it as sent at now + wait."""
        at = now if self._next is None else max(self._next, now)
        self._next = at + self.interval
        return at - now


@dataclass
class Feed:
    target: PreviewTarget
    rate: float
    started_at: str
    sent: int = 0
    errors: int = 0
    available: int = 0
    last_error: str = ""
    task: asyncio.Task[None] | None = None
    done: bool = False

    def status(self, now: str, active: bool) -> dict[str, Any]:
        if self.available == 0:
            message = "no logged stable requests to replay yet"
        elif self.last_error:
            message = f"last error: {self.last_error}"
        else:
            message = f"replaying {self.available} logged stable requests"
        return {"source": "replay", "revision": self.target.revision, "ratePerSecond": self.rate,
                "sent": self.sent, "errors": self.errors, "available": self.available,
                "startedAt": self.started_at, "updatedAt": now, "active": active, "message": message}


Report = Callable[[str, str, dict[str, Any]], Awaitable[None]]
Send = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Replayer:
    """Keeps one feed per preview in progress (as the registry reports them) and none otherwise."""

    targets: Callable[[], list[PreviewTarget]]
    recent: RecentRequests
    send: Send
    report: Report | None = None
    max_rate: float = 20.0
    max_feeds: int = 10
    report_interval: float = REPORT_INTERVAL
    clock: Callable[[], float] = time.monotonic
    feeds: dict[tuple[str, str], Feed] = field(default_factory=dict)

    async def sync(self) -> None:
        wanted = {(t.namespace, t.name): t for t in self.targets()}
        for key, feed in list(self.feeds.items()):
            if wanted.get(key) != feed.target:
                await self._stop(key)
        for key, target in wanted.items():
            if key in self.feeds:
                continue
            if len(self.feeds) >= self.max_feeds:
                log.warning("more than %d previews in progress; %s/%s gets no replayed traffic for now",
                            self.max_feeds, *key)
                continue
            feed = Feed(target, min(target.rate, self.max_rate), _now())
            feed.task = asyncio.create_task(self._feed(feed))
            self.feeds[key] = feed

    async def _stop(self, key: tuple[str, str]) -> None:
        feed = self.feeds.pop(key)
        if feed.task is not None:
            feed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed.task
        await self._report(feed, active=False)

    async def close(self) -> None:
        for key in list(self.feeds):
            await self._stop(key)

    async def _report(self, feed: Feed, active: bool) -> None:
        if self.report is None:
            return
        try:
            await self.report(feed.target.namespace, feed.target.name, feed.status(_now(), active))
        except Exception as exc:  # noqa: BLE001 - status is a report; the replay goes on without it
            log.warning("reporting the preview traffic of %s/%s failed: %s", feed.target.namespace,
                        feed.target.name, type(exc).__name__)

    async def _feed(self, feed: Feed) -> None:
        t = feed.target
        pacer = Pacer(feed.rate)
        position = 0
        last_report = self.clock() - self.report_interval
        bodies: list[dict[str, Any]] = []
        fetched = float("-inf")
        while True:
            if self.clock() - fetched >= SYNC_INTERVAL:
                # The ring's snapshot, decoded at most once a second (not per request sent).
                bodies, fetched = self.recent.recent(t.namespace, t.name), self.clock()
            feed.available = len(bodies)
            if self.clock() - last_report >= self.report_interval:
                last_report = self.clock()
                await self._report(feed, active=True)
            if not bodies:
                await asyncio.sleep(SYNC_INTERVAL)
                fetched = float("-inf")
                continue
            await asyncio.sleep(pacer.wait(self.clock()))
            body = bodies[position % len(bodies)]
            position += 1
            url = request_url(t, body)
            if url is None:
                continue
            headers = {"Content-Type": "application/json", "Ce-Id": f"{REPLAY_ID_PREFIX}{uuid.uuid4()}"}
            try:
                status = await self.send(url, json.dumps(body, separators=(",", ":")).encode(), headers)
            except Exception as exc:  # noqa: BLE001 - an unreachable preview is counted, never taken for success
                feed.sent += 1
                feed.errors += 1
                feed.last_error = type(exc).__name__
                continue
            feed.sent += 1
            if not 200 <= status < 300:
                feed.errors += 1
                feed.last_error = f"HTTP {status}"

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.sync()
                except Exception:  # noqa: BLE001 - one bad pass must not end replay for every preview
                    log.exception("preview replay sync failed")
                await asyncio.sleep(SYNC_INTERVAL)
        finally:
            await self.close()


def aiohttp_sender(timeout: float = REQUEST_TIMEOUT) -> tuple[Send, Callable[[], Awaitable[None]]]:
    """A sender on one aiohttp session (no redirects followed: the preview URL is the only target)."""
    import aiohttp

    session: aiohttp.ClientSession | None = None

    async def send(url: str, body: bytes, headers: dict[str, str]) -> int:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return resp.status

    async def close() -> None:
        if session is not None:
            await session.close()

    return send, close


def kubernetes_reporter(api_factory: Callable[[], Any]) -> Report:
    """Patches status.previewTraffic (merge patch on the status subresource; this field is the monitor's)."""
    api: Any = None

    def patch(namespace: str, name: str, body: dict[str, Any]) -> None:
        nonlocal api
        if api is None:
            api = api_factory()
        api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                  {"status": {"previewTraffic": body}}, _request_timeout=30)

    async def report(namespace: str, name: str, body: dict[str, Any]) -> None:
        await asyncio.to_thread(patch, namespace, name, body)

    return report
