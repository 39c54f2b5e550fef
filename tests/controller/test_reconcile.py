"""The controller's pure decision: spec + observations in, InferenceService + status + Events out."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from kanari.api.v1alpha1 import ACTION_ANNOTATION
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
    # KServe's own record of the revision that last had all traffic (Serverless): what canaryTrafficPercent
    # splits against (the Argo CD health fixtures leave components out).
    rev = "fraud-predictor-00001"
    out["status"]["components"] = {"predictor": {
        "latestCreatedRevision": rev, "latestReadyRevision": rev, "latestRolledoutRevision": rev}}
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


# ------------------------------------------------------------------------------ issue 10 regressions
CPU = {"model": {"storageUri": "s3://models/fraud/v1", "format": "sklearn"},
       "serving": {"accelerator": "cpu", "deploymentMode": "Serverless", "minReplicas": 1, "maxReplicas": 3},
       "rollout": {"steps": [{"setWeight": 20}, {"pause": {}}]}}


class Live:
    """One ModelDeployment driven through reconcile(), with the KServe stand-in applying what it emits."""

    def __init__(self, spec: dict[str, Any]):
        from tests.controller.kserve_sim import KServeSim

        self.spec, self.generation, self.status = copy.deepcopy(spec), 1, {}
        self.kserve = KServeSim(spec["serving"]["deploymentMode"])
        self.now = T0
        self.events: list[str] = []

    def reconcile(self, settle: bool = True, annotations: dict[str, str] | None = None) -> Any:
        self.now += timedelta(seconds=5)
        out = reconcile(body(self.spec, self.status, self.generation, annotations),
                        ClusterObservation(now=self.now, isvc=self.kserve.isvc), CONFIG)
        self.status = out.status.model_dump(mode="json", exclude={"retraining"})
        self.events += [e.reason for e in out.events]
        self.kserve.apply(out.isvc)
        if settle:
            self.kserve.settle(ready=True)
        return out

    def edit(self, **serving: Any) -> None:
        self.spec = copy.deepcopy(self.spec)
        model = serving.pop("model", None)
        if model:
            self.spec["model"]["storageUri"] = f"s3://models/fraud/{model}"
        if "suspend" in serving:
            self.spec["suspend"] = serving.pop("suspend")
        self.spec["serving"].update(serving)
        self.generation += 1


def serving_v1(spec: dict[str, Any] = CPU) -> Live:
    live = Live(spec)
    for _ in range(3):
        live.reconcile()
    assert live.status["phase"] == "Succeeded" and live.kserve.traffic() == {"s3://models/fraud/v1": 100}
    return live


def test_invalid_edit_then_new_model_goes_through_a_canary() -> None:
    """Defect: an invalid edit set phase Failed, and the engine read "Failed, no canary" as a first deployment
    pending: the next valid edit that changed the model went straight to 100% (events Deploying, Deployed)."""
    live = serving_v1()
    live.edit(minReplicas=5, maxReplicas=1)
    out = live.reconcile()
    assert out.isvc is None and out.status.phase == "Failed"
    assert out.status.stableModel.storageUri.endswith("/v1"), "an invalid spec changes no rollout fact"
    live.edit(minReplicas=1, maxReplicas=3, model="v2")
    live.events.clear()
    out = live.reconcile()
    assert "RolloutStarted" in live.events and "Deployed" not in live.events and "Deploying" not in live.events
    assert out.status.canaryModel.storageUri.endswith("/v2") and out.status.canaryWeight == 0
    assert live.kserve.traffic() == {"s3://models/fraud/v1": 100}
    out = live.reconcile()
    assert out.status.canaryWeight == 20 and out.status.phase in ("Progressing", "Paused")
    live.reconcile()
    assert live.kserve.traffic() == {"s3://models/fraud/v2": 20, "s3://models/fraud/v1": 80}


def test_suspend_and_edits_while_invalid_do_not_bypass_the_canary() -> None:
    live = serving_v1()
    live.edit(suspend=True)
    live.reconcile()
    live.edit(minReplicas=5, maxReplicas=1, model="v3")  # edited while invalid (and suspended)
    live.reconcile()
    live.edit(suspend=False)
    live.reconcile()
    live.edit(minReplicas=1, maxReplicas=3)
    live.events.clear()
    out = live.reconcile()
    assert "RolloutStarted" in live.events and "Deployed" not in live.events
    assert out.status.stableModel.storageUri.endswith("/v1") and out.status.canaryModel.storageUri.endswith("/v3")
    assert live.kserve.traffic() == {"s3://models/fraud/v1": 100}
    assert cond(out.status, "Suspended")["status"] == "False"


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_scaling_after_a_rollback_reaches_the_inference_service(mode: str) -> None:
    """Defect (Serverless): after a rollback the failed canary's predictor was copied as is until the next
    rollout: minReplicas edits were never written, and reverting spec.model left the failed template in place."""
    live = serving_v1({**CPU, "serving": {**CPU["serving"], "deploymentMode": mode}})
    live.edit(model="v2")
    live.reconcile()
    live.reconcile()
    assert live.status["canaryWeight"] == 20
    out = live.reconcile(annotations={ACTION_ANNOTATION: "abort/1"})
    assert out.status.phase == "RolledBack"
    live.edit(minReplicas=2)
    out = live.reconcile(annotations={ACTION_ANNOTATION: "abort/1"})
    assert out.isvc is not None and out.isvc["spec"]["predictor"]["minReplicas"] == 2
    assert out.isvc["spec"]["predictor"]["model"]["storageUri"].endswith("/v1"), "the failed template is gone"
    for _ in range(2):
        live.reconcile(annotations={ACTION_ANNOTATION: "abort/1"})
    assert live.kserve.traffic() == {"s3://models/fraud/v1": 100}
    live.edit(model="v1")
    out = live.reconcile(annotations={ACTION_ANNOTATION: "abort/1"})
    assert out.status.phase == "Succeeded" and "canaryTrafficPercent" not in out.isvc["spec"]["predictor"]
    assert out.isvc["spec"]["predictor"]["minReplicas"] == 2


def test_the_calibration_registered_with_the_package_reaches_status_for_the_monitor() -> None:
    """CBPE's calibration: the registry's kanari:calibration-uri and kanari:calibration-sha256 become
    status.stableModel.calibrationUri and calibrationSha256, which is what the drift monitor binds and checks (a
    package without one leaves them empty: the estimate is then unavailable)."""
    from kanari.monitor.registry import monitored

    digest = "ab" * 32
    spec = {"model": {"modelPackageArn": ARN}, "monitoring": {"groundTruth": {"task": "binary"}}}
    pkg = PackageInfo(arn=ARN, storage_uri="s3://m/7/model.tar.gz", image="img:1", approval_status="Approved",
                      metadata={"kanari:calibration-uri": "s3://m/7/calibration.json",
                                "kanari:calibration-sha256": digest})
    d = reconcile(body(spec), ClusterObservation(now=T0, package=pkg), CONFIG)
    assert d.status.stableModel is not None and d.status.stableModel.calibrationUri == "s3://m/7/calibration.json"
    assert d.status.stableModel.calibrationSha256 == digest
    bound = monitored(body(spec, d.status.model_dump(mode="json")))
    assert bound is not None and bound.stable is not None
    assert bound.stable.calibration_uri == "s3://m/7/calibration.json" and bound.ground_truth is not None
    assert bound.stable.calibration_sha256 == digest
    bare = PackageInfo(arn=ARN, storage_uri="s3://m/7/model.tar.gz", image="img:1", approval_status="Approved")
    d = reconcile(body(spec), ClusterObservation(now=T0, package=bare), CONFIG)
    assert d.status.stableModel is not None and d.status.stableModel.calibrationUri is None


def test_a_version_recorded_without_registry_facts_gets_them_from_its_package_once() -> None:
    """Upgrade path: a stable version recorded by a controller that did not copy the calibration digest or the
    registered metrics (CBPE refused it, the quality alert and templates had no figure) gets them from its own
    package on the next reconcile, with an Event; a recorded value is never replaced by a later registry edit."""
    digest = "cd" * 32
    spec = {"model": {"modelPackageArn": ARN}, "monitoring": {"groundTruth": {"task": "binary"}}}
    pkg = PackageInfo(arn=ARN, storage_uri="s3://m/7/model.tar.gz", image="img:1", approval_status="Approved",
                      metadata={"kanari:calibration-uri": "s3://m/7/calibration.json",
                                "kanari:calibration-sha256": digest, "kanari:metric.f1": "0.81"})
    first = reconcile(body(spec), ClusterObservation(now=T0, package=pkg), CONFIG)
    old = first.status.model_dump(mode="json")
    for field in ("calibrationSha256", "registeredMetrics"):
        old["stableModel"].pop(field)  # as an earlier controller wrote it
    filled = reconcile(body(spec, old), ClusterObservation(now=T0, package=pkg), CONFIG)
    assert filled.status.stableModel is not None
    assert filled.status.stableModel.calibrationSha256 == digest
    assert filled.status.stableModel.registeredMetrics == {"f1": 0.81}
    assert [e.reason for e in filled.events] == ["RegistryFactsFilled"]
    again = reconcile(body(spec, filled.status.model_dump(mode="json")), ClusterObservation(now=T0, package=pkg), CONFIG)
    assert again.events == [] and again.status.stableModel == filled.status.stableModel
    edited = PackageInfo(arn=ARN, storage_uri="s3://m/7/model.tar.gz", image="img:1", approval_status="Approved",
                         metadata={**pkg.metadata, "kanari:calibration-sha256": "ef" * 32})
    kept = reconcile(body(spec, filled.status.model_dump(mode="json")), ClusterObservation(now=T0, package=edited), CONFIG)
    assert kept.status.stableModel is not None and kept.status.stableModel.calibrationSha256 == digest
