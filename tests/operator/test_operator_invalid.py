"""Specs the emulator accepts (it validates nothing, like a cluster without the CRD's CEL rules) but that
cannot be served, and SageMaker Model Registry packages served from a moto server: the operator says what
is wrong and where, leaves what runs alone, and keeps running."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.operator.harness import ISVC, condition, wait_for
from tests.support.moto import register_model_package
from tests.support.schemas import validate_custom

V1 = "s3://models/fraud/v1/model.tar.gz"


def writes_to_isvc(env: Any, since: float) -> list[Any]:
    return [c for c in env.cluster.calls(since) if c.by_operator and c.on(ISVC, env.name)
            and c.verb in ("create", "patch", "delete")]


def warning(env: Any, uid: str, reason: str, text: str) -> dict[str, Any]:
    return wait_for(
        lambda: next((e for e in env.kube.events(uid) if e["reason"] == reason and text in e["message"]), None),
        f"a {reason} Event mentioning {text}",
    )


@pytest.mark.timeout(60)
def test_unservable_change_leaves_the_running_model_alone(env: Any) -> None:
    kube, name = env.kube, env.name
    spec = {"model": {"storageUri": V1, "format": "sklearn"},
            "serving": {"accelerator": "cpu", "minReplicas": 1, "maxReplicas": 2}}
    uid = kube.create_md(name, spec)["metadata"]["uid"]
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    env.kserve.reconcile(name)
    kube.wait_md(name, lambda m: m.get("status", {}).get("phase") == "Succeeded", "V1 serving")

    for generation, change, field in [
        (2, {"serving": {"minReplicas": 3}}, "spec.serving.maxReplicas"),
        (4, {"serving": {"accelerator": "inferentia2"}}, "spec.model.format"),
    ]:
        before = kube.isvc(name)
        since = time.monotonic()
        kube.patch_md(name, {"spec": change})
        md = kube.wait_md(
            name, lambda m, g=generation: m["status"]["observedGeneration"] == g, f"generation {generation} observed"
        )
        invalid = condition(md, "InvalidSpec")
        assert invalid["status"] == "True" and invalid["message"].startswith(field), invalid
        assert md["status"]["phase"] == "Failed" and md["status"]["message"].startswith(field)
        assert warning(env, uid, "InvalidSpec", field)["type"] == "Warning"
        time.sleep(1.2)  # a resync later: still nothing written to what serves
        assert writes_to_isvc(env, since) == []
        assert kube.isvc(name)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert md["status"]["stableModel"]["storageUri"] == V1

        # Fixed: the condition clears and the deployment is healthy again.
        revert = {"serving": {"minReplicas": 1}} if "minReplicas" in change["serving"] else {"serving": {"accelerator": "cpu"}}
        kube.patch_md(name, {"spec": revert})
        md = kube.wait_md(name, lambda m: m["status"]["phase"] == "Succeeded", "healthy again")
        assert condition(md, "InvalidSpec")["status"] == "False"
    warnings = [e for e in kube.events(uid) if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 2  # once per bad spec, not once per resync


@pytest.mark.timeout(40)
def test_model_package_unknown_to_the_registry(env: Any) -> None:
    kube, name = env.kube, env.name
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/no-such-model/3"
    uid = kube.create_md(name, {"model": {"modelPackageArn": arn}, "serving": {"instanceType": "inf2.xlarge"}})
    md = kube.wait_md(name, lambda m: condition(m, "InvalidSpec"), "InvalidSpec")
    invalid = condition(md, "InvalidSpec")
    assert invalid["status"] == "True"
    assert invalid["message"] == f"spec.model.modelPackageArn: model package {arn} does not exist"
    warning(env, uid["metadata"]["uid"], "InvalidSpec", "spec.model.modelPackageArn")
    time.sleep(1.2)
    assert kube.isvc(name) is None




@pytest.mark.timeout(40)
def test_unapproved_package_is_not_served(env: Any, sagemaker: Any) -> None:
    kube, name = env.kube, env.name
    arn = register_model_package(sagemaker, f"{name}-group", status="PendingManualApproval")
    uid = kube.create_md(name, {"model": {"modelPackageArn": arn, "requireApproval": True},
                                "serving": {"instanceType": "inf2.xlarge"}})["metadata"]["uid"]
    md = kube.wait_md(name, lambda m: condition(m, "ModelApproved"), "ModelApproved")
    approved = condition(md, "ModelApproved")
    assert (approved["status"], approved["reason"]) == ("False", "ModelNotApproved")
    assert approved["message"].startswith("spec.model.modelPackageArn") and "PendingManualApproval" in approved["message"]
    assert md["status"]["phase"] == "Pending"
    assert warning(env, uid, "ModelNotApproved", arn)["type"] == "Warning"
    time.sleep(1.2)
    assert kube.isvc(name) is None


@pytest.mark.timeout(40)
def test_approved_package_is_served_with_its_lineage(env: Any, sagemaker: Any) -> None:
    kube, name = env.kube, env.name
    arn = register_model_package(sagemaker, f"{name}-group")
    kube.create_md(name, {"model": {"modelPackageArn": arn}, "serving": {"instanceType": "inf2.xlarge"}})
    isvc = kube.wait_isvc(name, lambda i: True, "the InferenceService")
    validate_custom({k: v for k, v in isvc.items() if k != "status"})
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"s3://models/{name}-group/model.tar.gz"
    assert model["image"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/kanari-neuron:2.21"
    assert model["runtime"] == "kanari-neuron"
    env.kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: m["status"].get("phase") == "Succeeded", "served")
    assert condition(md, "ModelApproved")["status"] == "True"
    assert md["status"]["lineage"] == {"modelPackageArn": arn, "gitSha": "4b825dc", "pipelineRun": "run-17"}
