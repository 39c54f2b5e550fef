"""Optimistic concurrency: KServe writes the InferenceService between the operator's read and its write.
The API server answers 409; the operator must read again, converge, and not overwrite KServe's write."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.harness import ISVC

V1 = "s3://models/fraud/v1/model.tar.gz"


@pytest.mark.timeout(40)
def test_conflicting_write_is_retried_and_converges(env: Any) -> None:
    kube, name, cluster = env.kube, env.name, env.cluster
    spec = {"model": {"storageUri": V1, "format": "sklearn"}, "serving": {"accelerator": "cpu", "maxReplicas": 2}}
    uid = kube.create_md(name, spec)["metadata"]["uid"]
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    env.kserve.reconcile(name)
    kube.wait_md(name, lambda m: m.get("status", {}).get("phase") == "Succeeded", "V1 serving")

    # KServe's next status write lands just before the operator's next write of the InferenceService.
    kserve_write = {"status": {"address": {"url": f"http://{name}.ml-serving.svc.cluster.local"}}}
    cluster.interleave_write(ISVC, kube.namespace, name, kserve_write)
    kube.patch_md(name, {"spec": {"serving": {"maxReplicas": 5}}})

    isvc = kube.wait_isvc(name, lambda i: i["spec"]["predictor"]["maxReplicas"] == 5, "maxReplicas 5 applied")
    patches = [c for c in cluster.calls() if c.by_operator and c.on(ISVC, name) and c.verb == "patch"]
    assert [c.status for c in patches][-2:] == [409, 200]  # refused on the stale resourceVersion, then retried
    assert isvc["status"]["address"] == kserve_write["status"]["address"]  # KServe's write survived
    kube.wait_md(name, lambda m: m["status"]["observedGeneration"] == 2 and m["status"]["phase"] == "Succeeded",
                 "generation 2 reconciled")
    assert kube.md(name)["status"]["stableModel"]["storageUri"] == V1  # replicas change in place: no rollout
    assert not [e for e in kube.events(uid) if e["type"] == "Warning"]  # a conflict is routine, not an alarm
