"""`kanari lineage NAME`: what produced the model serving here, from the ModelDeployment (kmock's API
server) and the registry (moto): data, code, run, job, images, metrics, gate, approval, and the alert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kanari.api import v1alpha1
from kanari.cli.main import main
from kubernetes import client
from pipelines_testlib import MODELDEPLOYMENT_CRD

from kfp_pipelines import registry_admin
from tests.operator.harness import Cluster
from tests.pipelines.test_pipeline_registry_gate import JOB_ARN, put_documents, register

ALERT = {"alertname": "KanariFeatureDrift", "fingerprint": "5f3a9c01d2e4b678", "startsAt": "2026-11-30T04:00:00Z",
         "labels": {"feature": "amount", "severity": "warning"}}


@pytest.fixture()
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with Cluster(tmp_path, (MODELDEPLOYMENT_CRD,)) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield api


def serving(kube: Cluster, arn: str | None, lineage: dict[str, Any]) -> None:
    api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=kube.url)))
    model = {"format": "pytorch", "modelPackageArn": arn} if arn else {"format": "pytorch", "storageUri": "s3://b/m.tar.gz"}
    obj = {"apiVersion": v1alpha1.API_VERSION, "kind": v1alpha1.KIND, "metadata": {"name": "fraud", "namespace": "ml-prod"},
           "spec": {"model": model, "serving": {"accelerator": "cpu"}}}
    api.create_namespaced_custom_object(v1alpha1.GROUP, v1alpha1.VERSION, "ml-prod", v1alpha1.PLURAL, obj)
    status = {"stableModel": {"revision": "abc123", "version": "v4", **({"modelPackageArn": arn} if arn else {})},
              "lineage": lineage}
    api.patch_namespaced_custom_object_status(v1alpha1.GROUP, v1alpha1.VERSION, "ml-prod", v1alpha1.PLURAL, "fraud",
                                              {"status": status})


@pytest.mark.timeout(60)
def test_lineage_of_a_retrained_model_from_status_and_registry(aws, kube: Cluster, capsys) -> None:
    docs = put_documents(aws, "kanari-abc")
    arn, _ = register(aws, docs, drift_alert=ALERT)
    registry_admin.set_status(aws.sm, arn, "Approved", "reviewed by SRE")
    serving(kube, arn, {"modelPackageArn": arn, "gitSha": "6aacda1d590f"})
    assert main(["lineage", "fraud", "-n", "ml-prod", "-o", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["modelDeployment"] == "ml-prod/fraud" and record["source"] == "registry"
    assert record["serving"]["modelPackageArn"] == arn and record["serving"]["version"] == "v4"
    assert record["serving"]["modelDataUrl"] == docs["model_uri"]
    assert record["dataset"] == {"uri": "sklearn://breast_cancer", "version": "sklearn-1.9.1-abc"}
    assert record["code"]["gitSha"] == "6aacda1d590f" and record["pipelineRun"] == "12345678"
    assert record["trainingJob"]["arn"] == JOB_ARN and record["trainingJob"]["imageDigest"] == "sha256:" + "a" * 64
    assert record["metrics"]["pr_auc"] == pytest.approx(0.9)
    assert record["gate"].startswith("no Approved model in the group yet")
    assert record["approval"]["status"] == "Approved" and record["approval"]["description"] == "reviewed by SRE"
    assert record["triggeredBy"] == {"alertname": "KanariFeatureDrift", "fingerprint": "5f3a9c01d2e4b678",
                                     "startsAt": "2026-11-30T04:00:00Z", "feature": "amount", "severity": "warning"}
    assert main(["lineage", "fraud", "-n", "ml-prod"]) == 0
    text = capsys.readouterr().out
    assert "triggered by   drift alert KanariFeatureDrift" in text and "approval       Approved" in text


@pytest.mark.timeout(60)
def test_a_model_served_from_storage_shows_the_status_lineage_only(kube: Cluster, capsys) -> None:
    serving(kube, None, {"gitSha": "4b825dc", "pipelineRun": "run-17", "datasetUri": "s3://d/x.csv"})
    assert main(["lineage", "fraud", "-n", "ml-prod", "-o", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source"] == "status" and record["code"]["gitSha"] == "4b825dc"
    assert record["triggeredBy"] is None and record["approval"]["status"] == ""


@pytest.mark.timeout(60)
def test_an_unknown_model_deployment_is_named(kube: Cluster, capsys) -> None:
    assert main(["lineage", "nope", "-n", "ml-prod"]) == 1
    assert "modeldeployment nope not found in namespace ml-prod" in capsys.readouterr().err
