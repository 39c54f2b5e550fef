"""Thin kopf handlers: fetch, call the pure `reconcile`, apply, patch status, emit Events.

One daemon per ModelDeployment runs the reconcile loop, so a resource is never reconciled by two tasks at
once. Watch events only wake it. All rollout state lives in `.status`: a restarted operator picks up where
the last one left off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kanari import notify, observability
from kanari.api import v1alpha1 as api
from kanari.api.v1alpha1 import ModelDeploymentStatus, SpecError, parse_spec
from kanari.capacity.observer import CapacityObserver, needs_capacity
from kanari.controller import kube
from kanari.controller.config import OperatorConfig
from kanari.controller.model_source import PackageInfo, TransientError, describe_package, sagemaker_client
from kanari.controller.reconcile import ClusterObservation, reconcile
from kanari.rollout import analysis, engine
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig

log = logging.getLogger("kanari.controller")
Logger = logging.Logger | logging.LoggerAdapter[Any]  # what kopf passes handlers

PACKAGE_TTL = 30.0  # registry lookups are cached briefly: approvals must still be noticed within a resync


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
async def isvc_event(body: kopf.Body, **_: Any) -> None:
    if CONTEXT is None:
        return
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


async def reconcile_once(
    rt: OperatorContext, snapshot: dict[str, Any], body: kopf.Body, logger: Logger
) -> tuple[float, str | None]:
    """One reconcile; returns when to run again and the resourceVersion the ModelDeployment now has."""
    meta = snapshot["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    now = datetime.now(UTC)
    package: PackageInfo | None = None
    package_error: SpecError | None = None
    measurement = None
    capacity = None
    try:
        spec = parse_spec(snapshot["spec"])
    except SpecError:
        spec = None  # reconcile() reports it; nothing to fetch for an invalid spec
    if spec is not None and spec.model.modelPackageArn:
        try:
            package = await rt.package(spec.model.modelPackageArn)
        except SpecError as err:
            package_error = err
    isvc = await rt.kube.get(kube.ISVC, namespace, name)
    if spec is not None:
        status = ModelDeploymentStatus.model_validate(snapshot["status"] or {})
        if engine.analysis_due(spec, status, now):
            # Serverless revisions to compare are Knative's, known only from the InferenceService's status.
            variables = analysis.variables(namespace, name, spec, status, isvc)
            due = engine.due_metrics(spec, status, now)
            measurement = await analysis.measure(spec, variables, rt.prometheus, now, due)
        if needs_capacity(spec, status):
            capacity = await rt.capacity.view(spec, status, namespace, rt.config.inf2_selector_key)

    desired = reconcile(
        snapshot,
        ClusterObservation(now=now, isvc=isvc, package=package, package_error=package_error, measurement=measurement,
                           capacity=capacity),
        rt.config,
    )

    if desired.isvc is not None:
        outcome = await rt.kube.apply(kube.ISVC, desired.isvc, isvc)
        if outcome != "unchanged":
            logger.info("InferenceService %s %s", name, outcome)
    if desired.prometheus_rule is not None:
        current_rule = await rt.kube.get(kube.PROMETHEUS_RULE, namespace, desired.prometheus_rule["metadata"]["name"])
        await rt.kube.apply(kube.PROMETHEUS_RULE, desired.prometheus_rule, current_rule)
    elif desired.delete_prometheus_rule and snapshot["status"].get("driftRule"):
        await rt.kube.delete(kube.PROMETHEUS_RULE, namespace, snapshot["status"]["driftRule"])

    # status.retraining belongs to the alert receiver, which patches it on its own: never written back here.
    new_status = desired.status.model_dump(mode="json", exclude={"retraining"})
    if desired.prometheus_rule is not None:
        new_status["driftRule"] = desired.prometheus_rule["metadata"]["name"]
    elif desired.delete_prometheus_rule:
        new_status["driftRule"] = None  # deleted: not to be deleted again at every resync
    version = meta.get("resourceVersion")
    # Compared as stored: a merge patch deletes null fields, so they are never read back.
    if any(snapshot["status"].get(k) != _without_nulls(v) for k, v in new_status.items()):
        written = await rt.kube.patch_status(namespace, name, new_status)
        version = (written.get("metadata") or {}).get("resourceVersion")
    for ev in desired.events:
        kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message)
    notify.publish(namespace, name, desired.status, desired.events)  # queued, never waited for
    observability.observe(namespace, name, desired.status)
    delay = desired.requeue_after if desired.requeue_after is not None else rt.config.resync_seconds
    return delay, version
