"""The InferenceService a ModelDeployment becomes, validated against KServe's real CRD, and its status read."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml
from kanari.api.v1alpha1 import ModelDeployment, ModelRef, SpecError, parse_model_deployment
from kanari.controller import inferenceservice, isvc_health
from kanari.controller.config import OperatorConfig
from kanari.controller.serving_runtime import choose_runtime

from tests.support.schemas import UPSTREAM_CRDS, validate_custom

HEALTH_CASES = UPSTREAM_CRDS.parent / "argocd-kserve-health"
CONFIG = OperatorConfig(drift_monitor_url="http://kanari-drift-monitor.kanari.svc:8080")


def md(**spec: Any) -> ModelDeployment:
    body = {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "fraud", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": {"model": {"storageUri": "s3://models/fraud/v1/model.tar.gz"}, **spec}}
    return parse_model_deployment(body)


def ref(rev: str, uri: str = "s3://models/fraud/v1/model.tar.gz") -> ModelRef:
    return ModelRef(revision=rev, version=rev, storageUri=uri, format="pytorch-neuronx")


def build(m: ModelDeployment, **kw: Any) -> dict[str, Any]:
    obj = inferenceservice.build(m, runtime=choose_runtime(m.spec, CONFIG.neuron_runtime), config=CONFIG, **kw)
    assert obj is not None
    validate_custom(obj)  # against serving.kserve.io_inferenceservices.yaml
    return obj


def test_inferentia_predictor_schedules_on_inf2() -> None:
    m = md(serving={"instanceType": "inf2.xlarge", "neuronCores": 2, "schedulerName": "my-scheduler"})
    obj = build(m, stable=ref("a"), canary=None, canary_weight=0)
    pred = obj["spec"]["predictor"]
    assert pred["model"]["resources"]["limits"]["aws.amazon.com/neuroncore"] == 2
    assert pred["nodeSelector"] == {"node.kubernetes.io/instance-type": "inf2.xlarge"}
    assert {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"} in pred["tolerations"]
    assert pred["schedulerName"] == "my-scheduler"
    assert pred["model"]["runtime"] == "kanari-neuron"
    assert obj["metadata"]["ownerReferences"][0] | {} == {
        "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment", "name": "fraud", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}
    assert "canaryTrafficPercent" not in pred and "canary" not in obj["spec"]


def test_whole_neuron_devices_and_family_selector() -> None:
    obj = build(md(serving={"neuronDevices": 1}), stable=ref("a"), canary=None, canary_weight=0)
    pred = obj["spec"]["predictor"]
    assert pred["model"]["resources"]["requests"]["aws.amazon.com/neuron"] == 1
    assert pred["nodeSelector"] == {"karpenter.k8s.aws/instance-family": "inf2"}


def test_serverless_canary_uses_canary_traffic_percent() -> None:
    m = md(serving={"deploymentMode": "Serverless"})
    current = _kserve_observed(build(m, stable=ref("a"), canary=None, canary_weight=0), "fraud-00001", "fraud-00001")
    obj = build(m, stable=ref("a"), canary=ref("b", "s3://models/fraud/v2/model.tar.gz"), canary_weight=10,
                current=current)
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert obj["spec"]["predictor"]["model"]["storageUri"].endswith("v2/model.tar.gz")
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"


def _kserve_observed(isvc: dict[str, Any], created: str, ready: str, generation: int = 1) -> dict[str, Any]:
    out = {**isvc, "metadata": {**isvc["metadata"], "generation": generation}}
    out["status"] = {"observedGeneration": generation, "components": {"predictor": {
        "latestCreatedRevision": created, "latestReadyRevision": ready, "latestRolledoutRevision": "fraud-00001"}}}
    return out


def test_serverless_rollback_writes_the_stable_template_pinned_until_its_revision_is_ready() -> None:
    """Regression: a rollback used to keep the failed canary's predictor as is (its replicas, its model) until the
    next rollout: scaling edits were never written and reverting spec.model left the failed template in place."""
    m = md(serving={"deploymentMode": "Serverless", "minReplicas": 2, "maxReplicas": 4})
    v2 = ref("b", "s3://models/fraud/v2/model.tar.gz")
    stable = _kserve_observed(build(m, stable=ref("a"), canary=None, canary_weight=0), "fraud-00001", "fraud-00001")
    canary = _kserve_observed(build(m, stable=ref("a"), canary=v2, canary_weight=50, current=stable),
                              "fraud-00002", "fraud-00002")
    rolled = build(m, stable=ref("a"), canary=None, canary_weight=0, current=canary)
    pred = rolled["spec"]["predictor"]
    # The stable model's template, with today's replicas; pinned at 0% so KServe keeps the last rolled-out
    # (stable) revision at 100% instead of routing to the latest ready one, the failed canary.
    assert pred["model"]["storageUri"].endswith("v1/model.tar.gz") and pred["canaryTrafficPercent"] == 0
    assert (pred["minReplicas"], pred["maxReplicas"]) == (2, 4)
    assert rolled["metadata"]["annotations"]["kanari.dev/revision"] == "a"
    # A scaling edit while the pin holds is written too.
    scaled = md(serving={"deploymentMode": "Serverless", "minReplicas": 1, "maxReplicas": 6})
    pinned = _kserve_observed(rolled, "fraud-00003", "fraud-00002", generation=2)
    again = build(scaled, stable=ref("a"), canary=None, canary_weight=0, current=pinned)
    assert again["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert (again["spec"]["predictor"]["minReplicas"], again["spec"]["predictor"]["maxReplicas"]) == (1, 6)
    # Once the stable template's own revision is Ready, the pin goes: all traffic to it, the failed one unrouted.
    ready = _kserve_observed(again, "fraud-00003", "fraud-00003", generation=3)
    final = build(scaled, stable=ref("a"), canary=None, canary_weight=0, current=ready)
    assert "canaryTrafficPercent" not in final["spec"]["predictor"]
    assert build(scaled, stable=ref("a"), canary=None, canary_weight=0, current=final) == final
    # A promotion drops the canary percent once the promoted revision is the Ready latest one.
    promoted = build(m, stable=v2, canary=None, canary_weight=0, current=canary)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert promoted["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"


def test_serverless_canary_waits_for_a_rolled_out_stable_revision() -> None:
    """Regression: an InferenceService with no rolled-out revision (deleted and re-created mid-rollout, or not
    yet observed by KServe) got the canary template with canaryTrafficPercent; KServe then has nothing to split
    against and sends the canary all traffic. The stable template is written first."""
    m = md(serving={"deploymentMode": "Serverless"})
    v2 = ref("b", "s3://models/fraud/v2/model.tar.gz")
    for current in (None, {"metadata": {"generation": 1}, "spec": {}, "status": {}}):
        obj = build(m, stable=ref("a"), canary=v2, canary_weight=0, current=current)
        pred = obj["spec"]["predictor"]
        assert pred["model"]["storageUri"].endswith("v1/model.tar.gz") and not pred.get("canaryTrafficPercent")
        assert obj["metadata"]["annotations"]["kanari.dev/revision"] == "a"


def test_raw_deployment_canary_list() -> None:
    m = md(serving={"deploymentMode": "RawDeployment", "accelerator": "cpu"}, model={
        "storageUri": "s3://models/fraud/v1/model.joblib", "format": "sklearn"})
    obj = build(m, stable=ref("a"), canary=ref("b", "s3://models/fraud/v2/model.joblib"), canary_weight=25)
    assert obj["spec"]["predictor"]["model"]["storageUri"] == "s3://models/fraud/v1/model.tar.gz"
    assert obj["spec"]["canary"][0]["trafficPercent"] == 25
    assert obj["spec"]["canary"][0]["predictor"]["model"]["runtime"] == "kserve-sklearnserver"
    assert "tolerations" not in obj["spec"]["predictor"]


def test_payload_logger_points_at_drift_monitor_with_baseline() -> None:
    m = md(monitoring={"drift": {"method": "psi"}})
    obj = build(m, stable=ref("a"), canary=None, canary_weight=0, baseline_uris={"a": "s3://models/fraud/v1/baseline"})
    logger = obj["spec"]["predictor"]["logger"]
    assert logger["url"] == CONFIG.drift_monitor_url and logger["mode"] == "all"
    assert "kanari.dev/baseline-uri" in logger["metadataAnnotations"]
    assert obj["metadata"]["annotations"]["kanari.dev/baseline-uri"] == "s3://models/fraud/v1/baseline"
    assert "logger" not in build(md(), stable=ref("a"), canary=None, canary_weight=0)["spec"]["predictor"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": {"storageUri": "s3://m", "format": "sklearn"}}, "spec.model.format"),
        ({"model": {"storageUri": "s3://m", "format": "pytorch-neuronx"}, "serving": {"accelerator": "cpu"}},
         "spec.model.format"),
    ],
)
def test_unservable_specs(spec: dict[str, Any], field: str) -> None:
    m = parse_model_deployment({"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
                                "metadata": {"name": "x"}, "spec": spec})
    with pytest.raises(SpecError) as info:
        choose_runtime(m.spec, "kanari-neuron")
    assert info.value.field == field


def test_explicit_runtime_is_passed_to_kserve() -> None:
    """Regression: a custom runtime used to be refused as unknown although no ServingRuntime was ever looked up.
    The name now goes to KServe, which reports an unknown one in the InferenceService's status."""
    m = parse_model_deployment({"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
                                "metadata": {"name": "x"}, "spec": {"model": {"storageUri": "s3://m", "runtime": "mine"}}})
    assert choose_runtime(m.spec, "kanari-neuron").runtime == "mine"
    obj = build(m, stable=ref("a"), canary=None, canary_weight=0)
    assert obj["spec"]["predictor"]["model"]["runtime"] == "mine"


def _argocd_cases() -> list[tuple[str, str]]:
    cases = yaml.safe_load((HEALTH_CASES / "health_test.yaml").read_text())["tests"]
    return [(c["inputPath"], c["healthStatus"]["status"]) for c in cases]


@pytest.mark.parametrize(("path", "verdict"), _argocd_cases())
def test_health_agrees_with_argocd(path: str, verdict: str) -> None:
    isvc = yaml.safe_load((HEALTH_CASES / path).read_text())
    health, message = isvc_health.health(isvc)
    assert health == verdict, message
    reading = isvc_health.read(isvc)
    assert reading.ready == (verdict == "Healthy")


def test_canary_readiness_from_real_status_shapes() -> None:
    healthy = yaml.safe_load((HEALTH_CASES / "testdata" / "healthy.yaml").read_text())
    healthy["spec"] = {"predictor": {"canaryTrafficPercent": 10}}
    comp = healthy["status"].setdefault("components", {}).setdefault("predictor", {})
    comp.update({"latestCreatedRevision": "p-00002", "latestReadyRevision": "p-00001",
                 "latestRolledoutRevision": "p-00001"})
    r = isvc_health.read(healthy)
    assert r.stable_ready and not r.canary_ready
    comp["latestReadyRevision"] = "p-00002"
    assert isvc_health.read(healthy).canary_ready
    healthy["metadata"]["annotations"] = {"kanari.dev/revision": "v3"}
    # After a rollback the status still describes the failed revision: it is not the next canary.
    assert not isvc_health.read(healthy, canary_revision="v4").canary_ready
    assert isvc_health.read(healthy, canary_revision="v3").canary_ready
    healthy["metadata"]["generation"], healthy["status"]["observedGeneration"] = 5, 4
    assert not isvc_health.read(healthy, canary_revision="v3").canary_ready


def test_kserve_schema_rejects_what_kserve_would() -> None:
    obj = build(md(), stable=ref("a"), canary=None, canary_weight=0)
    obj["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(obj)


