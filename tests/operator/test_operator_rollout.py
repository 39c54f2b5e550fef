"""Canary rollouts driven by the real operator: pause steps and operator actions, and an analysis step
whose Prometheus cannot be reached (never a promotion on missing data)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.operator.harness import ISVC, MD, condition, wait_for

V1 = "s3://models/fraud/v1/model.tar.gz"
V2 = "s3://models/fraud/v2/model.tar.gz"


def deploy_v1(env: Any, rollout: dict[str, Any]) -> str:
    """A ModelDeployment serving V1 (KServe reported it ready); returns its uid."""
    kube, kserve, name = env.kube, env.kserve, env.name
    spec = {"model": {"storageUri": V1, "format": "sklearn"}, "serving": {"accelerator": "cpu"}, "rollout": rollout}
    uid = kube.create_md(name, spec)["metadata"]["uid"]
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    kserve.reconcile(name)
    kube.wait_md(name, lambda m: m.get("status", {}).get("phase") == "Succeeded", "V1 deployed")
    return str(uid)


def canary_weight(isvc: dict[str, Any]) -> int | None:
    return isvc["spec"]["predictor"].get("canaryTrafficPercent")


def start_v2(env: Any) -> None:
    """Ask for V2 and let KServe bring its revision up at 0% traffic."""
    env.kube.patch_md(env.name, {"spec": {"model": {"storageUri": V2}}})
    env.kube.wait_isvc(
        env.name, lambda i: i["spec"]["predictor"]["model"]["storageUri"] == V2 and canary_weight(i) == 0,
        "the V2 revision at 0%",
    )
    env.kserve.reconcile(env.name)


@pytest.mark.timeout(60)
def test_canary_pauses_until_promoted(env: Any) -> None:
    kube, kserve, name = env.kube, env.kserve, env.name
    uid = deploy_v1(env, {
        "strategy": "Canary",
        "steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "1s"}}],
    })
    start_v2(env)

    kube.wait_isvc(name, lambda i: canary_weight(i) == 20, "20% to the canary")
    kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: m["status"]["phase"] == "Paused", "the rollout to pause")
    assert (md["status"]["currentStep"], md["status"]["canaryWeight"]) == (1, 20)
    paused = condition(md, "Paused")
    assert (paused["status"], paused["reason"]) == ("True", "PauseStep")
    time.sleep(1.5)  # an indefinite pause holds over resyncs
    assert canary_weight(kube.isvc(name)) == 20
    assert kube.md(name)["status"]["stableModel"]["storageUri"] == V1

    # `kanari promote` sets this annotation; the spec stays as Git has it.
    kube.patch_md(name, {"metadata": {"annotations": {"kanari.dev/action": "promote/1"}}})
    kube.wait_isvc(name, lambda i: canary_weight(i) == 60, "60% to the canary")
    kserve.reconcile(name)
    kube.wait_isvc(name, lambda i: canary_weight(i) is None, "the promotion (canaryTrafficPercent removed)")
    kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: m["status"]["phase"] == "Succeeded", "Succeeded on V2")
    assert md["status"]["stableModel"]["storageUri"] == V2
    assert md["status"]["rollout"]["lastAction"] == "promote/1"
    assert condition(md, "Paused")["status"] == "False"

    events = wait_for(
        lambda: (ev := [(e["reason"], e["message"]) for e in kube.events(uid)]) and ("Promoted" in dict(ev)) and ev,
        "a Promoted Event",
    )
    weights = [m for r, m in events if r == "WeightChanged"]
    assert weights == ["canary weight 0 -> 20", "canary weight 20 -> 60"]
    reasons = [r for r, _ in events]
    assert reasons.count("Paused") == 1 and reasons.count("ActionConsumed") == 1 and "Promoted" in reasons


@pytest.mark.timeout(60)
def test_unreachable_prometheus_never_promotes(env: Any) -> None:
    kube, kserve, name = env.kube, env.kserve, env.name
    uid = deploy_v1(env, {
        "strategy": "Canary",
        "steps": [{"setWeight": 10}, {"analysis": {}}, {"setWeight": 100}],
        "analysis": {
            "interval": "1s",
            "consecutiveErrorLimit": 1000,  # hold through the outage: this test ends it by hand
            "metrics": [{"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.99}}],
        },
    })
    start_v2(env)
    kube.wait_isvc(name, lambda i: canary_weight(i) == 10, "10% to the canary")
    kserve.reconcile(name)

    md = kube.wait_md(
        name, lambda m: (condition(m, "AnalysisPassing") or {}).get("reason") == "PrometheusUnavailable",
        "analysis to report Prometheus as unavailable",
    )
    passing = condition(md, "AnalysisPassing")
    assert passing["status"] == "False"
    assert "Prometheus unavailable" in passing["message"] and "spec.rollout.analysis.metrics[0]" in passing["message"]
    run = md["status"]["analysisRuns"][0]
    assert run["name"] == "step-1" and [m["phase"] for m in run["metrics"][0]["measurements"]][-1] == "Error"
    assert [p["reason"] for p in md["status"]["pauseConditions"]] == ["PrometheusUnavailable"]

    def measured(m: dict[str, Any]) -> int:
        return int(m["status"]["analysisRuns"][0]["metrics"][0]["count"])

    before = measured(md)
    kube.wait_md(name, lambda m: measured(m) >= before + 1, "another measurement")
    md = kube.md(name)
    assert md["status"]["phase"] not in ("Succeeded", "Promoting")
    assert md["status"]["stableModel"]["storageUri"] == V1
    assert md["status"]["canaryWeight"] == 10
    assert canary_weight(kube.isvc(name)) == 10
    warnings = wait_for(
        lambda: [e for e in kube.events(uid) if e["reason"] == "PrometheusUnavailable"], "a PrometheusUnavailable Event"
    )
    assert all(e["type"] == "Warning" for e in warnings)
    assert "traffic unchanged" in warnings[0]["message"]

    # An operator gives up on it: rolled back. In Serverless mode the stable template goes back in pinned at 0%
    # (KServe keeps the last rolled-out revision, V1, at 100%), and the pin goes once its own revision is Ready.
    changes_before = len([c for c in env.cluster.calls() if c.by_operator and c.on(ISVC, name) and c.verb == "patch"])
    kube.patch_md(name, {"metadata": {"annotations": {"kanari.dev/action": "abort/1"}}})
    md = kube.wait_md(name, lambda m: m["status"]["phase"] == "RolledBack", "the rollback")
    isvc = kube.wait_isvc(name, lambda i: canary_weight(i) == 0, "the stable template pinned at 0%")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == V1
    assert md["status"]["stableModel"]["storageUri"] == V1 and not md["status"].get("canaryModel")
    kube.wait_reasons(uid, "RolledBack")
    kserve.reconcile(name)
    kube.wait_isvc(name, lambda i: canary_weight(i) is None, "the pin dropped once V1's new revision is Ready")
    kserve.reconcile(name)
    time.sleep(1.2)  # a resync later, the rollback holds: two writes (pin, unpin), no flapping
    patches = [c for c in env.cluster.calls() if c.by_operator and c.on(ISVC, name) and c.verb == "patch"]
    assert len(patches) == changes_before + 2

    # Settled: resyncs write nothing, although the stored analysis runs hold measurements with no value (nulls
    # inside lists, which a merge patch keeps).
    settled = time.monotonic()
    time.sleep(2.5)
    writes = [c for c in env.cluster.calls(settled) if c.by_operator and c.verb in ("patch", "create")
              and (c.on(ISVC, name) or c.on(MD, name, subresource="status"))]
    assert writes == [], [(c.plural, c.subresource) for c in writes]
