"""The retraining trigger: an Alertmanager webhook receiver that starts a model's training pipeline
when a drift alert fires, with deduplication, a per-model cooldown and a daily cap.

Run it as `python -m kanari.retrain.receiver --config receiver.yaml --token-file /var/run/secrets/token`
(or `kanari drift receiver ...`). Alertmanager posts to `/alerts` with `Authorization: Bearer <token>`
(webhook_configs[].http_config.authorization.credentials_file). Every delivery is answered with a
status code and a JSON body saying, per alert, what happened and why.

Example config:
    launcher:
      kfp: {host: http://ml-pipeline.kubeflow:8888, experiment: kanari-retraining}
      # or: command: {argv: [kanari, pipeline, run, --local, --model-name, "{model}", --reason, "{alertname}"]}
    store:
      kubernetes: true          # status.retraining of the ModelDeployment, plus Events
      # or: file: /var/lib/kanari/triggers.json
    models:                     # fallback when alerts carry no retrain_* annotations
      ml-prod/fraud-scorer: {pipeline: fraud-training, cooldown: 24h, maxPerDay: 2}
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from kanari.api.v1alpha1 import RetrainSpec, format_validation_error
from kanari.retrain.history import FileTriggerStore, KubernetesTriggerStore, StoreUnavailable, TriggerStore
from kanari.retrain.launchers import CommandLauncher, KfpLauncher, Launcher, LaunchError, LaunchRequest
from kanari.retrain.policy import (
    FAILED,
    RETRAIN_LABEL,
    STARTED,
    Alert,
    MalformedPayload,
    TriggerDecision,
    parse_payload,
    policy_for,
)
from kanari.retrain.settings import TOKEN_ENV, receiver_arguments

log = logging.getLogger("kanari.retrain.receiver")

MAX_BODY = 1024 * 1024


# ---------------------------------------------------------------------------------------------- config
class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KfpConfig(_Config):
    host: str
    experiment: str = "kanari-retraining"
    namespace: str | None = None
    alertParameter: str = "drift_alert"


class CommandConfig(_Config):
    argv: list[str] | str
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
    models: dict[str, RetrainSpec] = {}

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


def build_store(cfg: StoreConfig) -> TriggerStore:
    if cfg.file is not None:
        return FileTriggerStore(cfg.file)
    from kubernetes import client

    from kanari.kubeclient import connect

    api_client = connect().api_client
    return KubernetesTriggerStore(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client))


def read_token(token_file: str | None) -> str:
    """The bearer token from a file (a mounted Secret) or the KANARI_RECEIVER_TOKEN variable."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"--token-file {token_file}: unreadable: {exc.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(f"no bearer token: pass --token-file or set {TOKEN_ENV}; the receiver never runs open")
    return token


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
    ):
        self._token = token.encode()
        self.store = store
        self.launcher = launcher
        self.models = models or {}
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "kanari_retrain_decisions", "Alerts the retraining receiver handled, by decision.", ["reason"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "kanari_retrain_deliveries", "Webhook deliveries, by HTTP status.", ["code"], registry=self.registry
        )
        # Claims from concurrent deliveries run one at a time in this process; the stores also
        # guard against other processes (flock, resourceVersion).
        self._lock = asyncio.Lock()

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
            alerts = parse_payload(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 400, {"error": "malformed", "detail": "body is not JSON"}
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
                status = 502
            results.append(result)
        return status, {"received": len(alerts), "results": results}

    async def _handle(self, alert: Alert) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        out: dict[str, Any] = {
            "alertname": alert.name,
            "namespace": alert.namespace,
            "model": alert.model,
            "fingerprint": alert.fingerprint,
            "startsAt": alert.starts_at,
        }
        try:
            policy = policy_for(alert, self.models)
        except ValueError as exc:
            if alert.status == "firing" and alert.labels.get(RETRAIN_LABEL) == "true":
                return self._skipped(out, TriggerDecision(False, "bad_policy", str(exc)))
            policy = None
        async with self._lock:
            now = self.clock()
            decision = await loop.run_in_executor(None, self.store.claim, alert, policy, now)
            if not decision.trigger:
                return self._skipped(out, decision)
            assert policy is not None
            request = LaunchRequest(alert, policy)
            try:
                run = await loop.run_in_executor(None, self.launcher.launch, request)
            except LaunchError as exc:
                message = f"retraining of {alert.namespace}/{alert.model} failed to start: {exc}"
                log.error("%s", message)
                await loop.run_in_executor(None, self.store.complete, alert, "", FAILED, message, self.clock())
                self.decisions.labels("launch_failed").inc()
                return {**out, "action": "failed", "reason": "launch_failed", "detail": str(exc)}
            message = (
                f"drift alert {alert.name} started pipeline {policy.pipeline} (run {run}) for "
                f"{alert.namespace}/{alert.model}"
            )
            log.info("%s", message)
            await loop.run_in_executor(None, self.store.complete, alert, run, STARTED, message, self.clock())
        self.decisions.labels("trigger").inc()
        return {**out, "action": "triggered", "reason": "trigger", "detail": decision.detail, "run": run}

    def _skipped(self, out: dict[str, Any], decision: TriggerDecision) -> dict[str, Any]:
        self.decisions.labels(decision.reason).inc()
        log.info("alert %s for %s/%s: %s (%s)", out["alertname"], out["namespace"], out["model"], decision.reason, decision.detail)
        return {**out, "action": "skipped", "reason": decision.reason, "detail": decision.detail}


# ------------------------------------------------------------------------------------------------ HTTP
def build_app(receiver: RetrainReceiver) -> web.Application:
    async def alerts(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.json_response({"error": "too_large", "detail": f"body over {MAX_BODY} bytes"}, status=413)
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.json_response({"error": "too_large", "detail": f"body over {MAX_BODY} bytes"}, status=413)
        status, doc = await receiver.deliver(request.headers.get("Authorization"), body)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return web.json_response(doc, status=status, headers=headers)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(receiver.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=MAX_BODY + 1)
    app.router.add_post("/alerts", alerts)
    app.router.add_post("/", alerts)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def run(args: argparse.Namespace) -> int:
    try:
        config = ReceiverConfig.from_file(args.config)
        token = read_token(args.token_file)
        store = build_store(config.store)
        launcher = build_launcher(config.launcher)
    except ValueError as exc:
        print(f"kanari drift receiver: {exc}", file=sys.stderr)
        return 2
    from kanari import logs

    logs.configure()
    receiver = RetrainReceiver(token, store, launcher, config.models)
    web.run_app(build_app(receiver), host=args.host, port=args.port, print=None, access_log=None)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kanari.retrain.receiver", description=__doc__.split("\n\n")[0])
    receiver_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
