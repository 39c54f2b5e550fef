"""Warm-up requests to a canary before it takes traffic: the doing of spec.rollout.warmup.

The deciding is kanari.rollout.warmup (pure); this module only finds the canary's pods, sends them warm-up
requests with timeouts and reports what happened as a WarmupObservation. One background task per
ModelDeployment and canary revision, so a model that takes minutes to answer its first request never blocks
the reconcile loop; the task wakes the loop whenever it has news.

Where the canary answers:
- RawDeployment: KServe runs the canary as its own Deployment whose pods carry the predictor label
  `kanari.dev/revision=<revision>`; each pod is asked directly (pod IP, the kserve-container's port, 8080
  by default), so every pod is warm before traffic moves, not just the one a Service happened to pick.
- Serverless: the canary is Knative's latest revision, reached through KServe's tag route (the `latest`
  entry of status.components.predictor.traffic, enabled by the serving.kserve.io/enable-tag-routing
  annotation Kanari sets). Knative balances over the revision's pods, so the revision is the unit there.

Warm-up inputs, the first source that yields any: spec.rollout.warmup.samples; `samples.jsonl` beside the
drift baseline's statistics.json (written by `kanari drift baseline`); the drift monitor's recently logged
requests (GET /v1/recent-requests/{namespace}/{name}, see CONTRACT). Every answer is untrusted: only an
HTTP 200 whose body is a JSON prediction (`predictions` for the v1 protocol, `outputs` for v2) within
timeoutSeconds counts; errors, 5xx, garbage, oversized bodies and hangs are failures, retried within the
budget and reported with their reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.client.exceptions import ApiException

from kanari.api.conditions import parse_time
from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, WarmupSpec
from kanari.controller.inferenceservice import REVISION_ANNOTATION
from kanari.monitor.settings import API_TOKEN_ENV
from kanari.rollout.warmup import PodObservation, WarmupObservation

log = logging.getLogger("kanari.controller.warmup")

REVISION_LABEL = "kanari.dev/revision"
DEFAULT_PORT = 8080  # KServe's model server
MAX_SAMPLES = 20
MAX_BODY_BYTES = 1 << 20  # a warm-up request or answer larger than this is refused
MAX_SAMPLES_FILE_BYTES = 4 << 20
SAMPLES_FILE = "samples.jsonl"
RECENT_PATH = "/v1/recent-requests/{namespace}/{name}"
MAX_BACKOFF = 15.0


class NoSamples(Exception):
    """No warm-up input anywhere: reported, never taken as warm."""


# ------------------------------------------------------------------------------------------ inputs
def _valid_body(doc: Any) -> bool:
    return isinstance(doc, dict) and (isinstance(doc.get("instances"), list) or isinstance(doc.get("inputs"), list))


def parse_samples_jsonl(text: str, limit: int = MAX_SAMPLES) -> list[dict[str, Any]]:
    """Request bodies from a samples.jsonl: one JSON object per line; lines that are not a request are skipped."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        if len(out) >= limit:
            break
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if _valid_body(doc) and len(line) <= MAX_BODY_BYTES:
            out.append(doc)
    return out


def read_baseline_samples(baseline_uri: str) -> list[dict[str, Any]]:
    """samples.jsonl beside the baseline (s3:// through boto3, file:// or a path on this machine)."""
    parsed = urllib.parse.urlparse(baseline_uri)
    if parsed.scheme == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        from kanari import awsclient

        key = parsed.path.lstrip("/").rstrip("/") + "/" + SAMPLES_FILE
        try:
            s3 = awsclient.client("s3", config=awsclient.retry_config(3, connect_timeout=5, read_timeout=15))
            obj = s3.get_object(
                Bucket=parsed.netloc, Key=key, Range=f"bytes=0-{MAX_SAMPLES_FILE_BYTES - 1}"
            )
            text = obj["Body"].read(MAX_SAMPLES_FILE_BYTES).decode("utf-8", "replace")
        except (ClientError, BotoCoreError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise NoSamples(f"baseline {SAMPLES_FILE} not readable ({code})") from None
        return parse_samples_jsonl(text)
    if parsed.scheme in ("file", ""):
        path = Path(parsed.path if parsed.scheme else baseline_uri) / SAMPLES_FILE
        try:
            with path.open("rb") as fh:
                return parse_samples_jsonl(fh.read(MAX_SAMPLES_FILE_BYTES).decode("utf-8", "replace"))
        except OSError:
            raise NoSamples(f"baseline {SAMPLES_FILE} not readable") from None
    raise NoSamples(f"baseline scheme {parsed.scheme}:// is not read for warm-up inputs")


class RecentRequests:
    """The drift monitor's recently logged request bodies (CONTRACT: GET /v1/recent-requests/{ns}/{name}).

    Authenticated with the monitor's read-API bearer token (KANARI_MONITOR_API_TOKEN, the Secret the chart
    gives the monitor and the controller only). The answer is untrusted: only request-shaped JSON objects are
    kept, at most `limit`, and a body over MAX_BODY_BYTES is refused."""

    def __init__(self, base_url: str, token: str | None = None):
        parsed = urllib.parse.urlparse(base_url)
        self.base = f"{parsed.scheme}://{parsed.netloc}"
        self.token = token

    async def fetch(self, session: aiohttp.ClientSession, namespace: str, name: str, limit: int) -> list[dict[str, Any]]:
        url = self.base + RECENT_PATH.format(namespace=urllib.parse.quote(namespace, safe=""),
                                             name=urllib.parse.quote(name, safe=""))
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with session.get(url, params={"limit": str(limit)}, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status != 200:
                    raise NoSamples(f"drift monitor's recent requests: HTTP {resp.status}")
                raw = await resp.content.read(MAX_SAMPLES_FILE_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NoSamples(f"drift monitor's recent requests unreachable ({type(exc).__name__})") from None
        if len(raw) > MAX_SAMPLES_FILE_BYTES:
            raise NoSamples("drift monitor's recent requests: answer too large")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise NoSamples("drift monitor's recent requests: not JSON") from None
        items = doc.get("requests") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise NoSamples("drift monitor's recent requests: no `requests` list")
        # Newest last: the newest are the most like what the canary will be sent.
        return [r for r in items if _valid_body(r)][-limit:]


# ------------------------------------------------------------------------------------------ targets
@dataclass(frozen=True)
class Target:
    name: str  # a pod (RawDeployment) or Knative revision (Serverless)
    url: str | None  # base URL; None: not reachable yet (why in `waiting`)
    scheduled_at: datetime | None
    waiting: str = ""


def _scheduled(pod: dict[str, Any]) -> datetime | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return None


def _port(pod: dict[str, Any]) -> int:
    containers = (pod.get("spec") or {}).get("containers") or []
    main = next((c for c in containers if c.get("name") == "kserve-container"), containers[0] if containers else {})
    for p in main.get("ports") or []:
        if isinstance(p.get("containerPort"), int):
            return int(p["containerPort"])
    return DEFAULT_PORT


def targets(mode: str, revision: str, pods: list[dict[str, Any]], isvc: dict[str, Any] | None) -> tuple[list[Target], str]:
    """Where the canary revision answers, and Knative's revision name (Serverless; else the revision)."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    if mode == "RawDeployment":
        out = []
        for p in sorted(live, key=lambda p: (p.get("metadata") or {}).get("name") or ""):
            name = str((p.get("metadata") or {}).get("name") or "")
            ip = (p.get("status") or {}).get("podIP")
            url = f"http://{ip}:{_port(p)}" if ip else None
            phase = (p.get("status") or {}).get("phase") or "Pending"
            out.append(Target(name, url, _scheduled(p), "" if url else f"no pod IP yet ({phase})"))
        return out, revision
    meta = (isvc or {}).get("metadata") or {}
    status = (isvc or {}).get("status") or {}
    predictor = (status.get("components") or {}).get("predictor") or {}
    knative = str(predictor.get("latestCreatedRevision") or "")
    carries = (meta.get("annotations") or {}).get(REVISION_ANNOTATION) == revision
    observed = status.get("observedGeneration") is None or meta.get("generation") is None or (
        status["observedGeneration"] >= meta["generation"])
    url = next((t.get("url") for t in predictor.get("traffic") or [] if t.get("tag") == "latest"), None)
    times = [t for t in (_scheduled(p) for p in live) if t is not None]
    first = min(times) if times else None
    if not (carries and observed and knative):
        return [Target(knative or "latest", None, first, "KServe has not created the canary's revision yet")], knative
    if not url:
        return [Target(knative, None, first, "no tag route (latest) for the canary revision yet")], knative
    return [Target(knative, str(url), first)], knative


# ------------------------------------------------------------------------------------------ requests
def request_path(model: str, body: dict[str, Any]) -> str:
    quoted = urllib.parse.quote(model, safe="")
    return f"/v2/models/{quoted}/infer" if "inputs" in body else f"/v1/models/{quoted}:predict"


async def send(session: aiohttp.ClientSession, base: str, model: str, body: dict[str, Any],
               timeout: float) -> tuple[bool, float, str]:
    """One warm-up request: (answered, seconds, why not)."""
    started = time.monotonic()
    try:
        # No redirects: a predictor's answer never sends the controller's requests anywhere else.
        async with session.post(base.rstrip("/") + request_path(model, body), json=body, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            raw = await resp.content.read(MAX_BODY_BYTES + 1)
            took = time.monotonic() - started
            if resp.status != 200:
                return False, took, f"HTTP {resp.status}"
    except TimeoutError:
        return False, time.monotonic() - started, f"no answer within timeoutSeconds {timeout:g}"
    except aiohttp.ClientError as exc:
        return False, time.monotonic() - started, f"request failed ({type(exc).__name__})"
    if len(raw) > MAX_BODY_BYTES:
        return False, took, "answer larger than 1 MiB"
    try:
        doc = json.loads(raw)
    except ValueError:
        return False, took, "HTTP 200 but the answer is not JSON"
    key = "outputs" if "inputs" in body else "predictions"
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list) or not doc[key]:
        return False, took, f"HTTP 200 but no `{key}` in the answer"
    return True, took, ""


# ------------------------------------------------------------------------------------------ the task
@dataclass
class _PodState:
    answered: int = 0
    failed: int = 0
    first_success_at: datetime | None = None
    latency: float | None = None
    last_error: str = ""


@dataclass
class _Run:
    revision: str
    spec: WarmupSpec
    task: asyncio.Task[None]
    report: WarmupObservation


PodLister = Callable[[str, str], Awaitable[list[dict[str, Any]]]]


class WarmupProber:
    """Runs and reports the warm-up of each ModelDeployment's canary (one task per canary revision)."""

    def __init__(
        self,
        list_pods: PodLister,
        isvc_of: Callable[[str, str], dict[str, Any] | None],
        wake: Callable[[str], None],
        monitor: RecentRequests | None = None,
    ):
        self.list_pods = list_pods
        self.isvc_of = isvc_of
        self.wake = wake
        self.monitor = monitor
        self.runs: dict[tuple[str, str], _Run] = {}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Warm-up answers are never cached or redirected to: each one is a request to the pod itself.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
        return self._session

    def observation(self, namespace: str, name: str, revision: str | None) -> WarmupObservation | None:
        run = self.runs.get((namespace, name))
        return run.report if run is not None and run.revision == revision else None

    def track(self, namespace: str, name: str, uid: str, spec: ModelDeploymentSpec | None,
              status: ModelDeploymentStatus, baseline_uri: str | None) -> None:
        """Start the warm-up the status asks for; stop one no longer wanted (another revision, done, gone)."""
        key = (namespace, name)
        w = status.warmup
        want = (
            spec is not None and spec.rollout.warmup is not None and status.canaryModel is not None
            and w is not None and w.revision == status.canaryModel.revision and not w.succeededAt and not w.failedAt
        )
        run = self.runs.get(key)
        if run is not None and (not want or run.revision != (w.revision if w else None)
                                or (spec is not None and run.spec != spec.rollout.warmup)):
            run.task.cancel()
            self.runs.pop(key, None)
            run = None
        if not want or run is not None:
            return
        assert spec is not None and spec.rollout.warmup is not None and w is not None
        report = WarmupObservation(revision=w.revision)
        task = asyncio.get_running_loop().create_task(
            self._warm(key, uid, w.revision, spec.rollout.warmup, spec.serving.deploymentMode, baseline_uri),
            name=f"warmup:{namespace}/{name}:{w.revision}",
        )
        self.runs[key] = _Run(w.revision, spec.rollout.warmup, task, report)

    def forget(self, namespace: str, name: str) -> None:
        run = self.runs.pop((namespace, name), None)
        if run is not None:
            run.task.cancel()

    async def close(self) -> None:
        for key in list(self.runs):
            self.forget(*key)
        if self._session is not None:
            await self._session.close()

    async def samples(self, namespace: str, name: str, spec: WarmupSpec,
                      baseline_uri: str | None) -> tuple[list[dict[str, Any]], str]:
        if spec.samples:
            return [dict(s) for s in spec.samples], "spec.rollout.warmup.samples"
        why = []
        if baseline_uri:
            try:
                found = await asyncio.to_thread(read_baseline_samples, baseline_uri)
                if found:
                    return found, f"baseline {SAMPLES_FILE}"
                why.append(f"baseline {SAMPLES_FILE} holds no request")
            except NoSamples as exc:
                why.append(str(exc))
        if self.monitor is not None:
            try:
                found = await self.monitor.fetch(self._http(), namespace, name, MAX_SAMPLES)
                if found:
                    return found, "drift monitor recent requests"
                why.append("the drift monitor has logged no request yet")
            except NoSamples as exc:
                why.append(str(exc))
        raise NoSamples("no warm-up inputs: no spec.rollout.warmup.samples; " + "; ".join(why or ["no other source"]))

    async def _round(self, t: Target, s: _PodState, samples: list[dict[str, Any]], turn: int, model: str,
                     spec: WarmupSpec) -> bool:
        """The requests a target still owes, one after the other; stops at the first failure (False)."""
        for i in range(spec.requests - s.answered):
            body = samples[(turn + i) % len(samples)]
            ok, took, why = await send(self._http(), str(t.url), model, body, spec.timeoutSeconds)
            if not ok:
                s.failed += 1
                s.last_error = why
                return False
            s.answered += 1
            s.first_success_at = s.first_success_at or datetime.now(UTC)
            s.latency = max(s.latency or 0.0, took)
            s.last_error = ""
        return True

    def _publish(self, key: tuple[str, str], uid: str, report: WarmupObservation) -> None:
        run = self.runs.get(key)
        if run is not None and run.revision == report.revision and run.report != report:
            run.report = report
            self.wake(uid)

    async def _warm(self, key: tuple[str, str], uid: str, revision: str, spec: WarmupSpec, mode: str,
                    baseline_uri: str | None) -> None:
        namespace, name = key
        states: dict[str, _PodState] = {}
        samples: list[dict[str, Any]] | None = None
        source = ""
        turn, failures = 0, 0
        seen: tuple[PodObservation, ...] = ()  # kept in a report that could not look at the pods this time
        while True:
            report = WarmupObservation(revision=revision, source=source, pods=seen)
            try:
                if samples is None:
                    samples, source = await self.samples(namespace, name, spec, baseline_uri)
                pods = await self.list_pods(namespace, revision)
                found, serving = targets(mode, revision, pods, self.isvc_of(namespace, name))
                todo = [t for t in found if t.url and states.setdefault(t.name, _PodState()).answered < spec.requests]
                for t in found:
                    states.setdefault(t.name, _PodState())
                    if not t.url:
                        states[t.name].last_error = t.waiting
                assert samples
                model = spec.modelName or name
                rounds = await asyncio.gather(*(self._round(t, states[t.name], samples, turn, model, spec) for t in todo))
                turn += 1
                failures = failures + 1 if not all(rounds) or not todo else 0
                pods_seen = tuple(
                    PodObservation(name=t.name, scheduled_at=t.scheduled_at, answered=states[t.name].answered,
                                   failed=states[t.name].failed, first_success_at=states[t.name].first_success_at,
                                   latency_seconds=states[t.name].latency, last_error=states[t.name].last_error)
                    for t in found
                )
                seen = pods_seen
                report = replace(report, pods=pods_seen, serving_revision=serving, source=source,
                                 error=None if found else "no canary pod yet")
                self._publish(key, uid, report)
                if found and all(states[t.name].answered >= spec.requests for t in found):
                    return  # warm: the gate records it; nothing more to send
            except NoSamples as exc:
                failures += 1
                self._publish(key, uid, replace(report, error=str(exc)))
            except ApiException as exc:
                failures += 1
                self._publish(key, uid, replace(report, error=f"listing the canary's pods failed: {exc.status} {exc.reason}"))
            except OSError as exc:
                failures += 1
                self._publish(key, uid, replace(report, error=f"listing the canary's pods failed: {type(exc).__name__}"))
            except Exception as exc:  # a bug must not end the warm-up silently: reported, and tried again
                failures += 1
                log.exception("warm-up of %s/%s revision %s", namespace, name, revision)
                self._publish(key, uid, replace(report, error=f"warm-up prober error ({type(exc).__name__})"))
            await asyncio.sleep(min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 5)) if failures else 0.2)


def pod_lister(core: Any) -> PodLister:
    """Pods of one revision in one namespace, through the official client (kubernetes.client.CoreV1Api)."""

    async def list_pods(namespace: str, revision: str) -> list[dict[str, Any]]:
        out = await asyncio.to_thread(
            core.list_namespaced_pod, namespace, label_selector=f"{REVISION_LABEL}={revision}"
        )
        ser = core.api_client.sanitize_for_serialization
        return [ser(p) for p in out.items]

    return list_pods


def monitor_from_env(monitor_url: str | None) -> RecentRequests | None:
    token = os.environ.get(API_TOKEN_ENV, "").strip() or None
    return RecentRequests(monitor_url, token) if monitor_url else None
