"""Drift -> Kubeflow Pipelines: the KFP launcher starts the training pipeline with parameters the pipeline
declares, typed, derived from the ModelDeployment the alert is about, the alert itself included as a
structured parameter; what cannot be derived fails the launch before anything is submitted, naming where
to set it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.retrain.launchers import KfpLauncher, LaunchError, LaunchRequest
from kanari.retrain.policy import Alert, RetrainPolicy
from kanari.retrain.training_run import TrainingRunParameters
from kfp import compiler

from kfp_pipelines.pipeline import training_pipeline

ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud-models/3"
ROLE = "arn:aws:iam::123456789012:role/kanari-sagemaker-execution"
DEPLOYMENT = {
    "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "fraud", "namespace": "ml-prod"},
    "spec": {"model": {"format": "pytorch", "modelPackageArn": ARN},
             "monitoring": {"baselineUri": "s3://ml-artifacts/kanari/fraud-models/training/job/output/baseline",
                            "retrain": {"pipeline": "kanari-training"}}},
    "status": {"stableModel": {"revision": "r1", "modelPackageArn": ARN},
               "lineage": {"modelPackageArn": ARN, "gitSha": "6aacda1d590f", "datasetUri": "s3://ml-data/fraud/latest.csv"}},
}


def alert() -> Alert:
    labels = {"alertname": "KanariFeatureDriftCritical", "namespace": "ml-prod", "model": "fraud",
              "severity": "critical", "kanari_retrain": "true", "feature": "amount"}
    return Alert("firing", labels, {"summary": "PSI 0.31"}, "2026-11-27T11:00:00.123456789Z", "a1b2c3d4e5f6")


def policy(**parameters: str) -> RetrainPolicy:
    return RetrainPolicy("kanari-training", 0, 1, {"role_arn": ROLE, **parameters})


def launcher(deployment: dict[str, Any] = DEPLOYMENT, host: str = "http://127.0.0.1:9") -> KfpLauncher:
    return KfpLauncher(host, deployments=lambda ns, name: deployment)


def declared_parameters() -> dict[str, dict[str, Any]]:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        compiler.Compiler().compile(training_pipeline, f"{tmp}/p.yaml")
        ir = yaml.safe_load(Path(f"{tmp}/p.yaml").read_text().split("\n---\n")[0])
    return dict(ir["root"]["inputDefinitions"]["parameters"])


KFP_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": (float, int), "BOOLEAN": bool,
             "STRUCT": dict, "LIST": list}


def assert_declared_and_typed(params: dict[str, Any], declared: dict[str, dict[str, Any]]) -> None:
    for name, value in params.items():
        assert name in declared, f"the launcher sends {name!r}, which the pipeline does not declare"
        kind = KFP_TYPES[declared[name]["parameterType"]]
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), (name, value)
    required = {k for k, p in declared.items() if not p.get("isOptional")}
    assert required <= set(params), required - set(params)


def test_every_parameter_the_launcher_sends_is_declared_by_the_pipeline_and_typed() -> None:
    """Regression: the launcher sent `drift_alert`, which the pipeline did not declare (KFP refuses the run),
    and bucket, group, role, git SHA and model name came only from string policy parameters."""
    params = launcher().parameters(LaunchRequest(alert(), policy(use_spot="true", max_wait_seconds="7200",
                                                                 checkpoint_s3_uri="s3://ml-artifacts/ckpt/",
                                                                 hyperparameters='{"epochs": 20}')))
    assert_declared_and_typed(params, declared_parameters())
    assert params["model_name"] == "fraud" and params["namespace"] == "ml-prod"
    assert params["model_package_group"] == "fraud-models"  # from the served package's ARN
    assert params["bucket"] == "ml-artifacts"  # from the drift baseline's location
    assert params["git_sha"] == "6aacda1d590f" and params["dataset_uri"] == "s3://ml-data/fraud/latest.csv"
    assert params["use_spot"] is True and params["max_wait_seconds"] == 7200 and params["hyperparameters"] == {"epochs": 20}
    assert params["drift_alert"]["alertname"] == "KanariFeatureDriftCritical"
    assert params["drift_alert"]["fingerprint"] == "a1b2c3d4e5f6" and params["drift_alert"]["labels"]["feature"] == "amount"
    assert params["reason"] == "drift alert KanariFeatureDriftCritical amount"


@pytest.mark.parametrize(
    ("deployment", "parameters", "field", "fragment"),
    [
        (DEPLOYMENT, {"role_arn": ""}, "role_arn", "spec.monitoring.retrain.parameters.role_arn"),
        ({**DEPLOYMENT, "status": {}}, {}, "git_sha", "status.lineage.gitSha"),
        ({**DEPLOYMENT, "spec": {"model": {"format": "pytorch", "storageUri": "s3://b/m"}}, "status": {}},
         {"git_sha": "abc", "bucket": "ml-artifacts"}, "model_package_group", "spec.model.modelPackageArn"),
        (DEPLOYMENT, {"epochs": "5"}, "spec.monitoring.retrain.parameters.epochs", "not a training pipeline parameter"),
        (DEPLOYMENT, {"use_spot": "maybe"}, "spec.monitoring.retrain.parameters.use_spot", "not a JSON value"),
        (DEPLOYMENT, {"gate_tolerance": "3"}, "spec.monitoring.retrain.parameters.gate_tolerance", "less than 1"),
        (DEPLOYMENT, {"drift_alert": "{}"}, "spec.monitoring.retrain.parameters.drift_alert", "not a training"),
    ],
)
def test_what_cannot_be_derived_fails_the_launch_naming_the_field(deployment: dict[str, Any], parameters: dict[str, str],
                                                                  field: str, fragment: str) -> None:
    with pytest.raises(LaunchError) as err:
        launcher(deployment).launch(LaunchRequest(alert(), policy(**parameters)))
    assert field in str(err.value) and fragment in str(err.value)
    assert "Kubeflow Pipelines at" not in str(err.value)  # nothing was submitted


def test_an_unreadable_model_deployment_fails_the_launch() -> None:
    def gone(ns: str, name: str) -> dict[str, Any]:
        raise RuntimeError("404 Not Found")

    with pytest.raises(LaunchError, match="cannot read ModelDeployment ml-prod/fraud: RuntimeError: 404"):
        KfpLauncher("http://127.0.0.1:9", deployments=gone).launch(LaunchRequest(alert(), policy()))


PARAMETER_NAMES = sorted(TrainingRunParameters.model_fields)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([*PARAMETER_NAMES, "epochs", "label", "Bucket"]),
                       st.one_of(st.text(max_size=40), st.sampled_from(["true", "0", "0.5", "{}", "[]", "s3://b/k.csv",
                                                                        "-1", "1e9", "null"])), max_size=6))
def test_hostile_policy_parameters_either_launch_declared_typed_values_or_name_the_field(raw: dict[str, str]) -> None:
    declared = declared_parameters_cached()
    try:
        params = launcher().parameters(LaunchRequest(alert(), policy(**raw)))
    except LaunchError as exc:
        assert "ml-prod/fraud: " in str(exc) and ": " in str(exc).split("ml-prod/fraud: ", 1)[1]
        return
    assert_declared_and_typed(params, declared)


_DECLARED: dict[str, dict[str, Any]] = {}


def declared_parameters_cached() -> dict[str, dict[str, Any]]:
    if not _DECLARED:
        _DECLARED.update(declared_parameters())
    return _DECLARED


class _KfpApi(BaseHTTPRequestHandler):
    """The few Kubeflow Pipelines v2beta1 endpoints kfp.Client calls to start a run."""

    calls: list[tuple[str, str, Any]] = []

    def _send(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._send({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/pipelines?"):
            self._send({"pipelines": [{"pipeline_id": "pl-1", "display_name": "kanari-training"}], "total_size": 1})
        elif self.path.startswith("/apis/v2beta1/pipelines/pl-1/versions"):
            self._send({"pipeline_versions": [{"pipeline_id": "pl-1", "pipeline_version_id": "v-9"}], "total_size": 1})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._send({"experiments": [{"experiment_id": "exp-1", "display_name": "kanari-retraining"}], "total_size": 1})
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", self.path, body))
        self._send({"run_id": "run-77", **body})

    def log_message(self, *args: Any) -> None:
        pass


def test_the_launcher_starts_the_newest_version_with_typed_parameters_over_http() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = launcher(host=f"http://127.0.0.1:{server.server_port}").launch(LaunchRequest(alert(), policy()))
    finally:
        server.shutdown()
        server.server_close()
    assert run == "run-77"
    posts = [c for c in _KfpApi.calls if c[0] == "POST"]
    assert [p[1] for p in posts] == ["/apis/v2beta1/runs"]
    body = posts[0][2]
    assert body["pipeline_version_reference"] == {"pipeline_id": "pl-1", "pipeline_version_id": "v-9"}
    params = body["runtime_config"]["parameters"]
    assert params["drift_alert"]["fingerprint"] == "a1b2c3d4e5f6"  # a struct, not a JSON string
    assert params["model_package_group"] == "fraud-models" and params["role_arn"] == ROLE
    assert body["service_account"] == "kanari-pipeline"  # the IRSA-annotated account, not KFP's default


def test_the_launcher_reports_an_unreachable_server() -> None:
    with pytest.raises(LaunchError, match="Kubeflow Pipelines at http://127.0.0.1:9"):
        launcher().launch(LaunchRequest(alert(), policy()))


@pytest.mark.timeout(180)
def test_a_retrain_started_by_an_alert_completes_with_the_alert_in_lineage(aws, tmp_path) -> None:
    """The demo's path, which is the cluster's: KfpLauncher -> kfp.Client -> the KFP API (devstack's
    stand-in, which runs the pipeline through kfp.local) -> a registered version carrying the alert."""
    import os
    import subprocess
    import sys
    import time

    from devstack.stack import free_port
    from devstack.supervisor import pid_alive

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "devstack.kfp_api", "serve", "--port", str(port), "--workdir",
                               str(tmp_path / "work"), "--log-dir", str(tmp_path / "logs")], env=os.environ.copy())
    try:
        host = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                import httpx

                if httpx.get(f"{host}/apis/v2beta1/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the KFP stand-in did not start"
            time.sleep(0.2)
        arn = f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{aws.group}/1"
        md = {**DEPLOYMENT,
              "spec": {**DEPLOYMENT["spec"], "model": {"format": "pytorch", "modelPackageArn": arn},
                       "monitoring": {"baselineUri": f"s3://{aws.bucket}/old/baseline"}},
              "status": {"stableModel": {"revision": "r", "modelPackageArn": arn},
                         "lineage": {"gitSha": "6aacda1d590f", "datasetUri": "sklearn://breast_cancer"}}}
        run = KfpLauncher(host, deployments=lambda ns, name: md).launch(LaunchRequest(alert(), policy(
            hyperparameters='{"epochs": 3}', manifest_dir=str(tmp_path / "gitops"))))
        assert run.startswith("pid-")
        pid = int(run.removeprefix("pid-"))
        while pid_alive(pid):
            time.sleep(0.5)
        log = next((tmp_path / "logs").glob("*.log")).read_text()
        assert '"gate_passed": true' in log, log[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=10)
    packages = aws.packages()
    assert len(packages) == 1
    meta = aws.sm.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])["CustomerMetadataProperties"]
    assert meta["kanari:drift-alert"] == "KanariFeatureDriftCritical"
    assert meta["kanari:drift-alert-fingerprint"] == "a1b2c3d4e5f6" and meta["kanari:git-sha"] == "6aacda1d590f"
    assert meta["kanari:reason"] == "drift alert KanariFeatureDriftCritical amount"
    manifest = yaml.safe_load((tmp_path / "gitops" / "ml-prod" / "fraud.yaml").read_text())
    assert manifest["metadata"]["annotations"]["kanari.dev/lineage-drift-alert-fingerprint"] == "a1b2c3d4e5f6"
