"""How a retraining run is started: a Kubeflow Pipelines run on a cluster, or a local command.

A launcher returns a run id as soon as the run is submitted; it does not wait for training.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import kfp

from kanari.retrain import training_run
from kanari.retrain.policy import Alert, RetrainPolicy

ALERT_ENV = "KANARI_DRIFT_ALERT"
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"}


class LaunchError(RuntimeError):
    """The run could not be submitted; the message says why."""


@dataclass(frozen=True)
class LaunchRequest:
    alert: Alert
    policy: RetrainPolicy

    def fields(self) -> dict[str, str]:
        """Values a command template may use: {model} {namespace} {alertname} {pipeline} {severity}
        {fingerprint} {startsAt}."""
        return {
            "model": self.alert.model,
            "namespace": self.alert.namespace,
            "alertname": self.alert.name,
            "pipeline": self.policy.pipeline,
            "severity": self.alert.labels.get("severity", ""),
            "fingerprint": self.alert.fingerprint,
            "startsAt": self.alert.starts_at,
        }


class Launcher(Protocol):
    def launch(self, request: LaunchRequest) -> str:
        """Submit the run and return its id; LaunchError if it could not be submitted."""


class CommandLauncher:
    """Runs a configured command in the background, e.g.
    `kanari pipeline run --local --model-name {model} --reason {alertname}`.

    Each argument is formatted on its own and no shell is involved, so alert labels cannot inject
    commands. The command is an argv list only: a string would be split or handed to a shell, and
    `sh -c '... {model}'` puts a label value into shell code. The alert itself is in the environment
    variable KANARI_DRIFT_ALERT (JSON).
    """

    def __init__(self, command: Sequence[str], log_dir: str | os.PathLike[str]):
        if isinstance(command, str) or not all(isinstance(a, str) for a in command):
            raise ValueError("command: an argv list of strings, not a command line")
        self.command = list(command)
        if not self.command:
            raise ValueError("command: empty")
        if Path(self.command[0]).name in SHELLS and "-c" in self.command[1:]:
            raise ValueError("command: a shell command line (`sh -c ...`) would run alert labels as shell code; "
                             "give the program and its arguments")
        self.log_dir = Path(log_dir)
        self._children: list[subprocess.Popen[bytes]] = []

    def launch(self, request: LaunchRequest) -> str:
        fields = request.fields()
        try:
            argv = [arg.format(**fields) for arg in self.command]
        except (KeyError, IndexError, ValueError) as exc:
            raise LaunchError(f"command template {self.command!r}: {exc!r} is not a known field") from None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{request.alert.model}-{request.alert.fingerprint}")
        log_path = self.log_dir / f"retrain-{safe}.log"
        env = {
            **os.environ,
            ALERT_ENV: json.dumps(request.alert.summary()),
            **{f"KANARI_PARAM_{k.upper()}": v for k, v in request.policy.parameters.items()},
        }
        # Finished children are reaped here, so background runs leave no zombies behind.
        self._children = [p for p in self._children if p.poll() is None]
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument or the environment
            raise LaunchError(f"cannot start {argv[0]}: {exc}") from None
        self._children.append(proc)
        return f"pid-{proc.pid}"


def read_deployment(namespace: str, name: str) -> dict[str, Any]:
    """The ModelDeployment the alert is about, through the cluster's API (in-cluster config or kubeconfig)."""
    from kubernetes import client

    from kanari.api import v1alpha1
    from kanari.controller.kube import load_config

    load_config()
    obj = client.CustomObjectsApi().get_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name)
    return dict(obj)


class KfpLauncher:
    """Starts the newest version of a named pipeline through kfp.Client.

    The run's parameters are derived from the ModelDeployment the alert is about and the policy's
    parameters (kanari.retrain.training_run): typed, each one a parameter the pipeline declares, with
    the alert itself as the structured `drift_alert` parameter the pipeline records in the model's
    lineage. A parameter that cannot be derived fails the launch, before anything is submitted.
    """

    def __init__(
        self,
        host: str,
        experiment: str = "kanari-retraining",
        namespace: str | None = None,
        alert_parameter: str = "drift_alert",
        client_factory: Callable[..., Any] = kfp.Client,
        deployments: Callable[[str, str], dict[str, Any]] = read_deployment,
        defaults: dict[str, str] | None = None,
        service_account: str = "kanari-pipeline",
    ):
        if alert_parameter != "drift_alert":
            # The training pipeline declares `drift_alert`; any other name would be refused by KFP.
            raise ValueError(f"alertParameter: the training pipeline's parameter is drift_alert, not {alert_parameter!r}")
        self.host = host
        self.experiment = experiment
        self.namespace = namespace
        self._client_factory = client_factory
        self._deployments = deployments
        self.defaults = dict(defaults or {})
        # KFP v2 sets the service account per run: the one IRSA gives the pipeline's IAM role.
        self.service_account = service_account
        self._client: Any = None

    def _kfp(self) -> Any:
        if self._client is None:
            self._client = self._client_factory(host=self.host, namespace=self.namespace or "kubeflow")
        return self._client

    def parameters(self, request: LaunchRequest) -> dict[str, Any]:
        """The run's arguments; LaunchError names the field to fix when one cannot be derived."""
        alert = request.alert
        try:
            deployment = self._deployments(alert.namespace, alert.model)
        except Exception as exc:  # the Kubernetes client raises ApiException, urllib3 and config errors alike
            raise LaunchError(f"cannot read ModelDeployment {alert.namespace}/{alert.model}: "
                              f"{type(exc).__name__}: {getattr(exc, 'reason', '') or exc}") from None
        try:
            params = training_run.derive(deployment, training_run.DriftAlert.model_validate(alert.summary()),
                                         request.policy.parameters, self.defaults)
        except (training_run.ParameterError, ValueError) as exc:
            raise LaunchError(f"ModelDeployment {alert.namespace}/{alert.model}: {exc}") from None
        return params.arguments()

    def launch(self, request: LaunchRequest) -> str:
        pipeline = request.policy.pipeline
        params = self.parameters(request)
        try:
            client = self._kfp()
            pipeline_id = client.get_pipeline_id(pipeline)
            if pipeline_id is None:
                raise LaunchError(f"pipeline {pipeline!r} is not registered in Kubeflow Pipelines at {self.host}")
            versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            if not versions.pipeline_versions:
                raise LaunchError(f"pipeline {pipeline!r} has no versions")
            version_id = versions.pipeline_versions[0].pipeline_version_id
            experiment = client.create_experiment(self.experiment, namespace=self.namespace)
            run = client.run_pipeline(
                experiment.experiment_id,
                f"retrain-{request.alert.model}-{request.alert.fingerprint[:8]}",
                params=params,
                pipeline_id=pipeline_id,
                version_id=version_id,
                service_account=self.service_account,
            )
        except LaunchError:
            raise
        except Exception as exc:  # kfp raises ApiException, urllib3 and ValueError alike
            raise LaunchError(f"Kubeflow Pipelines at {self.host}: {type(exc).__name__}: {exc}") from None
        return str(run.run_id)
