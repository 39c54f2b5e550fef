"""kill -9 in the middle of a canary: the next operator process resumes at the same step and weight,
from the status alone, without rewriting the InferenceService or repeating Events."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.operator.harness import ISVC, MD, wait_for

V1 = "s3://models/fraud/v1/model.tar.gz"
V2 = "s3://models/fraud/v2/model.tar.gz"


@pytest.mark.timeout(90)
def test_restart_mid_rollout_resumes_without_writes(env: Any) -> None:
    kube, kserve, name, cluster = env.kube, env.kserve, env.name, env.cluster
    spec = {"model": {"storageUri": V1, "format": "sklearn"}, "serving": {"accelerator": "cpu"},
            "rollout": {"strategy": "Canary", "steps": [{"setWeight": 30}, {"pause": {}}, {"setWeight": 70}, {"pause": {"duration": "1s"}}]}}
    uid = kube.create_md(name, spec)["metadata"]["uid"]
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    kserve.reconcile(name)
    kube.wait_md(name, lambda m: m.get("status", {}).get("phase") == "Succeeded", "V1 serving")
    kube.patch_md(name, {"spec": {"model": {"storageUri": V2}}})
    kube.wait_isvc(name, lambda i: i["spec"]["predictor"].get("canaryTrafficPercent") == 0, "the canary revision")
    kserve.reconcile(name)
    kube.wait_isvc(name, lambda i: i["spec"]["predictor"].get("canaryTrafficPercent") == 30, "30% to the canary")
    kserve.reconcile(name)
    paused = kube.wait_md(name, lambda m: m["status"]["phase"] == "Paused", "paused at step 1")
    kube.wait_reasons(uid, "Paused")
    time.sleep(1.2)  # let the last Events land before counting them
    isvc_before = kube.isvc(name)
    events_before = sorted((e["reason"], e["message"]) for e in kube.events(uid))

    env.operator.kill9()
    restarted = time.monotonic()
    env.operator.start()

    def reconciled_twice() -> bool:
        # Counted by the operator itself: a steady-state reconcile reads its InferenceService from the watch
        # cache and makes no API request to count.
        port = env.operator.env["KANARI_METRICS_PORT"]
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            return False
        counts = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name == "kanari_reconcile_duration_seconds_count"]
        return bool(counts) and counts[0] >= 2

    wait_for(reconciled_twice, "two reconciles by the new operator process", timeout=20)
    writes = [c for c in cluster.calls(restarted) if c.by_operator and c.verb in ("create", "patch", "delete")
              and (c.on(ISVC, name) or c.on(MD, name))]
    assert writes == [], [(c.plural, c.subresource, c.data) for c in writes]
    isvc_after = kube.isvc(name)
    assert isvc_after["metadata"]["resourceVersion"] == isvc_before["metadata"]["resourceVersion"]
    assert isvc_after["metadata"]["generation"] == isvc_before["metadata"]["generation"]
    md = kube.md(name)
    for key in ("phase", "currentStep", "canaryWeight", "rollout", "stableModel", "canaryModel"):
        assert md["status"][key] == paused["status"][key], key
    assert sorted((e["reason"], e["message"]) for e in kube.events(uid)) == events_before

    # The new process carries the rollout on from where the old one stopped.
    kube.patch_md(name, {"metadata": {"annotations": {"kanari.dev/action": "promote/after-restart"}}})
    kube.wait_isvc(name, lambda i: i["spec"]["predictor"].get("canaryTrafficPercent") == 70, "70% to the canary")
    kserve.reconcile(name)
    kube.wait_isvc(name, lambda i: "canaryTrafficPercent" not in i["spec"]["predictor"], "the promotion 1s later")
    kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: m["status"]["phase"] == "Succeeded", "Succeeded on V2")
    assert md["status"]["stableModel"]["storageUri"] == V2
