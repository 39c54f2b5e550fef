"""The retraining trigger: an Alertmanager webhook receiver that starts a model's training pipeline
when a drift alert fires, with deduplication, a per-model cooldown and a daily cap.

Run it as `python -m kanari.retrain.receiver --config receiver.yaml --token-file /var/run/secrets/token`
(or `kanari drift receiver ...`). Alertmanager posts to `/alerts` with `Authorization: Bearer <token>`
(webhook_configs[].http_config.authorization.credentials_file). Every delivery is answered with a
status code and a JSON body saying, per alert, what happened and why: 200 when every alert was decided,
502 when a launch failed and 503 when an alert must come again (store unreachable, retry backoff, the
global rate limit), so that Alertmanager, which retries only 5xx, never drops an alert we did not act on.

What it trusts: the bearer token says the caller is Alertmanager; an alert only names the ModelDeployment
that fired (labels `namespace`, `model`). What runs, with which parameters and how often comes from that
ModelDeployment's spec.monitoring.retrain (`modelDeployments: true`) or this config's `models`.

Example config:
    launcher:
      kfp: {host: http://ml-pipeline.kubeflow:8888, experiment: kanari-retraining}
      # or: command: {argv: [kanari, pipeline, run, --local, --model-name, "{model}", --reason, "{alertname}"]}
    store:
      kubernetes: true          # status.retraining of the ModelDeployment, plus Events
      # or: file: /var/lib/kanari/triggers.json
    modelDeployments: true      # policy from spec.monitoring.retrain of the ModelDeployment the alert names
    models:                     # policy for models without one there (or without the operator)
      ml-prod/fraud-scorer: {pipeline: fraud-training, cooldown: 24h, maxPerDay: 2}
    maxRunsPerHour: 20          # across all models
    launchTimeoutSeconds: 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kanari.api.conditions import now_iso
from kanari.api.v1alpha1 import RetrainSpec, format_validation_error
from kanari.retrain.history import (
    FileTriggerStore,
    KubernetesTriggerStore,
    ModelDeploymentPolicies,
    StoreUnavailable,
    TriggerStore,
)
from kanari.retrain.launchers import CommandLauncher, KfpLauncher, Launcher, LaunchError, LaunchRequest
from kanari.retrain.policy import (
    FAILED,
    STARTED,
    Alert,
    MalformedPayload,
    RetrainPolicy,
    TriggerDecision,
    decide,
    parse_payload,
    policy_for,
)
from kanari.retrain.settings import MAX_BODY, TOKEN_ENV, receiver_arguments
from kanari.webguard import BodyRejected, bearer_token, loads, read_body, ssl_context
from kanari.webguard import run_app as serve

log = logging.getLogger("kanari.retrain.receiver")

HOUR = timedelta(hours=1)
LAUNCH_WORKERS = 4
CORRUPT_REASON = "TriggerHistoryCorrupt"


# ---------------------------------------------------------------------------------------------- config
class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KfpConfig(_Config):
    host: str
    experiment: str = "kanari-retraining"
    namespace: str | None = None
    alertParameter: str = "drift_alert"


class CommandConfig(_Config):
    # A list only: a string would have to be split (or given to a shell), and alert labels end up in it.
    argv: list[str] = Field(min_length=1)
    logDir: str = "retrain-logs"


class LauncherConfig(_Config):
    kfp: KfpConfig | None = None
    command: CommandConfig | None = None

    @model_validator(mode="after")
    def _one(self) -> LauncherConfig:
        if (self.kfp is None) == (self.command is None):
            raise ValueError("exactly one of kfp and command must be set")
        return self


class StoreConfig(_Config):
    file: str | None = None
    kubernetes: bool = False

    @model_validator(mode="after")
    def _one(self) -> StoreConfig:
        if (self.file is None) == (not self.kubernetes):
            raise ValueError("exactly one of file and kubernetes must be set")
        return self


class ReceiverConfig(_Config):
    launcher: LauncherConfig
    store: StoreConfig
    modelDeployments: bool = False
    models: dict[str, RetrainSpec] = {}
    maxRunsPerHour: int = Field(default=20, ge=1, le=10_000)
    launchTimeoutSeconds: float = Field(default=60.0, gt=0, le=3600)

    @classmethod
    def from_file(cls, path: str | Path) -> ReceiverConfig:
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: unreadable: {exc}") from None
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise ValueError(f"{path}: {format_validation_error(exc)[0]}") from None


def build_launcher(cfg: LauncherConfig) -> Launcher:
    if cfg.kfp is not None:
        k = cfg.kfp
        return KfpLauncher(k.host, experiment=k.experiment, namespace=k.namespace, alert_parameter=k.alertParameter)
    assert cfg.command is not None
    return CommandLauncher(cfg.command.argv, cfg.command.logDir)


def _custom_api() -> Any:
    from kubernetes import client

    from kanari.kubeclient import connect

    return client.CustomObjectsApi(connect().api_client)


def build_store(cfg: StoreConfig, on_corrupt: Callable[[str], None] | None = None) -> TriggerStore:
    if cfg.file is not None:
        return FileTriggerStore(cfg.file, on_corrupt=on_corrupt)
    from kubernetes import client

    from kanari.kubeclient import connect

    api_client = connect().api_client
    return KubernetesTriggerStore(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client))


def pod_event(reason: str, message: str) -> None:
    """A Warning Event on the receiver's own Pod (POD_NAME/POD_NAMESPACE from the downward API), so
    `kubectl describe pod` and event-based alerting see what the log says. Best effort."""
    name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not name or not namespace:
        return
    try:
        from kubernetes import client

        from kanari.controller.kube import load_config

        load_config()
        now = now_iso(datetime.now(UTC))
        client.CoreV1Api().create_namespaced_event(namespace, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace},
            "reason": reason, "message": message, "type": "Warning",
            "source": {"component": "kanari-alert-receiver"}, "reportingComponent": "kanari-alert-receiver",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }, _request_timeout=(5, 10))
    except Exception as exc:  # noqa: BLE001 - the metric and /healthz carry it too
        log.warning("could not emit Event %s: %s", reason, type(exc).__name__)


# ----------------------------------------------------------------------------------------------- logic
class RetrainReceiver:
    def __init__(
        self,
        token: str,
        store: TriggerStore,
        launcher: Launcher,
        models: dict[str, RetrainSpec] | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        model_deployments: Callable[[str, str], RetrainPolicy | None] | None = None,
        max_runs_per_hour: int = 20,
        launch_timeout: float = 60.0,
    ):
        self._token = token.encode()
        self.store = store
        self.launcher = launcher
        self.models = models or {}
        self.model_deployments = model_deployments
        self.clock = clock
        self.max_runs_per_hour = max_runs_per_hour
        self.launch_timeout = launch_timeout
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "kanari_retrain_decisions", "Alerts the retraining receiver handled, by decision.", ["reason"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "kanari_retrain_deliveries", "Webhook deliveries, by HTTP status.", ["code"], registry=self.registry
        )
        self.corrupt = Counter(
            "kanari_retrain_history_corrupt", "Trigger histories found corrupt and moved aside.", registry=self.registry
        )
        self.recent_runs = Gauge(
            "kanari_retrain_runs_last_hour", "Runs launched in the last hour, all models.", registry=self.registry
        )
        Gauge("kanari_retrain_runs_per_hour_limit", "The global limit on runs per hour.",
              registry=self.registry).set(max_runs_per_hour)
        self.problems: list[str] = []
        # Launches run in their own small pool with a timeout, never under a lock: one hung pipeline
        # API call costs one worker, not every other delivery. The stores serialise claims themselves
        # (flock, resourceVersion), so no lock is needed around them either.
        self._launch_pool = concurrent.futures.ThreadPoolExecutor(LAUNCH_WORKERS, thread_name_prefix="launch")
        self._launches: collections.deque[datetime] = collections.deque()

    def history_corrupt(self, message: str) -> None:
        """The store's report that it moved a corrupt history aside (called from a store thread)."""
        self.corrupt.inc()
        self.problems.append(message)
        del self.problems[:-10]
        pod_event(CORRUPT_REASON, message)

    def authorized(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    async def deliver(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        status, doc = await self._deliver(authorization, body)
        self.deliveries.labels(str(status)).inc()
        return status, doc

    async def _deliver(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        if not self.authorized(authorization):
            return 401, {"error": "unauthorized", "detail": "missing or wrong bearer token"}
        try:
            doc = loads(body)
        except ValueError as exc:
            detail = "body is not JSON" if "JSON" in type(exc).__name__ or "Expecting" in str(exc) else str(exc)
            return 400, {"error": "malformed", "detail": detail}
        try:
            alerts = parse_payload(doc)
        except MalformedPayload as exc:
            return 400, {"error": "malformed", "detail": str(exc)}
        results: list[dict[str, Any]] = []
        status = 200
        for alert in alerts:
            try:
                result = await self._handle(alert)
            except StoreUnavailable as exc:
                log.error("trigger store unavailable: %s", exc)
                self.decisions.labels("store_unavailable").inc()
                # 5xx makes Alertmanager retry the delivery later.
                return 503, {"error": "store_unavailable", "detail": str(exc), "results": results}
            if result["action"] == "failed":
                status = max(status, 502)
            elif result.get("retryLater"):
                status = 503
            results.append(result)
        return status, {"received": len(alerts), "results": results}

    def _policy(self, alert: Alert) -> RetrainPolicy | None:
        """From the ModelDeployment the alert names, else this receiver's config (blocking: off the loop)."""
        if self.model_deployments is not None:
            found = self.model_deployments(alert.namespace, alert.model)
            if found is not None:
                return found
        return policy_for(alert, self.models)

    def _reserve(self, now: datetime) -> bool:
        while self._launches and now - self._launches[0] >= HOUR:
            self._launches.popleft()
        self.recent_runs.set(len(self._launches))
        if len(self._launches) >= self.max_runs_per_hour:
            return False
        self._launches.append(now)
        return True

    def _release(self, at: datetime) -> None:
        with contextlib.suppress(ValueError):
            self._launches.remove(at)
        self.recent_runs.set(len(self._launches))

    async def _handle(self, alert: Alert) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        out: dict[str, Any] = {
            "alertname": alert.name,
            "namespace": alert.namespace,
            "model": alert.model,
            "fingerprint": alert.fingerprint,
            "startsAt": alert.starts_at,
        }
        now = self.clock()
        # Alerts that cannot start anything whatever the policy are answered without any I/O.
        early = decide(alert, RetrainPolicy("", 0, 1, {}), [], now)
        if not early.trigger:
            return self._skipped(out, early)
        policy = await loop.run_in_executor(None, self._policy, alert)
        if policy is None:
            return self._skipped(out, decide(alert, None, [], now))
        if not self._reserve(now):
            return self._skipped(out, TriggerDecision(
                False, "rate_limited", f"{self.max_runs_per_hour} retraining runs in the last hour across all models",
            ))
        try:
            decision = await loop.run_in_executor(None, self.store.claim, alert, policy, now)
        except BaseException:
            self._release(now)
            raise
        if not decision.trigger:
            self._release(now)
            return self._skipped(out, decision)
        request = LaunchRequest(alert, policy)
        submitted = self._launch_pool.submit(self.launcher.launch, request)
        try:
            # shield: a timeout stops the waiting, not the launch (a thread cannot be stopped); see below.
            run = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(submitted)), self.launch_timeout)
        except TimeoutError:
            # The launch may still succeed (a slow pipeline API that creates the run after we stopped
            # waiting). Recording it as failed would let the redelivery launch a second run for the same alert;
            # so the claim stays Starting (a redelivery is a duplicate while it is young) and the launch's real
            # outcome is recorded when it ends. A launch that never ends leaves a Starting claim that expires
            # after policy.STARTING_TIMEOUT and is then retried.
            submitted.add_done_callback(lambda f: self._late_outcome(alert, policy, f))
            log.warning("retraining of %s/%s: the launcher did not answer within %gs; its outcome is recorded "
                        "when it does", alert.namespace, alert.model, self.launch_timeout)
            self.decisions.labels("launch_pending").inc()
            return {**out, "action": "skipped", "reason": "launch_pending", "retryLater": True,
                    "detail": f"the launch did not finish within {self.launch_timeout:g}s; its outcome is "
                              "recorded when it does"}
        except Exception as exc:  # noqa: BLE001 - whatever the launcher raised, the claim must not stay Starting
            await loop.run_in_executor(None, self._record_failure, alert, exc)
            # The caller gets the kind of failure, not the launcher's text (it can name hosts and paths);
            # the log, the history record and the Event carry it.
            return {**out, "action": "failed", "reason": "launch_failed",
                    "detail": f"the launch failed ({type(exc).__name__}); see the receiver's log and the "
                              "ModelDeployment's Events"}
        await loop.run_in_executor(None, self._record_started, alert, policy, run)
        return {**out, "action": "triggered", "reason": "trigger", "detail": decision.detail, "run": run}

    def _record_started(self, alert: Alert, policy: RetrainPolicy, run: str) -> None:
        message = (
            f"drift alert {alert.name} started pipeline {policy.pipeline} (run {run}) for "
            f"{alert.namespace}/{alert.model}"
        )
        log.info("%s", message)
        self.store.complete(alert, run, STARTED, message, self.clock())
        self.decisions.labels("trigger").inc()

    def _record_failure(self, alert: Alert, exc: BaseException) -> None:
        why = str(exc) if isinstance(exc, LaunchError) else f"{type(exc).__name__}: {exc}"
        message = f"retraining of {alert.namespace}/{alert.model} failed to start: {why}"
        log.error("%s", message)
        self.store.complete(alert, "", FAILED, message, self.clock())
        self.decisions.labels("launch_failed").inc()

    def _late_outcome(self, alert: Alert, policy: RetrainPolicy, done: concurrent.futures.Future[str]) -> None:
        """A launch that outlived launch_timeout has ended (called in its worker thread)."""
        try:
            exc = done.exception()
            if exc is None:
                self._record_started(alert, policy, done.result())
            else:
                self._record_failure(alert, exc)
        except Exception as err:  # noqa: BLE001 - a thread callback has no caller; the Starting claim then expires
            log.error("retraining of %s/%s: recording the late launch outcome failed: %s",
                      alert.namespace, alert.model, type(err).__name__)

    def _skipped(self, out: dict[str, Any], decision: TriggerDecision) -> dict[str, Any]:
        self.decisions.labels(decision.reason).inc()
        log.info("alert %s for %s/%s: %s (%s)", out["alertname"], out["namespace"], out["model"], decision.reason, decision.detail)
        result = {**out, "action": "skipped", "reason": decision.reason, "detail": decision.detail}
        if decision.retry_later:
            result["retryLater"] = True
        return result


# ------------------------------------------------------------------------------------------------ HTTP
def build_app(receiver: RetrainReceiver, max_body: int = MAX_BODY, body_timeout: float = 30.0) -> web.Application:
    async def alerts(request: web.Request) -> web.Response:
        try:
            body = await read_body(request, max_body, body_timeout)
        except BodyRejected as exc:
            receiver.deliveries.labels(str(exc.status)).inc()
            return web.json_response({"error": exc.outcome, "detail": exc.detail}, status=exc.status)
        status, doc = await receiver.deliver(request.headers.get("Authorization"), body)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return web.json_response(doc, status=status, headers=headers)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(receiver.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        # Liveness stays 200 (a restart repairs nothing); what went wrong is in the body and the metrics.
        state = "degraded" if receiver.problems else "ok"
        return web.json_response({"status": state, "problems": receiver.problems})

    app = web.Application()
    app.router.add_post("/alerts", alerts)
    app.router.add_post("/", alerts)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def run(args: argparse.Namespace) -> int:
    holder: list[RetrainReceiver] = []

    def on_corrupt(message: str) -> None:
        if holder:
            holder[0].history_corrupt(message)
        else:  # found at start, before the receiver exists: remembered below
            early.append(message)

    early: list[str] = []
    try:
        config = ReceiverConfig.from_file(args.config)
        token = bearer_token("--token-file", args.token_file, TOKEN_ENV, required="the receiver never runs open")
        tls = ssl_context(args.tls_cert_file, args.tls_key_file)
        store = build_store(config.store, on_corrupt)
        launcher = build_launcher(config.launcher)
    except ValueError as exc:
        print(f"kanari drift receiver: {exc}", file=sys.stderr)
        return 2
    from kanari import logs

    logs.configure()
    receiver = RetrainReceiver(
        token, store, launcher, config.models,
        model_deployments=ModelDeploymentPolicies(_custom_api) if config.modelDeployments else None,
        max_runs_per_hour=config.maxRunsPerHour, launch_timeout=config.launchTimeoutSeconds,
    )
    holder.append(receiver)
    for message in early:
        receiver.history_corrupt(message)
    app = build_app(receiver, args.max_body_bytes, args.body_timeout)
    serve(app, args.host, args.port, header_timeout=args.header_timeout, tls=tls)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kanari.retrain.receiver", description=__doc__.split("\n\n")[0])
    receiver_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
