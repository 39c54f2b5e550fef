"""The drift monitor owns status.previewTraffic (BlueGreen preview replay): the real operator process, patching
its own status on every change, leaves that field as the monitor wrote it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.harness import MD, Call

V1 = "s3://models/fraud/v1/model.tar.gz"
V2 = "s3://models/fraud/v2/model.tar.gz"
SPEC = {
    "model": {"storageUri": V1, "format": "sklearn"},
    "serving": {"accelerator": "cpu", "deploymentMode": "Serverless"},
    "rollout": {"strategy": "BlueGreen", "blueGreen": {"previewDuration": "10m"}},
}


@pytest.mark.timeout(60)
def test_the_operator_leaves_the_monitors_preview_traffic_alone(env: Any) -> None:
    kube, kserve, name = env.kube, env.kserve, env.name
    kube.create_md(name, SPEC)
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    kserve.reconcile(name)
    kube.wait_md(name, lambda m: m.get("status", {}).get("phase") == "Succeeded", "v1 serving")
    kube.patch_md(name, {"spec": {"model": {"storageUri": V2}}})
    kube.wait_isvc(name, lambda i: i["spec"]["predictor"]["model"]["storageUri"] == V2, "the preview template")
    kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: (m["status"].get("canaryModel") or {}).get("storageUri") == V2,
                      "the preview in status")
    report = {"source": "replay", "revision": md["status"]["canaryModel"]["revision"], "ratePerSecond": 5.0,
              "sent": 42, "errors": 0, "available": 200, "active": True, "message": "replaying"}
    kube.merge_patch(MD, name, {"status": {"previewTraffic": report}}, status=True)
    # The operator writes its status again (a new generation: minReplicas in place), with previewTraffic untouched.
    kube.patch_md(name, {"spec": {"serving": {"minReplicas": 2}}})
    md = kube.wait_md(name, lambda m: m["status"].get("observedGeneration") == m["metadata"]["generation"],
                      "the operator's status for the scaling edit")
    assert md["status"]["previewTraffic"] == report
    assert md["status"]["canaryModel"]["storageUri"] == V2
    # Not even rewritten with the value read: a copy read before the monitor's next patch and written after it
    # would put the older report back. The operator's status writes never carry the monitor's (or the alert
    # receiver's) field.
    writes: list[Call] = [c for c in env.cluster.calls() if c.by_operator and c.on(MD, name, "status")
                          and c.verb == "patch"]
    assert writes, "the operator wrote no status"
    carried = [c.data["status"] for c in writes if {"previewTraffic", "retraining"} & set(c.data.get("status") or {})]
    assert not carried, carried
