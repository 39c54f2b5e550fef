"""A ModelDeployment's life as a user sees it, with the real operator process: create, ready, new model
version, monitoring rule, delete."""

from __future__ import annotations

import time
import urllib.request
from datetime import datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.operator.harness import ISVC, PROMETHEUS_RULE, condition, wait_for
from tests.support.schemas import validate_custom

V1 = "s3://models/fraud/v1/model.tar.gz"
V2 = "s3://models/fraud/v2/model.tar.gz"
SKLEARN_CPU = {
    "model": {"storageUri": V1, "format": "sklearn"},
    "serving": {"accelerator": "cpu", "minReplicas": 1, "maxReplicas": 3},
    "rollout": {"strategy": "AllAtOnce"},
}


def without_status(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


def assert_conditions_well_formed(md: dict[str, Any]) -> None:
    generation = md["metadata"]["generation"]
    conds = md["status"]["conditions"]
    assert conds, "no conditions"
    for c in conds:
        datetime.fromisoformat(c["lastTransitionTime"].replace("Z", "+00:00"))
        assert c["status"] in ("True", "False", "Unknown") and c["reason"], c
        assert c["observedGeneration"] == generation, c


@pytest.mark.timeout(60)
def test_create_ready_new_version_delete(env: Any) -> None:
    kube, kserve, name = env.kube, env.kserve, env.name
    md = kube.create_md(name, SKLEARN_CPU)
    uid = md["metadata"]["uid"]

    isvc = kube.wait_isvc(name, lambda i: True, "the InferenceService to be created")
    validate_custom(without_status(isvc))
    assert isvc["metadata"]["ownerReferences"] == [{
        "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment", "name": name, "uid": uid,
        "controller": True, "blockOwnerDeletion": True,
    }]
    assert isvc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kanari"
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert predictor["model"]["storageUri"] == V1
    assert predictor["model"]["runtime"] == "kserve-sklearnserver"
    assert predictor["model"]["modelFormat"] == {"name": "sklearn"}
    assert "canaryTrafficPercent" not in predictor

    md = kube.wait_md(name, lambda m: m.get("status", {}).get("observedGeneration") == 1, "the first status")
    assert md["status"]["phase"] == "Progressing"
    assert condition(md, "Ready")["status"] == "False"
    assert_conditions_well_formed(md)
    kube.wait_reasons(uid, "Deploying")

    # KServe reports the predictor ready: the deployment is done.
    isvc = kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: m["status"]["phase"] == "Succeeded", "phase Succeeded")
    ready = condition(md, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "InferenceServiceReady")
    assert md["status"]["inferenceService"]["url"] == isvc["status"]["url"]
    assert md["status"]["stableModel"]["storageUri"] == V1
    assert_conditions_well_formed(md)
    reasons = kube.wait_reasons(uid, "Deployed")
    assert "InferenceServiceReady" in reasons

    # A new model version: rolled out through KServe's canary, then promoted.
    kube.patch_md(name, {"spec": {"model": {"storageUri": V2}}})
    isvc = kube.wait_isvc(
        name, lambda i: i["spec"]["predictor"]["model"]["storageUri"] == V2, "the canary in the InferenceService"
    )
    validate_custom(without_status(isvc))
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0  # no traffic before KServe reports it ready
    md = kube.wait_md(name, lambda m: m["status"]["observedGeneration"] == 2, "observedGeneration 2")
    assert md["status"]["phase"] == "Progressing"
    assert md["status"]["canaryModel"]["storageUri"] == V2
    assert md["status"]["stableModel"]["storageUri"] == V1
    kube.wait_reasons(uid, "RolloutStarted")

    kserve.reconcile(name)  # the new revision is ready
    md = kube.wait_md(
        name, lambda m: m["status"]["stableModel"]["storageUri"] == V2 and not m["status"].get("canaryModel"),
        "the promotion",
    )
    isvc = kube.isvc(name)
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # KServe routes everything to it
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == V2
    validate_custom(without_status(isvc))
    kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: m["status"]["phase"] == "Succeeded", "phase Succeeded after the promotion")
    assert condition(md, "Ready")["status"] == "True"
    assert_conditions_well_formed(md)
    reasons = kube.wait_reasons(uid, "Promoted")
    assert "StepAdvanced" in reasons  # AllAtOnce: promoted in the same pass, no weight ever written
    warnings = [(e["reason"], e["message"]) for e in kube.events(uid) if e["type"] == "Warning"]
    assert warnings == []  # a clean rollout alarms nobody
    # What Prometheus scrapes from the operator (KANARI_METRICS_PORT) tells the same story.
    port = env.operator.env["KANARI_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    samples = {
        (s.name, s.labels.get("kanari_modeldeployment_phase")): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
        if s.labels.get("name") == name and s.labels.get("namespace") == kube.namespace
    }
    assert samples[("kanari_modeldeployment_phase", "Succeeded")] == 1.0
    assert samples[("kanari_promotions_total", None)] == 1.0

    # Delete: the operator lets go (finalizer removed) and writes nothing more to the InferenceService.
    deleted_at = time.monotonic()
    kube.delete_md(name)
    wait_for(lambda: kube.md(name) is None, "the ModelDeployment to be gone")
    time.sleep(1.5)  # more than one resync period: a leftover loop would write by now
    writes = [c for c in env.cluster.calls(deleted_at) if c.by_operator and c.on(ISVC, name)
              and c.verb in ("create", "patch", "delete")]
    assert writes == []
    # The emulator has no garbage collector; this reference is what lets Kubernetes' delete the child.
    orphan = kube.isvc(name)
    assert orphan["metadata"]["ownerReferences"][0]["uid"] == uid
    assert orphan["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True


@pytest.mark.timeout(40)
def test_monitoring_gets_an_owned_prometheus_rule(env: Any) -> None:
    kube, name = env.kube, env.name
    spec = {
        **SKLEARN_CPU,
        "monitoring": {"baselineUri": "s3://models/fraud/v1/baseline", "drift": {"method": "psi", "for": "5m"}},
    }
    uid = kube.create_md(name, spec)["metadata"]["uid"]
    rule = kube.wait(PROMETHEUS_RULE, f"{name}-drift", lambda r: True, "the drift PrometheusRule")
    validate_custom(rule)
    assert rule["metadata"]["ownerReferences"][0]["uid"] == uid
    assert rule["spec"]["groups"] and all(g["rules"] for g in rule["spec"]["groups"])
    md = kube.wait_md(name, lambda m: m.get("status", {}).get("driftRule"), "status.driftRule")
    assert md["status"]["driftRule"] == f"{name}-drift"
    # The payload logger sends stable and canary traffic to the drift monitor, with the baseline.
    isvc = kube.wait_isvc(name, lambda i: True, "the InferenceService")
    assert isvc["metadata"]["annotations"]["kanari.dev/baseline-uri"] == "s3://models/fraud/v1/baseline"

    # Monitoring switched off: the rule goes away with it.
    kube.patch_md(name, {"spec": {"monitoring": {"enabled": False}}})
    wait_for(lambda: kube.get(PROMETHEUS_RULE, f"{name}-drift") is None, "the PrometheusRule to be deleted")
