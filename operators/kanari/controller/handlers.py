"""Thin kopf handlers: fetch, call the pure `reconcile`, apply, patch status, emit Events.

One daemon per ModelDeployment runs the reconcile loop, so a resource is never reconciled by two tasks at
once. Watch events only wake it. All rollout state lives in `.status`: a restarted operator picks up where
the last one left off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kanari import notify, observability
from kanari.api import v1alpha1 as api
from kanari.api.v1alpha1 import MetricResult, ModelDeploymentStatus, SpecError, parse_spec
from kanari.capacity.cost import measure_revision_costs
from kanari.capacity.observer import CapacityObserver, needs_capacity, needs_runtime_sdk
from kanari.controller import kube
from kanari.controller import warmup as warmup_prober
from kanari.controller.config import OperatorConfig
from kanari.controller.model_source import (
    PackageInfo,
    TransientError,
    baseline_uri,
    describe_package,
    sagemaker_client,
)
from kanari.controller.reconcile import ClusterObservation, ReconcileResult, reconcile
from kanari.rollout import analysis, loop, quality
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig

log = logging.getLogger("kanari.controller")
Logger = logging.Logger | logging.LoggerAdapter[Any]  # what kopf passes handlers

COST_EVERY = 60.0  # seconds between two cost-per-1,000 measurements of a Neuron ModelDeployment
PACKAGE_TTL = 30.0  # registry lookups are cached briefly: approvals must still be noticed within a resync
# A PrometheusRule the operator converged is re-read at most this often while its desired content is unchanged
# (there is no watch on PrometheusRules: the operator's RBAC has no list/watch on them); an edit by someone
# else is corrected within this time instead of within a resync.
RULE_RECHECK = 300.0


class OperatorContext:
    """Process-wide clients and wake-up signals; no rollout state."""

    def __init__(self, config: OperatorConfig):
        self.config = config
        self.kube = kube.Kube()
        # A rollout waiting for NeuronCores looks again at least once a resync.
        self.capacity = CapacityObserver(self.kube.api.api_client, min(15.0, config.resync_seconds))
        self.prometheus = PrometheusClient(PrometheusConfig.from_env())
        self._sagemaker: Any = None
        self.packages: dict[str, tuple[float, PackageInfo]] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        self.cost_measured: dict[str, float] = {}  # uid -> monotonic time of the last cost measurement
        # InferenceServices as the watch last delivered them (an informer's cache): steady-state reconciles
        # read children from here and make no API request. A miss (not delivered yet) is one GET.
        self.children: dict[tuple[str, str], dict[str, Any]] = {}
        self.rules: dict[tuple[str, str], tuple[float, str]] = {}  # rule -> (when converged, desired content)
        # Canaries' warm-up requests, sent in the background (a Neuron model's first answer can take minutes).
        self.warmup = warmup_prober.WarmupProber(
            warmup_prober.pod_lister(k8s.CoreV1Api(self.kube.api.api_client)),
            lambda namespace, name: self.children.get((namespace, name)),
            lambda uid: self.wakeup(uid).set(),
            warmup_prober.monitor_from_env(config.drift_monitor_url),
        )

    def wakeup(self, uid: str) -> asyncio.Event:
        return self.wakeups.setdefault(uid, asyncio.Event())

    async def package(self, arn: str) -> PackageInfo:
        cached = self.packages.get(arn)
        if cached and time.monotonic() - cached[0] < PACKAGE_TTL:
            return cached[1]
        if self._sagemaker is None:
            self._sagemaker = sagemaker_client()
        info = await asyncio.to_thread(describe_package, self._sagemaker, arn)
        self.packages[arn] = (time.monotonic(), info)
        return info


CONTEXT: OperatorContext | None = None


def context() -> OperatorContext:
    assert CONTEXT is not None, "operator not started"
    return CONTEXT


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global CONTEXT
    config = OperatorConfig.from_env()
    kube.load_config()
    CONTEXT = OperatorContext(config)
    settings.persistence.finalizer = "kanari.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kanari.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kanari.dev", key="last-handled-configuration"
    )
    # The operator knows its resources; discovery scanning would need cluster-wide CRD read rights.
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    if config.peering_name:
        settings.peering.name = config.peering_name
        settings.peering.mandatory = True
    else:
        settings.peering.standalone = True
    port = int(os.environ.get("KANARI_METRICS_PORT", "0") or 0)
    if port:
        observability.serve(port)


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    if CONTEXT is not None:
        await CONTEXT.prometheus.close()
        await CONTEXT.warmup.close()


def _needs_attention(body: kopf.Body) -> bool:
    status = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    action = (body.get("metadata", {}).get("annotations") or {}).get(api.ACTION_ANNOTATION)
    return generation != status.get("observedGeneration") or (
        action is not None and action != (status.get("rollout") or {}).get("lastAction")
    )


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def md_event(body: kopf.Body, uid: str, **_: Any) -> None:
    # Our own status patches come back as events too; only a new generation or action needs a wake-up.
    if CONTEXT is not None and _needs_attention(body):
        CONTEXT.wakeup(uid).set()


@kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices", labels={"app.kubernetes.io/managed-by": "kanari"})
async def isvc_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    if CONTEXT is None:
        return
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    if event.get("type") == "DELETED":
        CONTEXT.children.pop(key, None)
    else:
        CONTEXT.children[key] = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")}
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("uid"):
            CONTEXT.wakeup(ref["uid"]).set()


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=10.0)
async def reconcile_loop(stopped: Any, body: kopf.Body, uid: str, logger: Logger, **_: Any) -> None:
    rt = context()
    wake = rt.wakeup(uid)
    try:
        await _loop(rt, stopped, body, wake, logger)
    finally:
        # Stopped because the resource is gone or this replica paused for a peer: either way its series must
        # not linger (a paused replica's stale "Progressing" would keep the stuck-rollout alert firing).
        meta = body.get("metadata") or {}
        analysis_spec = ((body.get("spec") or {}).get("rollout") or {}).get("analysis") or {}
        names = tuple(str(m.get("name")) for m in analysis_spec.get("metrics") or [] if isinstance(m, dict))
        observability.forget(meta.get("namespace", ""), meta.get("name", ""), names)
        rt.wakeups.pop(uid, None)
        rt.cost_measured.pop(uid, None)
        rt.capacity.plans.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        rt.warmup.forget(meta.get("namespace", ""), meta.get("name", ""))
        rt.children.pop((meta.get("namespace", ""), meta.get("name", "")), None)


async def _loop(rt: OperatorContext, stopped: Any, body: kopf.Body, wake: asyncio.Event, logger: Logger) -> None:
    failures = 0
    # kopf's body follows the watch stream, which can lag behind our own status write: deciding on it again
    # would undo the step just taken (e.g. put back a canary that was just promoted). It is trusted only at
    # the resourceVersion last read or written here; at any other one the object is read fresh, once.
    seen: str | None = None
    while not stopped:
        wake.clear()
        started = time.monotonic()
        delay: float
        try:
            snapshot = await _snapshot(rt, body, seen)
            if snapshot is None:  # deleted: kopf stops this daemon
                delay = rt.config.resync_seconds
            else:
                delay, seen = await reconcile_once(rt, snapshot, body, logger)
            failures = 0
            observability.RECONCILE_DURATION.observe(time.monotonic() - started)
        except (TransientError, ApiException, OSError) as exc:
            if isinstance(exc, ApiException) and exc.status == 409:
                # Another writer got in between our read and our write: decide again on fresh reads, now.
                logger.info("conflict writing an object (%s); reconciling again", exc.reason)
                await _sleep(stopped, wake, 0.2)
                continue
            failures += 1
            delay = min(2.0 ** failures, 60.0)
            observability.RECONCILE_ERRORS.labels(kind=type(exc).__name__).inc()
            reason = "RegistryUnavailable" if isinstance(exc, TransientError) else "ReconcileError"
            detail = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)
            logger.warning("reconcile failed (%s), retrying in %.0fs: %s", reason, delay, detail)
            if failures in (1, 5):
                kopf.event(body, type="Warning", reason=reason, message=f"{detail}; retrying")
        except Exception as exc:  # a bug must not kill the loop for this resource, nor go unnoticed
            failures += 1
            delay = min(2.0 ** failures, 60.0)
            observability.RECONCILE_ERRORS.labels(kind=type(exc).__name__).inc()
            logger.exception("reconcile crashed; retrying in %.0fs", delay)
        await _sleep(stopped, wake, delay)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


async def _snapshot(rt: OperatorContext, body: kopf.Body, seen: str | None) -> dict[str, Any] | None:
    meta = body.get("metadata") or {}
    if seen is not None and meta.get("resourceVersion") != seen:
        return await rt.kube.get(kube.MODEL_DEPLOYMENT, meta["namespace"], meta["name"])
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(meta),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


async def _sleep(stopped: Any, wake: asyncio.Event, delay: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=max(delay, 0.05), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _converge_rule(rt: OperatorContext, namespace: str, rule: dict[str, Any]) -> str:
    """"created", "updated" or "unchanged"."""
    key = (namespace, rule["metadata"]["name"])
    content = json.dumps(rule, sort_keys=True)
    seen = rt.rules.get(key)
    if seen is not None and seen[1] == content and time.monotonic() - seen[0] < RULE_RECHECK:
        return "unchanged"
    current = await rt.kube.get(kube.PROMETHEUS_RULE, namespace, key[1])
    outcome = await rt.kube.apply(kube.PROMETHEUS_RULE, rule, current)
    rt.rules[key] = (time.monotonic(), content)
    return outcome


async def reconcile_once(
    rt: OperatorContext, snapshot: dict[str, Any], body: kopf.Body, logger: Logger
) -> tuple[float, str | None]:
    """One reconcile; returns when to run again and the resourceVersion the ModelDeployment now has."""
    meta = snapshot["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    now = datetime.now(UTC)
    package: PackageInfo | None = None
    package_error: SpecError | None = None
    capacity = None
    cost = None
    runtime_sdk = None
    try:
        spec = parse_spec(snapshot["spec"])
    except SpecError:
        spec = None  # reconcile() reports it; nothing to fetch for an invalid spec
    if spec is not None and spec.model.modelPackageArn:
        try:
            package = await rt.package(spec.model.modelPackageArn)
        except SpecError as err:
            package_error = err
    key = (namespace, name)
    isvc = rt.children.get(key)
    if isvc is None:
        isvc = await rt.kube.get(kube.ISVC, namespace, name)
        if isvc is not None:
            rt.children[key] = isvc
    # Read as reconcile() reads it (only unreadable fields dropped): an empty status here would hide the rollout
    # from everything observed for it below (measurements, the realised-quality reading, capacity, warm-up).
    status = ModelDeploymentStatus.lenient(snapshot["status"] or {})
    # Neuron deployments: the ServingRuntime's SDK for the compiled-model check, the cluster's NeuronCore room
    # for the capacity gate, and the revisions' cost per 1,000 inferences (kanari.capacity).
    if spec is not None and package is not None and needs_runtime_sdk(spec, package.metadata):
        runtime_sdk = await rt.capacity.runtime_sdk(namespace, spec.model.runtime or rt.config.neuron_runtime)
    if spec is not None and needs_capacity(spec, status):
        capacity = await rt.capacity.view(spec, status, namespace, name, rt.config.inf2_selector_key)
    uid = str(meta.get("uid"))
    if (spec is not None and spec.serving.accelerator == "inferentia2"
            and time.monotonic() - rt.cost_measured.get(uid, -1e9) >= COST_EVERY):
        rt.cost_measured[uid] = time.monotonic()
        cost = await measure_revision_costs(
            rt.prometheus, spec, status,
            analysis.variables(namespace, name, spec, status, isvc, jobs=rt.config.scrape_jobs), now,
        )

    # Inside a rollbackWindow after a promotion: the promoted version's realised quality (the retro-verdict).
    realised = await quality.observe_realised(
        rt.prometheus, namespace, name, spec, status, now, rt.config.scrape_jobs,
    ) if spec is not None else None
    warm = rt.warmup.observation(namespace, name, status.canaryModel.revision if status.canaryModel else None)

    def decide(measurement: list[MetricResult] | None) -> ReconcileResult:
        observed = ClusterObservation(
            now=now, isvc=isvc, package=package, package_error=package_error, measurement=measurement,
            capacity=capacity, cost=cost, neuron_runtime_sdk=runtime_sdk, realised=realised, warmup=warm,
        )
        return reconcile(snapshot, observed, rt.config)

    def variables() -> dict[str, str]:
        # Serverless revisions to compare are Knative's, known only from the InferenceService's status.
        assert spec is not None
        return analysis.variables(namespace, name, spec, status, isvc, jobs=rt.config.scrape_jobs)

    desired = await loop.step(spec, status, now, rt.prometheus, variables, decide)

    rt.capacity.record(namespace, name, spec, desired.status)  # its canary pods are not visible yet
    canary = desired.status.canaryModel
    rt.warmup.track(namespace, name, uid, spec, desired.status, baseline_uri(
        spec, canary, package if package is not None and canary.modelPackageArn == package.arn else None,
    ) if spec is not None and canary is not None else None)
    if desired.isvc is not None:
        try:
            outcome = await rt.kube.apply(kube.ISVC, desired.isvc, isvc)
        except ApiException as exc:
            if exc.status == 409:
                rt.children.pop(key, None)  # the cached copy is stale: the retry reads it fresh
            raise
        if outcome != "unchanged":
            rt.children.pop(key, None)  # the watch brings the written object; until then, read it fresh
            logger.info("InferenceService %s %s", name, outcome)
    rule_events: list[tuple[str, str]] = []
    for owned, rule in desired.rules.items():
        if rule is not None:
            outcome = await _converge_rule(rt, namespace, rule)
            if outcome != "unchanged":
                rule_events.append((f"AlertRule{outcome.capitalize()}",
                                    f"PrometheusRule {rule['metadata']['name']} ({owned}) {outcome}"))
        elif snapshot["status"].get(owned):
            await rt.kube.delete(kube.PROMETHEUS_RULE, namespace, snapshot["status"][owned])
            rt.rules.pop((namespace, snapshot["status"][owned]), None)
            rule_events.append(("AlertRuleDeleted", f"PrometheusRule {snapshot['status'][owned]} ({owned}) deleted"))

    # status.retraining belongs to the alert receiver and status.previewTraffic to the drift monitor's replayer;
    # each patches its own: never written back here.
    new_status = desired.status.model_dump(mode="json", exclude={"retraining", "previewTraffic"})
    for owned, rule in desired.rules.items():
        # None once deleted: not to be deleted again at every resync.
        new_status[owned] = rule["metadata"]["name"] if rule is not None else None
    version = meta.get("resourceVersion")
    # Compared without nulls on both sides: a merge patch deletes null fields, and an API server may keep or prune
    # the nulls inside lists (a measurement with no value): either way they are not a change.
    if any(_without_nulls(snapshot["status"].get(k)) != _without_nulls(v) for k, v in new_status.items()):
        written = await rt.kube.patch_status(namespace, name, new_status)
        version = (written.get("metadata") or {}).get("resourceVersion")
    for ev in desired.events:
        kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message)
    for reason, message in rule_events:
        kopf.event(body, type="Normal", reason=reason, message=message)
    notify.publish(namespace, name, desired.status, desired.events)  # queued, never waited for
    observability.observe(namespace, name, desired.status)
    delay = desired.requeue_after if desired.requeue_after is not None else rt.config.resync_seconds
    return delay, version
