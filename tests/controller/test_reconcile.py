"""The controller's pure decision: spec + observations in, InferenceService + status + Events out."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from kanari.controller.config import OperatorConfig
from kanari.controller.model_source import PackageInfo
from kanari.controller.reconcile import ClusterObservation, reconcile

from tests.support.schemas import UPSTREAM_CRDS, validate_custom

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
CONFIG = OperatorConfig(drift_monitor_url="http://drift.kanari:8080")
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/7"
HEALTHY = yaml.safe_load((UPSTREAM_CRDS.parent / "argocd-kserve-health" / "testdata" / "healthy.yaml").read_text())


def body(spec: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-1", "generation": generation,
                     "annotations": annotations or {}},
        "spec": spec, "status": status or {},
    }


def ready(isvc: dict[str, Any]) -> dict[str, Any]:
    """The InferenceService as KServe reports it once every revision is up."""
    out = copy.deepcopy(isvc)
    out["metadata"]["generation"] = 1
    out["status"] = copy.deepcopy(HEALTHY["status"])
    out["status"]["observedGeneration"] = 1
    return out


def cond(status: Any, type_: str) -> dict[str, Any]:
    return next(c.model_dump() for c in status.conditions if c.type == type_)


SPEC = {"model": {"storageUri": "s3://models/fraud/v1/model.tar.gz"},
        "serving": {"instanceType": "inf2.xlarge", "neuronCores": 2}}


def test_first_deploy_creates_inferenceservice_then_becomes_ready() -> None:
    d1 = reconcile(body(SPEC), ClusterObservation(now=T0), CONFIG)
    assert d1.isvc is not None
    validate_custom(d1.isvc)
    assert d1.isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/fraud/v1/model.tar.gz"
    assert d1.status.observedGeneration == 1
    assert cond(d1.status, "Ready")["status"] == "False"
    assert cond(d1.status, "InvalidSpec")["status"] == "False"

    st = d1.status.model_dump(mode="json")
    d2 = reconcile(body(SPEC, st), ClusterObservation(now=T0 + timedelta(seconds=5), isvc=ready(d1.isvc)), CONFIG)
    assert d2.status.phase == "Succeeded"
    assert cond(d2.status, "Ready")["status"] == "True"
    assert d2.status.stableModel is not None and d2.status.stableModel.storageUri.endswith("v1/model.tar.gz")
    assert any(e.reason == "InferenceServiceReady" for e in d2.events)
    # Level-triggered: the same observation again changes nothing and says nothing.
    d3 = reconcile(body(SPEC, d2.status.model_dump(mode="json")),
                   ClusterObservation(now=T0 + timedelta(seconds=10), isvc=ready(d1.isvc)), CONFIG)
    assert d3.status == d2.status
    assert d3.isvc == d2.isvc
    assert d3.events == []


def test_invalid_spec_names_field_and_leaves_inferenceservice_alone() -> None:
    bad = {**SPEC, "serving": {"minReplicas": 3, "maxReplicas": 1}}
    d = reconcile(body(bad, {"phase": "Succeeded"}, generation=2), ClusterObservation(now=T0), CONFIG)
    assert d.isvc is None
    c = cond(d.status, "InvalidSpec")
    assert c["status"] == "True" and "spec.serving.maxReplicas" in c["message"]
    assert [e.reason for e in d.events] == ["InvalidSpec"] and d.events[0].type == "Warning"
    again = reconcile(body(bad, d.status.model_dump(mode="json"), generation=2), ClusterObservation(now=T0), CONFIG)
    assert again.events == []  # no Event storm on every resync
    assert cond(again.status, "InvalidSpec")["lastTransitionTime"] == c["lastTransitionTime"]


def test_unservable_format_on_inferentia() -> None:
    d = reconcile(body({"model": {"storageUri": "s3://m/x.joblib", "format": "sklearn"}}), ClusterObservation(now=T0), CONFIG)
    assert d.isvc is None
    assert "spec.model.format" in cond(d.status, "InvalidSpec")["message"]


def test_unapproved_package_is_not_served() -> None:
    pkg = PackageInfo(arn=ARN, storage_uri="s3://m/7/model.tar.gz", image="img:1", approval_status="PendingManualApproval")
    spec = {"model": {"modelPackageArn": ARN}}
    d = reconcile(body(spec), ClusterObservation(now=T0, package=pkg), CONFIG)
    assert d.isvc is None
    c = cond(d.status, "ModelApproved")
    assert (c["status"], c["reason"]) == ("False", "ModelNotApproved")
    assert "spec.model.modelPackageArn" in c["message"]
    approved = PackageInfo(arn=ARN, storage_uri="s3://m/7/model.tar.gz", image="img:1", approval_status="Approved",
                           metadata={"kanari:training-job-arn": "arn:aws:sagemaker:us-east-1:1:training-job/j"})
    d2 = reconcile(body(spec, d.status.model_dump(mode="json")), ClusterObservation(now=T0, package=approved), CONFIG)
    assert d2.isvc is not None and d2.isvc["spec"]["predictor"]["model"]["image"] == "img:1"
    assert cond(d2.status, "ModelApproved")["status"] == "True"


def test_new_version_becomes_a_canary_not_a_replacement() -> None:
    spec = {**SPEC, "serving": {**SPEC["serving"], "deploymentMode": "Serverless"},
            "rollout": {"steps": [{"setWeight": 20}, {"pause": {}}]}}
    d1 = reconcile(body(spec), ClusterObservation(now=T0), CONFIG)
    assert d1.isvc is not None
    live = ready(d1.isvc)
    d2 = reconcile(body(spec, d1.status.model_dump(mode="json")), ClusterObservation(now=T0, isvc=live), CONFIG)
    assert d2.status.phase == "Succeeded"
    v2 = {**spec, "model": {"storageUri": "s3://models/fraud/v2/model.tar.gz"}}
    # The canary revision must be Ready before it gets traffic: first a 0% canary, then the step's weight.
    d3 = reconcile(body(v2, d2.status.model_dump(mode="json"), generation=2), ClusterObservation(now=T0, isvc=live), CONFIG)
    assert d3.isvc is not None
    pred = d3.isvc["spec"]["predictor"]
    assert pred["model"]["storageUri"].endswith("v2/model.tar.gz")
    assert pred.get("canaryTrafficPercent", 0) == 0
    assert d3.status.stableModel is not None and d3.status.stableModel.storageUri.endswith("v1/model.tar.gz")
    assert d3.status.phase == "Progressing"
