"""The KServe stand-in: what KServe's controller and Knative do for a Serverless InferenceService, on one
machine, without a cluster.

It watches InferenceServices in the cluster stand-in and, for each:
- creates a revision (`<name>-predictor-00001`, ...) whenever the predictor template changes (anything in
  spec.predictor but canaryTrafficPercent), as Knative does; a revision is one KServe model-server process
  (devstack.predictor) serving the storageUri, downloaded first like KServe's storage initializer;
- routes traffic with Serverless canary semantics: with canaryTrafficPercent set, that percent goes to the
  latest ready revision and the rest to latestRolledoutRevision (0 is KServe's rollback); without it, all
  traffic goes to the latest ready revision, which then becomes latestRolledoutRevision;
- writes status in KServe's own shape (conditions PredictorReady/Ready/IngressReady...,
  components.predictor.latest*Revision and traffic[], modelStatus, observedGeneration, url);
- stops a revision's process once it gets no traffic and its in-flight requests have drained (Knative's
  scale-to-zero), keeping the revision's record, so a rollback to it starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import sys
import tarfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kanari.api.conditions import now_iso

from devstack.kubeapi import KubeApi
from devstack.router import LoggerSpec, Route, Router, Target
from devstack.stack import free_port

log = logging.getLogger("devstack.kserve")

ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
READY_TIMEOUT = 120.0
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
# How long a revision without traffic keeps running (Knative's scale-to-zero grace, shortened).
IDLE_GRACE = 15.0


@dataclass
class Revision:
    name: str
    template_hash: str
    storage_uri: str
    version: str
    logger: LoggerSpec | None
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    failed: str | None = None
    started: bool = False
    starting: asyncio.Task[None] | None = None
    stopping: asyncio.Task[None] | None = None
    idle_since: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass
class Service:
    namespace: str
    name: str
    revisions: list[Revision] = field(default_factory=list)
    latest_ready: str | None = None
    rolled_out: str | None = None
    previous_rolled_out: str | None = None

    def revision(self, name: str | None) -> Revision | None:
        return next((r for r in self.revisions if r.name == name), None)


def template_hash(predictor: dict[str, Any]) -> str:
    template = {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


def logger_spec(isvc: dict[str, Any]) -> LoggerSpec | None:
    """The payload logger a revision is created with; annotation values are fixed at creation, as the
    agent's --metadata-annotations arguments are baked into the revision's pod."""
    pred = (isvc.get("spec") or {}).get("predictor") or {}
    cfg = pred.get("logger")
    if not cfg or not cfg.get("url"):
        return None
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    wanted = cfg.get("metadataAnnotations") or []
    return LoggerSpec(
        url=str(cfg["url"]),
        mode=str(cfg.get("mode") or "all"),
        annotations={k: str(annotations[k]) for k in wanted if k in annotations},
        metadata_headers=tuple(cfg.get("metadataHeaders") or ()),
    )


@dataclass(frozen=True)
class Traffic:
    revision: str
    percent: int
    latest: bool
    tag: str


def plan_traffic(svc: Service, canary_percent: int | None) -> list[Traffic]:
    """Knative's route for the service: pure, from the revisions' readiness and the canary percent."""
    latest_ready = svc.latest_ready
    rolled = svc.rolled_out
    if latest_ready is None:
        return [Traffic(rolled, 100, False, "prev")] if rolled else []
    if canary_percent is not None and rolled and rolled != latest_ready:
        pct = max(0, min(100, int(canary_percent)))
        return [Traffic(latest_ready, pct, True, "latest"), Traffic(rolled, 100 - pct, False, "prev")]
    return [Traffic(latest_ready, 100, True, "latest")]


def observe_template(svc: Service, isvc: dict[str, Any]) -> tuple[Revision, bool]:
    """The latest revision, and whether this predictor template made a new one (Knative: every template change)."""
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    digest = template_hash(predictor)
    latest = svc.revisions[-1] if svc.revisions else None
    if latest is not None and latest.template_hash == digest:
        return latest, False
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    rev = Revision(
        name=f"{svc.name}-predictor-{len(svc.revisions) + 1:05d}",
        template_hash=digest,
        storage_uri=str((predictor.get("model") or {}).get("storageUri") or ""),
        version=str(annotations.get("kanari.dev/model-version", "")),
        logger=logger_spec(isvc),
    )
    svc.revisions.append(rev)
    return rev, True


def advance(svc: Service, canary_percent: int | None) -> list[Traffic]:
    """Knative's route after the revisions' readiness changed: the newest ready revision, the canary split, and
    the rolled-out revision moving once one revision takes all traffic."""
    latest = svc.revisions[-1] if svc.revisions else None
    if latest is not None and latest.ready and svc.latest_ready != latest.name:
        svc.latest_ready = latest.name
    traffic = plan_traffic(svc, canary_percent)
    if not (canary_percent is not None and svc.rolled_out and svc.rolled_out != svc.latest_ready):
        full = next((t for t in traffic if t.percent == 100), None)
        if full and svc.rolled_out != full.revision:
            svc.previous_rolled_out, svc.rolled_out = svc.rolled_out, full.revision
            traffic = plan_traffic(svc, canary_percent)
    return traffic


def _condition(type_: str, status: str, reason: str = "", message: str = "", severity: str = "") -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "status": status, "lastTransitionTime": now_iso()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    if severity:
        c["severity"] = severity
    return c


def build_status(
    svc: Service, isvc: dict[str, Any], traffic: list[Traffic], url: str
) -> dict[str, Any]:
    """status of the InferenceService, in KServe's shape (see shared/upstream/argocd-kserve-health)."""
    latest = svc.revisions[-1] if svc.revisions else None
    generation = (isvc.get("metadata") or {}).get("generation")
    predictor: dict[str, Any] = {}
    if latest:
        predictor["latestCreatedRevision"] = latest.name
    if svc.latest_ready:
        predictor["latestReadyRevision"] = svc.latest_ready
    if svc.rolled_out:
        predictor["latestRolledoutRevision"] = svc.rolled_out
    if svc.previous_rolled_out:
        predictor["previousRolledoutRevision"] = svc.previous_rolled_out
    predictor["traffic"] = [
        {"revisionName": t.revision, "percent": t.percent, "latestRevision": t.latest, "tag": t.tag}
        for t in traffic
    ]
    if traffic:
        predictor["url"] = url
        predictor["address"] = {"url": url}
    config_name = f"{svc.name}-predictor"
    if latest and latest.failed:
        msg = f'Revision "{latest.name}" failed with message: {latest.failed}.'
        conds = [
            _condition("IngressReady", "True" if traffic else "False", "" if traffic else "Predictor ingress not created"),
            _condition("PredictorConfigurationReady", "False", "RevisionFailed", msg),
            _condition("PredictorReady", "False", "RevisionFailed", msg),
            _condition("PredictorRouteReady", "True" if traffic else "False", severity="Info"),
            _condition("Ready", "False", "RevisionFailed", msg),
        ]
        transition = "BlockedByFailedLoad"
        state = "FailedToLoad"
    elif latest and not latest.ready and latest.name != svc.latest_ready:
        msg = f'Configuration "{config_name}" is waiting for a Revision to become ready.'
        conds = [
            _condition("IngressReady", "True" if traffic else "Unknown"),
            _condition("PredictorConfigurationReady", "Unknown", "RevisionMissing", msg, "Info"),
            _condition("PredictorReady", "Unknown", "RevisionMissing", msg),
            _condition("PredictorRouteReady", "True" if traffic else "Unknown", severity="Info"),
            _condition("Ready", "Unknown", "RevisionMissing", msg),
        ]
        transition = "InProgress"
        state = "Loading"
    else:
        conds = [
            _condition("IngressReady", "True"),
            _condition("PredictorConfigurationReady", "True", severity="Info"),
            _condition("PredictorReady", "True"),
            _condition("PredictorRouteReady", "True", severity="Info"),
            _condition("Ready", "True"),
        ]
        transition = "UpToDate"
        state = "Loaded"
    conds.append(_condition("Stopped", "False", severity="Info"))
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conds,
        "components": {"predictor": predictor},
        "modelStatus": {
            "states": {"activeModelState": "Loaded" if svc.latest_ready else "Pending", "targetModelState": state},
            "transitionStatus": transition,
            "copies": {"failedCopies": 1 if latest and latest.failed else 0, "totalCopies": 1},
        },
    }
    if traffic:
        status["url"] = url
        status["address"] = {"url": url}
    return status


class ModelStore:
    """KServe's storage initializer, for s3:// (through AWS_ENDPOINT_URL) and file:// URIs."""

    def __init__(self, root: Path):
        self.root = root

    def fetch(self, uri: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme == "file":
            data = Path(parsed.path).read_bytes() if Path(parsed.path).is_file() else None
            if data is None:
                raise FileNotFoundError(f"{uri}: not a file")
        elif parsed.scheme == "s3":
            from kanari import awsclient

            body = awsclient.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
            data = body.read()
        else:
            raise ValueError(f"storageUri {uri}: only s3:// and file:// are served locally")
        if uri.endswith((".tar.gz", ".tgz")):
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
                tf.extractall(dest, filter="data")
        else:
            (dest / Path(parsed.path).name).write_bytes(data)
        return dest


class KServeStandIn:
    def __init__(
        self, api: KubeApi, router: Router, workdir: Path, router_url: str, namespace: str | None = None,
        idle_grace: float = IDLE_GRACE,
    ):
        self.api = api
        self.idle_grace = idle_grace
        self.router = router
        self.workdir = workdir
        self.router_url = router_url.rstrip("/")
        self.namespace = namespace
        self.store = ModelStore(workdir / "models")
        self.services: dict[tuple[str, str], Service] = {}
        self.specs: dict[tuple[str, str], dict[str, Any]] = {}
        self._wake = asyncio.Event()
        (workdir / "pids").mkdir(parents=True, exist_ok=True)

    def url_of(self, namespace: str, name: str) -> str:
        return f"{self.router_url}/serving/{namespace}/{name}"

    def tag_url(self, namespace: str, name: str, tag: str) -> str:
        return f"{self.router_url}/tags/{tag}/{namespace}/{name}"

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                self._wake.clear()
                for key in list(self.specs):
                    try:
                        await self.reconcile(key)
                    except aiohttp.ClientError as exc:
                        log.warning("InferenceService %s/%s: API error %s; retrying", *key, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
        finally:
            watcher.cancel()
            await self.shutdown()

    async def _watch(self) -> None:
        path = KubeApi.path(*ISVC, self.namespace)
        async for kind, obj in self.api.watch(path):
            meta = obj.get("metadata") or {}
            key = (str(meta.get("namespace")), str(meta.get("name")))
            if kind == "DELETED":
                self.specs.pop(key, None)
                await self._delete(key)
            else:
                self.specs[key] = obj
            self._wake.set()

    async def reconcile(self, key: tuple[str, str]) -> None:
        isvc = self.specs.get(key)
        if isvc is None:
            return
        ns, name = key
        svc = self.services.setdefault(key, Service(ns, name))
        predictor = (isvc.get("spec") or {}).get("predictor") or {}
        latest, created = observe_template(svc, isvc)
        if created:
            log.info("InferenceService %s/%s: new revision %s (%s)", ns, name, latest.name, latest.storage_uri)
        if not latest.started:
            self._launch(svc, latest)
        canary = predictor.get("canaryTrafficPercent")
        traffic = advance(svc, canary)
        await self._ensure_running(svc, traffic)
        tagged = ((isvc.get("metadata") or {}).get("annotations") or {}).get(TAG_ROUTING) == "true"
        self._route(svc, traffic, canary is not None and len(traffic) == 2, tagged)
        old = isvc.get("status") or {}
        status = build_status(svc, isvc, traffic, self.url_of(ns, name))
        if tagged:
            # KServe writes the tag URL of the latest revision in the traffic entry once tag routing is on.
            for entry in status["components"]["predictor"].get("traffic") or []:
                if entry.get("tag") == "latest" and len(traffic) == 2:
                    entry["url"] = self.tag_url(ns, name, "latest")
        status = _keep_transition_times(old, status)
        if _status_changed(old, status):
            updated = await self.api.merge_patch(KubeApi.path(*ISVC, ns, name) + "/status", {"status": status})
            if updated is not None:
                self.specs[key] = updated
        self._scale_to_zero(svc, traffic, tagged)

    def _route(self, svc: Service, traffic: list[Traffic], split: bool, tagged: bool = False) -> None:
        targets = []
        for t in traffic:
            rev = svc.revision(t.revision)
            if rev is None or not rev.ready or not rev.running:
                continue
            endpoint = "canary" if split and t.latest else "default"
            tag = t.tag if tagged and split and t.latest else ""
            targets.append(Target(rev.name, rev.url, t.percent, endpoint, rev.version, rev.logger, tag))
        self.router.set_route(Route(svc.namespace, svc.name, tuple(targets)))

    def _launch(self, svc: Service, rev: Revision) -> None:
        rev.started = True
        rev.ready = False
        rev.starting = asyncio.create_task(self._start(svc, rev))

    async def _ensure_running(self, svc: Service, traffic: list[Traffic]) -> None:
        """A revision given traffic again (a rollback to a scaled-down one) is started again."""
        for t in traffic:
            rev = svc.revision(t.revision)
            if t.percent and rev and not rev.running and rev.starting is None and rev.stopping is None \
                    and not rev.failed:
                self._launch(svc, rev)

    def _scale_to_zero(self, svc: Service, traffic: list[Traffic], tagged: bool = False) -> None:
        # The latest revision behind its tag URL at 0% (a BlueGreen preview) keeps running: Knative would start
        # it again on the first tagged request, which the stand-in does not do.
        serving = {t.revision for t in traffic if t.percent > 0 or (tagged and t.latest and len(traffic) == 2)}
        now = time.monotonic()
        for rev in svc.revisions:
            if rev.name in serving or not rev.running or rev.starting or rev.stopping:
                rev.idle_since = None if rev.name in serving else rev.idle_since
                continue
            rev.idle_since = rev.idle_since or now
            if now - rev.idle_since >= self.idle_grace:
                rev.stopping = asyncio.create_task(self._drain_and_stop(rev))

    async def _drain_and_stop(self, rev: Revision) -> None:
        try:
            # Knative keeps a revision that lost its traffic until its requests are done.
            await self.router.drained(rev.url)
            log.info("revision %s has had no traffic for %.0fs: scaled to zero", rev.name, self.idle_grace)
            await self._stop(rev)
        finally:
            rev.stopping = None
            rev.idle_since = None

    async def _start(self, svc: Service, rev: Revision) -> None:
        try:
            model_dir = self.workdir / "models" / rev.name
            if not rev.storage_uri:
                raise ValueError("spec.predictor.model.storageUri is empty")
            await asyncio.to_thread(self.store.fetch, rev.storage_uri, model_dir)
            rev.port = free_port()
            logfile = self.workdir / "predictors" / f"{rev.name}.log"
            logfile.parent.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-m", "devstack.predictor", "--model_name", svc.name,
                    "--model_dir", str(model_dir), "--http_port", str(rev.port)]
            with logfile.open("ab") as out:
                rev.process = await asyncio.create_subprocess_exec(
                    *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True
                )
            (self.workdir / "pids" / f"{rev.name}.pid").write_text(str(rev.process.pid))
            await self._wait_ready(svc, rev, logfile)
            rev.ready = True
            log.info("revision %s ready on %s", rev.name, rev.url)
        except Exception as exc:  # a revision that cannot start is reported in status, as Knative does
            rev.failed = str(exc) or type(exc).__name__
            log.error("revision %s failed: %s", rev.name, rev.failed)
            if rev.process is not None:
                await self._stop(rev)
        finally:
            rev.starting = None
            self._wake.set()

    async def _wait_ready(self, svc: Service, rev: Revision, logfile: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"{rev.url}/v1/models/{svc.name}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                assert rev.process is not None
                if rev.process.returncode is not None:
                    tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
                    raise RuntimeError(f"Container failed with: exit code {rev.process.returncode}: {' | '.join(tail)}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200 and (await resp.json()).get("ready"):
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"model server not ready after {READY_TIMEOUT:.0f}s")

    async def _stop(self, rev: Revision) -> None:
        proc = rev.process
        rev.ready = False
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        rev.process = None
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "pids" / f"{rev.name}.pid").unlink()

    async def _delete(self, key: tuple[str, str]) -> None:
        svc = self.services.pop(key, None)
        self.router.remove_route(*key)
        for rev in svc.revisions if svc else ():
            for task in (rev.starting, rev.stopping):
                if task:
                    task.cancel()
            await self._stop(rev)

    async def shutdown(self) -> None:
        for key in list(self.services):
            await self._delete(key)


def _keep_transition_times(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A condition keeps its lastTransitionTime while its status does not change."""
    before = {c.get("type"): c for c in old.get("conditions") or []}
    for c in new.get("conditions") or []:
        prev = before.get(c["type"])
        if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            c["lastTransitionTime"] = prev["lastTransitionTime"]
    return new


def _status_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def strip(s: dict[str, Any]) -> Any:
        out = json.loads(json.dumps(s))
        for c in out.get("conditions") or []:
            c.pop("lastTransitionTime", None)
        return out

    return strip(old) != strip(new)
