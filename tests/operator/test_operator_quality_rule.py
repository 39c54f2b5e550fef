"""The realised-quality PrometheusRule with the real operator process: created owner-referenced for a
ModelDeployment whose model package registered the rollbackWindow's metric, recorded in status.qualityRule,
deleted when the window is removed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.harness import PROMETHEUS_RULE, wait_for
from tests.support.moto import register_model_package
from tests.support.schemas import validate_custom


@pytest.mark.timeout(60)
def test_rollback_window_gets_an_owned_realised_quality_rule(env: Any, sagemaker: Any) -> None:
    kube, name = env.kube, env.name
    arn = register_model_package(sagemaker, f"{name}-group", metadata={"kanari:metric.recall": "0.910000", "kanari:metric.f1": "0.800000"})
    uid = kube.create_md(name, {
        "model": {"modelPackageArn": arn}, "serving": {"instanceType": "inf2.xlarge"},
        "rollout": {"strategy": "AllAtOnce",
                    "rollbackWindow": {"duration": "1h", "metric": "recall", "tolerance": 0.05, "minLabels": 40}},
    })["metadata"]["uid"]
    rule = kube.wait(PROMETHEUS_RULE, f"{name}-realised-quality", lambda r: True, "the realised-quality rule")
    validate_custom(rule)
    assert rule["metadata"]["ownerReferences"][0]["uid"] == uid
    alert = rule["spec"]["groups"][0]["rules"][0]
    assert alert["alert"] == "KanariRealisedQualityDrop" and ">= 40" in alert["expr"]
    assert "0.86" in alert["annotations"]["description"]  # registered 0.91 less the tolerance
    md = kube.wait_md(name, lambda m: m.get("status", {}).get("qualityRule"), "status.qualityRule")
    assert md["status"]["qualityRule"] == f"{name}-realised-quality"
    assert md["status"]["stableModel"]["registeredMetrics"] == {"recall": 0.91, "f1": 0.8}
    assert kube.get(PROMETHEUS_RULE, f"{name}-drift") is None, "no monitoring: no drift rule"

    # The window removed: the rule goes with it, and status stops naming it.
    kube.patch_md(name, {"spec": {"rollout": {"rollbackWindow": None}}})
    wait_for(lambda: kube.get(PROMETHEUS_RULE, f"{name}-realised-quality") is None, "the rule to be deleted")
    kube.wait_md(name, lambda m: not m["status"].get("qualityRule"), "status.qualityRule cleared")
    # Each change to an alert rule is an Event on the ModelDeployment (kubectl describe shows both).
    kube.wait_reasons(uid, "AlertRuleCreated", "AlertRuleDeleted")
