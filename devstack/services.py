"""The embedded defaults as processes on loopback: what `kanari demo` starts, in order, and how they are wired.

  aws            moto server standing in for SageMaker and S3 (as a user would run LocalStack)
  prometheus     real Prometheus: scrapes the router, drift monitor, receiver and operator; loads drift rules
  alertmanager   real Alertmanager: routes kanari_retrain="true" alerts to the receiver's webhook
  cluster        stand-ins for the cluster: Kubernetes API emulator, KServe (revisions = model-server
                 processes), Knative/Istio routing (the router), prometheus-operator (rule files)
  drift-monitor  kanari.monitor.server (the production service)
  kfp-api        Kubeflow Pipelines API stand-in (devstack.kfp_api): runs the pipeline through kfp.local
  receiver       kanari.retrain.receiver (the production service) with the KFP launcher, as on a cluster
  operator       kanari.controller (the production operator, kopf) against the API emulator

Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kanari.scrape import DEFAULT_CONTROLLER_JOB, DEFAULT_MONITOR_JOB

from devstack.stack import (
    MissingBinary,
    ScrapeTarget,
    find_binary,
    free_port,
    start_alertmanager,
    start_prometheus,
)
from devstack.supervisor import Supervisor, http_ok

AWS_REGION = "us-east-1"


@dataclass(frozen=True)
class StackSettings:
    namespace: str
    bucket: str
    model_package_group: str
    drift_window: int
    drift_min_samples: int
    drift_evaluate_interval: float
    drift_idle_timeout: float
    idle_grace: float
    resync_seconds: float
    # Where the KFP stand-in's runs keep their kfp.local outputs and logs.
    pipeline_workdir: Path


@dataclass
class Endpoints:
    aws: str = ""
    prometheus: str = ""
    alertmanager: str = ""
    kube_api: str = ""
    kubeconfig: Path = Path()
    router: str = ""
    drift_monitor: str = ""
    receiver: str = ""
    kfp_api: str = ""
    operator_health: str = ""
    operator_metrics: str = ""
    labels_token_file: Path = Path()  # the drift monitor's label endpoint token (POST /v1/labels/<ns>/<name>)

    def describe(self) -> list[tuple[str, str]]:
        return [
            ("Prometheus", self.prometheus),
            ("Alertmanager", self.alertmanager),
            ("Kubernetes API (emulator)", f"{self.kube_api}  (KUBECONFIG={self.kubeconfig})"),
            ("Inference router (Knative/Istio stand-in)", f"{self.router}/serving/<namespace>/<name>/v1/models/<name>:predict"),
            ("Drift monitor", f"{self.drift_monitor}/metrics"),
            ("Retraining receiver", f"{self.receiver}/metrics"),
            ("Operator metrics", f"{self.operator_metrics}/metrics"),
            ("AWS (moto: SageMaker, S3)", self.aws),
        ]


def preflight() -> list[str]:
    """What is missing for the demo to run at all; empty when it can start."""
    problems = []
    for names in (("prometheus",), ("prometheus-alertmanager", "alertmanager")):
        try:
            find_binary(*names)
        except MissingBinary as exc:
            problems.append(str(exc))
    for module, package in (("kserve", "kserve"), ("torch", "torch"), ("flask", "moto[server]"), ("kopf", "kopf")):
        if importlib.util.find_spec(module) is None:
            problems.append(f"the Python package {package} is not installed (`make bootstrap` installs it)")
    return problems


@dataclass
class EmbeddedStack:
    out: Path
    settings: StackSettings
    say: Callable[[str], None]
    supervisor: Supervisor = field(init=False)
    endpoints: Endpoints = field(default_factory=Endpoints)
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        self.state = self.out / "state"
        self.logs = self.out / "logs"
        self.supervisor = Supervisor(
            logdir=self.logs, registry=self.out / "processes.json", extra_pid_dirs=[self.state / "cluster" / "pids"]
        )

    # --------------------------------------------------------------------------------- environment
    def aws_env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoints.aws,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": AWS_REGION,
            "AWS_REGION": AWS_REGION,
        }

    def child_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "KANARI_"))}
        env.update(self.aws_env())
        env["PYTHONUNBUFFERED"] = "1"
        if self.endpoints.kubeconfig != Path():
            env["KUBECONFIG"] = str(self.endpoints.kubeconfig)
        env.update(extra)
        return env

    # ---------------------------------------------------------------------------------------- start
    def _step(self, what: str, start: Callable[[], str]) -> None:
        import time

        t0 = time.monotonic()
        url = start()
        self.say(f"  {what:<46} {url}  ({time.monotonic() - t0:.1f}s)")

    def start(self) -> Endpoints:
        self.state.mkdir(parents=True, exist_ok=True)
        ep = self.endpoints
        self._step("AWS stand-in (moto server: SageMaker, S3)", self._start_aws)
        self._step("drift monitor (kanari.monitor.server)", self._start_drift_monitor)
        self._step("Kubeflow Pipelines API stand-in (devstack.kfp_api)", self._start_kfp_api)
        self._step("retraining receiver (kanari.retrain.receiver)", self._start_receiver)
        self._step("Alertmanager (real)", self._start_alertmanager)
        ep.operator_metrics = f"http://127.0.0.1:{free_port()}"
        router_port = free_port()
        ep.router = f"http://127.0.0.1:{router_port}"
        self._step("Prometheus (real)", self._start_prometheus)
        self._step("cluster stand-in (API emulator, KServe, router)", lambda: self._start_cluster(router_port))
        self._step("operator (kanari.controller, kopf)", self._start_operator)
        return ep

    def _start_aws(self) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.supervisor.start(
            "aws", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=self.child_env(), url=url, ready=http_ok(f"{url}/moto-api/"), ports=[port],
        )
        self.endpoints.aws = url
        return url

    def _start_drift_monitor(self) -> str:
        s = self.settings
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "kanari.monitor.server", "--host", "127.0.0.1", "--port", str(port),
                "--window-size", str(s.drift_window), "--min-samples", str(s.drift_min_samples),
                "--evaluate-interval", str(s.drift_evaluate_interval),
                # A revision that no longer gets traffic stops counting soon after (its window is dropped).
                "--idle-timeout", str(s.drift_idle_timeout),
                # Events are taken only for monitored ModelDeployments; the cluster starts later, so the
                # monitor retries the API (KUBECONFIG is where the cluster will write it).
                "--kubernetes"]
        # Delayed ground truth: labels are posted with a bearer token, as a labelling service would in a cluster.
        token = self.state / "labels-token"
        if not token.exists():
            token.touch(mode=0o600)
            token.write_text(secrets.token_urlsafe(32))
        argv += ["--labels-token-file", str(token)]
        # As the chart's driftMonitor.persistence: predictions waiting for their labels survive a monitor restart.
        joins = self.state / "drift-monitor"
        joins.mkdir(mode=0o700, exist_ok=True)
        argv += ["--state-dir", str(joins)]
        self.endpoints.labels_token_file = token
        env = self.child_env(KUBECONFIG=str(self.state / "cluster" / "kubeconfig"))
        self.supervisor.start("drift-monitor", argv, env=env, url=url, ready=http_ok(f"{url}/metrics"), ports=[port])
        self.endpoints.drift_monitor = url
        return url

    def _start_kfp_api(self) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "devstack.kfp_api", "serve", "--port", str(port), "--workdir",
                str(self.settings.pipeline_workdir), "--log-dir", str(self.logs / "retraining")]
        # Its runs apply the new ModelDeployment through the cluster's kubeconfig (written when the cluster starts).
        env = self.child_env(KUBECONFIG=str(self.state / "cluster" / "kubeconfig"))
        self.supervisor.start("kfp-api", argv, env=env, url=url, ready=http_ok(f"{url}/apis/v2beta1/healthz"),
                              ports=[port])
        self.endpoints.kfp_api = url
        return url

    def receiver_config(self) -> dict[str, Any]:
        # The cluster's path: the KFP launcher, which derives the run's parameters from the ModelDeployment.
        return {
            "launcher": {"kfp": {"host": self.endpoints.kfp_api}},
            "store": {"file": str(self.state / "retrain-triggers.json")},
            # The retraining policy is spec.monitoring.retrain of the ModelDeployment the alert names.
            "modelDeployments": True,
        }

    def _start_receiver(self) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = self.state / "receiver.yaml"
        config.write_text(yaml.safe_dump(self.receiver_config(), sort_keys=False))
        token = self.state / "receiver-token"
        token.write_text(self.token)
        token.chmod(0o600)
        argv = [sys.executable, "-m", "kanari.retrain.receiver", "--host", "127.0.0.1", "--port", str(port),
                "--config", str(config), "--token-file", str(token)]
        # KUBECONFIG comes later (the cluster starts after); the retraining command applies through it.
        env = self.child_env(KUBECONFIG=str(self.state / "cluster" / "kubeconfig"))
        self.supervisor.start("receiver", argv, env=env, url=url, ready=http_ok(f"{url}/healthz"), ports=[port])
        self.endpoints.receiver = url
        return url

    def alertmanager_config(self) -> dict[str, Any]:
        return {
            "route": {
                "receiver": "default",
                "group_by": ["alertname", "namespace", "model"],
                "group_wait": "1s",
                "group_interval": "5s",
                "repeat_interval": "1h",
                "routes": [{"matchers": ['kanari_retrain="true"'], "receiver": "kanari-retrain"}],
            },
            "receivers": [
                {"name": "default"},
                {
                    "name": "kanari-retrain",
                    "webhook_configs": [{
                        "url": f"{self.endpoints.receiver}/alerts",
                        "send_resolved": False,
                        "http_config": {"authorization": {"type": "Bearer",
                                                          "credentials_file": str(self.state / "receiver-token")}},
                    }],
                },
            ],
        }

    def _start_alertmanager(self) -> str:
        am = start_alertmanager(self.state / "alertmanager", self.alertmanager_config())
        self.supervisor.adopt(am)
        self.endpoints.alertmanager = am.url
        return am.url

    def rules_dir(self) -> Path:
        return self.state / "prometheus" / "rules"

    def _start_prometheus(self) -> str:
        ep = self.endpoints
        self.rules_dir().mkdir(parents=True, exist_ok=True)

        def hostport(url: str) -> str:
            return url.removeprefix("http://")

        targets = [
            ScrapeTarget("knative-queue-proxy-standin", [hostport(ep.router)]),
            # The operator's default jobs (kanari.scrape): its queries read Kanari's series from these jobs only.
            ScrapeTarget(DEFAULT_MONITOR_JOB, [hostport(ep.drift_monitor)]),
            ScrapeTarget("kanari-alert-receiver", [hostport(ep.receiver)]),
            ScrapeTarget(DEFAULT_CONTROLLER_JOB, [hostport(ep.operator_metrics)]),
        ]
        prom = start_prometheus(
            self.state / "prometheus", targets, rule_files=[self.rules_dir() / "*.yaml"], alertmanager=ep.alertmanager,
        )
        self.supervisor.adopt(prom)
        ep.prometheus = prom.url
        return prom.url

    def _start_cluster(self, router_port: int) -> str:
        ep = self.endpoints
        port = free_port()
        workdir = self.state / "cluster"
        argv = [sys.executable, "-m", "devstack.cluster", "--port", str(port), "--router-port", str(router_port),
                "--workdir", str(workdir), "--namespace", self.settings.namespace,
                "--prometheus-url", ep.prometheus, "--rules-dir", str(self.rules_dir()),
                "--idle-grace", str(self.settings.idle_grace)]
        url = f"http://127.0.0.1:{port}"
        self.supervisor.start(
            "cluster", argv, env=self.child_env(), url=url, ports=[port, router_port],
            ready=lambda: http_ok(f"{url}/version")() and http_ok(f"{ep.router}/healthz")(),
        )
        ep.kube_api = url
        ep.kubeconfig = workdir / "kubeconfig"
        return url

    def operator_env(self) -> dict[str, str]:
        ep = self.endpoints
        return self.child_env(
            KANARI_NAMESPACES=self.settings.namespace,
            KANARI_DRIFT_MONITOR_URL=ep.drift_monitor,
            KANARI_PROMETHEUS_URL=ep.prometheus,
            KANARI_RESYNC_SECONDS=str(self.settings.resync_seconds),
            KANARI_METRICS_PORT=ep.operator_metrics.rsplit(":", 1)[1],
            KANARI_LIVENESS_ENDPOINT=ep.operator_health + "/healthz",
        )

    def _start_operator(self) -> str:
        ep = self.endpoints
        ep.operator_health = f"http://127.0.0.1:{free_port()}"
        ports = [int(ep.operator_health.rsplit(":", 1)[1]), int(ep.operator_metrics.rsplit(":", 1)[1])]
        self.supervisor.start(
            "operator", [sys.executable, "-m", "kanari.controller"], env=self.operator_env(),
            url=ep.operator_health, ready=http_ok(f"{ep.operator_health}/healthz"), ports=ports, timeout=90,
        )
        return ep.operator_health

    def restart(self, name: str) -> None:
        self.supervisor.restart(name, timeout=90)

    def stop(self) -> list[str]:
        return self.supervisor.stop_all()

