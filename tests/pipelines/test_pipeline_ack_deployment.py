"""The ACK path and the ModelDeployment, against kmock's Kubernetes emulator on loopback.

The test plays the ACK SageMaker controller: it reads the TrainingJob the step created, checks it against
the upstream CRD schema (unknown fields would be pruned by a real API server, so they fail here), and
moves its status the way the controller does. The ModelDeployment is checked against Kanari's CRD.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kanari.api import v1alpha1
from kubernetes import client
from pipelines_testlib import MODELDEPLOYMENT_CRD, TRAININGJOB, TRAININGJOB_CRD, strict_validator

from kfp_pipelines import data, deployment
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.sagemaker import config, training
from kfp_pipelines.sagemaker.waiter import Backoff, TrainingJobFailed
from tests.operator.harness import Cluster

NS = "ml-training"
ROLE = "arn:aws:iam::123456789012:role/kanari-sagemaker-execution"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/3"


@pytest.fixture()
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with Cluster(tmp_path, (TRAININGJOB_CRD, MODELDEPLOYMENT_CRD)) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield api


def custom_api(kube: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(client.ApiClient(client.Configuration(host=kube.url)))


class AckController:
    """Stands in for the ACK SageMaker controller: waits for the TrainingJob, then walks its status."""

    def __init__(self, kube: Cluster, statuses: Callable[[str], list[dict[str, Any]]], on_complete: Any = None):
        self.api = custom_api(kube)
        self.statuses = statuses
        self.on_complete = on_complete
        self.seen: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + 20
            while self.seen is None and time.monotonic() < deadline:
                items = self.api.list_namespaced_custom_object(*TRAININGJOB[:2], NS, TRAININGJOB[2])["items"]
                self.seen = items[0] if items else None
                time.sleep(0.05)
            assert self.seen is not None, "no TrainingJob was created"
            name = self.seen["metadata"]["name"]
            for st in self.statuses(name):
                time.sleep(0.15)
                if st.get("trainingJobStatus") == "Completed" and self.on_complete:
                    self.on_complete(st)
                self.api.patch_namespaced_custom_object_status(*TRAININGJOB[:2], NS, TRAININGJOB[2], name,
                                                               {"status": st})
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def __enter__(self) -> AckController:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        if self.error:
            raise self.error


def channels(aws: Any) -> dict[str, str]:
    parts = data.split(data.builtin_breast_cancer(), data.BUILTIN_TARGET, seed=7)
    for name in ("train", "validation"):
        aws.s3.put_object(Bucket=aws.bucket, Key=f"data/{name}/{name}.csv", Body=data.to_csv(getattr(parts, name)))
    return {n: f"s3://{aws.bucket}/data/{n}/" for n in ("train", "validation")}


def ack_config(aws: Any) -> config.TrainingJobConfig:
    return config.parse_config(channels=channels(aws), output_s3_uri=f"s3://{aws.bucket}/training", role_arn=ROLE,
                               image_uri=config.default_image("us-east-1"), use_spot=True, max_runtime_seconds=600,
                               max_wait_seconds=1200, checkpoint_s3_uri=f"s3://{aws.bucket}/ckpt/")


def ack_status(main: str, secondary: str, **extra: Any) -> dict[str, Any]:
    return {"trainingJobStatus": main, "secondaryStatus": secondary,
            "ackResourceMetadata": {"ownerAccountID": "123456789012", "region": "us-east-1"}, **extra}


@pytest.mark.timeout(60)
def test_ack_training_job_is_created_valid_watched_and_reattached(aws, kube: Cluster) -> None:
    base = f"ack-{uuid.uuid4().hex[:6]}"
    model_key: list[str] = []

    def complete(st: dict[str, Any]) -> None:
        # What SageMaker does when the job ends: the artifact is in S3 before the status says so.
        key = st["modelArtifacts"]["s3ModelArtifacts"].split(f"s3://{aws.bucket}/", 1)[1]
        aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=b"model")
        model_key.append(key)

    def statuses(name: str) -> list[dict[str, Any]]:
        model = f"s3://{aws.bucket}/training/{name}/output/model.tar.gz"
        arn = f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"
        done = ack_status("Completed", "Completed", modelArtifacts={"s3ModelArtifacts": model})
        done["ackResourceMetadata"]["arn"] = arn
        return [ack_status("InProgress", "Starting"), ack_status("InProgress", "Training"), done]

    cfg = ack_config(aws)
    kwargs = {"backend": "ack", "run_id": "run-1", "task": "sagemaker-training-job", "base_job_name": base,
              "source_dir": training.default_source_dir(), "ack_namespace": NS,
              "backoff": Backoff(initial=0.05, cap=0.2)}
    with AckController(kube, statuses, on_complete=complete) as ack:
        result = training.run_training(cfg, **kwargs)
    strict_validator(TRAININGJOB_CRD).validate(ack.seen)
    spec = ack.seen["spec"]
    assert ack.seen["metadata"]["name"] == spec["trainingJobName"] == result.job_name
    assert spec["enableManagedSpotTraining"] is True
    assert spec["stoppingCondition"] == {"maxRuntimeInSeconds": 600, "maxWaitTimeInSeconds": 1200}
    assert spec["checkpointConfig"]["s3URI"] == f"s3://{aws.bucket}/ckpt/{result.job_name}/"  # its own prefix
    assert result.job_arn.endswith(f"training-job/{result.job_name}")
    assert result.model_uri == f"s3://{aws.bucket}/{model_key[0]}" and result.polls >= 3
    assert not result.reattached

    # The pod restarts: the step finds its TrainingJob and creates nothing.
    again = training.run_training(cfg, **kwargs)
    assert again.reattached and again.job_arn == result.job_arn
    jobs = custom_api(kube).list_namespaced_custom_object(*TRAININGJOB[:2], NS, TRAININGJOB[2])["items"]
    assert [j["metadata"]["uid"] for j in jobs] == [ack.seen["metadata"]["uid"]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (ack_status("Failed", "Failed", failureReason="ClientError: No S3 objects found under S3 URL"),
         "ended Failed: ClientError: No S3 objects found under S3 URL"),
        ({"conditions": [{"type": "ACK.Terminal", "status": "True",
                          "message": "ValidationException: instance type ml.trn1.2xlarge is not available"}]},
         "ACK.Terminal: ValidationException: instance type ml.trn1.2xlarge is not available"),
    ],
)
def test_ack_failures_end_the_step_with_the_reason(aws, kube: Cluster, final: dict[str, Any], expected: str) -> None:
    steps = [ack_status("InProgress", "Training"), final]
    with AckController(kube, lambda name: steps), pytest.raises(TrainingJobFailed) as err:
        training.run_training(ack_config(aws), backend="ack", run_id="r", task="t",
                              base_job_name=f"ackfail-{uuid.uuid4().hex[:6]}", source_dir=training.default_source_dir(),
                              ack_namespace=NS, backoff=Backoff(initial=0.05, cap=0.1))
    assert expected in str(err.value)


def test_ack_backend_needs_a_namespace(aws) -> None:
    with pytest.raises(InputError) as err:
        training.run_training(ack_config(aws), backend="ack", run_id="r", task="t", base_job_name="x",
                              source_dir=training.default_source_dir())
    assert err.value.parameter == "ack_namespace"


# ------------------------------------------------------------------------------------- ModelDeployment
LINEAGE = v1alpha1.Lineage(modelPackageArn=ARN, trainingJob="arn:aws:sagemaker:us-east-1:123456789012:training-job/j",
                           pipelineRun="1234", datasetUri="sklearn://breast_cancer", gitSha="abc123",
                           imageDigest="unresolved")


def build(existing: dict[str, Any] | None = None, arn: str = ARN) -> dict[str, Any]:
    return deployment.build(existing, name="fraud", namespace="ml-prod", model_package_arn=arn,
                            baseline_uri="s3://bkt/training/j/output/baseline",
                            lineage=LINEAGE.model_copy(update={"modelPackageArn": arn}), dataset_version="v7")


def test_new_manifest_is_valid_and_carries_the_lineage() -> None:
    obj = build()
    strict_validator(MODELDEPLOYMENT_CRD).validate(obj)
    md = v1alpha1.parse_model_deployment(obj)
    assert md.spec.model.modelPackageArn == ARN and md.spec.model.requireApproval
    assert md.spec.monitoring and md.spec.monitoring.baselineUri == "s3://bkt/training/j/output/baseline"
    assert md.spec.monitoring.retrain and md.spec.monitoring.retrain.pipeline == "kanari-training"
    ann = obj["metadata"]["annotations"]
    assert ann["kanari.dev/lineage-dataset-version"] == "v7"
    assert deployment.lineage_from_annotations(ann) == LINEAGE.model_copy(update={"datasetVersion": "v7"})


def test_existing_manifest_keeps_what_the_platform_team_set(tmp_path: Path) -> None:
    existing = {
        "apiVersion": v1alpha1.API_VERSION, "kind": v1alpha1.KIND,
        "metadata": {"name": "fraud", "namespace": "ml-prod", "labels": {"team": "risk"},
                     "annotations": {"kanari.dev/lineage-git-sha": "old", "owner": "sre"}},
        "spec": {"model": {"storageUri": "s3://old/model.tar.gz", "format": "pytorch", "version": "v1"},
                 "serving": {"accelerator": "cpu", "instanceType": "m5.xlarge"},
                 "rollout": {"strategy": "Canary", "steps": [{"setWeight": 10}, {"pause": {"duration": "5m"}}]},
                 "monitoring": {"drift": {"method": "psi", "warn": 0.1, "critical": 0.25}}},
        "status": {"phase": "Succeeded"},
    }
    path = deployment.manifest_path(tmp_path, "ml-prod", "fraud")
    deployment.write(existing, path)
    obj = build(deployment.read_existing(path))
    deployment.write(obj, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["fraud.yaml"]  # replaced atomically, no leftovers
    back = yaml.safe_load(path.read_text())
    assert back["spec"]["model"] == {"format": "pytorch", "modelPackageArn": ARN}
    assert back["spec"]["serving"] == existing["spec"]["serving"]
    assert back["spec"]["rollout"] == existing["spec"]["rollout"]
    assert back["spec"]["monitoring"]["drift"]["method"] == "psi"
    assert back["metadata"]["annotations"]["owner"] == "sre"
    assert back["metadata"]["annotations"]["kanari.dev/lineage-git-sha"] == "abc123"
    assert "status" not in back
    # A manifest serving on Inferentia cannot take a package built for CPU: the controller could not run it.
    on_inf2 = {**back, "spec": {**back["spec"], "serving": {"accelerator": "inferentia2", "neuronCores": 2}}}
    with pytest.raises(StepFailed, match="serves on accelerator inferentia2, but the registered package targets cpu"):
        build(on_inf2)
    with pytest.raises(StepFailed, match="is for ml-prod/fraud"):
        deployment.build(back, name="other", namespace="ml-prod", model_package_arn=ARN, baseline_uri="s3://b/x",
                         lineage=LINEAGE, dataset_version="v")
    with pytest.raises(InputError) as err:
        deployment.build(None, name="Fraud_Model", namespace="ml-prod", model_package_arn=ARN, baseline_uri="s3://b/x",
                         lineage=LINEAGE, dataset_version="v")
    assert err.value.parameter == "model_name"


@pytest.mark.timeout(30)
def test_apply_creates_then_updates_the_model_deployment(kube: Cluster) -> None:
    from kfp_pipelines import kube as kube_client

    api = kube_client.custom_objects_api()
    first = build()
    first["spec"]["model"]["version"] = "launch"
    assert deployment.apply(api, first) == "created"
    newer = ARN.replace("/3", "/4")
    assert deployment.apply(api, build(arn=newer)) == "updated"
    stored = custom_api(kube).get_namespaced_custom_object(v1alpha1.GROUP, v1alpha1.VERSION, "ml-prod",
                                                           v1alpha1.PLURAL, "fraud")
    assert stored["spec"]["model"]["modelPackageArn"] == newer
    assert "version" not in stored["spec"]["model"]  # fields the new manifest drops are removed
    assert stored["metadata"]["annotations"]["kanari.dev/lineage-model-package-arn"] == newer
    strict_validator(MODELDEPLOYMENT_CRD).validate({k: v for k, v in stored.items() if k != "status"})
