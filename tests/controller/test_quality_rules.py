"""The realised-quality PrometheusRule (kanari.controller.quality_rules): emitted by the controller for a
ModelDeployment with spec.rollout.rollbackWindow, owner-referenced and idempotent, deleted with the window; valid
under the Prometheus Operator's CRD; and under the real `promtool test rules`, its alert fires for exactly the
revisions the retro-verdict (kanari.judging.retro) would roll back, for any realised figures."""

from __future__ import annotations

import copy
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kanari.api.v1alpha1 import ModelDeployment, parse_model_deployment
from kanari.controller import quality_rules
from kanari.controller.config import OperatorConfig
from kanari.controller.model_source import PackageInfo
from kanari.controller.reconcile import ClusterObservation, reconcile
from kanari.judging.retro import retro_verdict, wilson_upper
from kanari.scrape import ScrapeJobs

from devstack.stack import find_binary
from tests.support.schemas import validate_custom

NS, NAME = "ml-prod", "fraud"
JOBS = ScrapeJobs()
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/{}"
WINDOW = {"duration": "2h", "metric": "recall", "tolerance": 0.05, "alpha": 0.01, "minLabels": 50}
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
CONFIG = OperatorConfig(drift_monitor_url="http://drift.kanari:8080")


def ref(version: str, recall: float | None) -> dict[str, Any]:
    return {"revision": f"rev-{version}", "version": version, "storageUri": f"s3://models/fraud/{version}/",
            "modelPackageArn": ARN.format(version),
            "registeredMetrics": {"recall": recall, "f1": 0.8} if recall is not None else {}}


def md(window: dict[str, Any] | None = WINDOW, stable: float | None = 0.9, canary: float | None = None,
       monitoring: dict[str, Any] | None = None) -> ModelDeployment:
    status: dict[str, Any] = {"stableModel": ref("7", stable)}
    if canary is not None:
        status["canaryModel"] = ref("8", canary)
    rollout: dict[str, Any] = {"strategy": "AllAtOnce"}
    if window is not None:
        rollout["rollbackWindow"] = window
    return parse_model_deployment({
        "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"model": {"modelPackageArn": ARN.format("7"), "format": "sklearn"}, "serving": {"accelerator": "cpu"},
                 "rollout": rollout, **({"monitoring": monitoring} if monitoring else {})},
        "status": status,
    })


def test_the_rule_fits_the_prometheus_operator_crd_and_only_exists_with_a_registered_figure() -> None:
    rule = quality_rules.build_prometheus_rule(md(canary=0.92), JOBS)
    assert rule is not None
    validate_custom(rule)
    assert rule["metadata"]["name"] == "fraud-realised-quality"
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["for"] = "10 minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(broken)
    assert quality_rules.build_prometheus_rule(md(window=None), JOBS) is None, "no rollbackWindow: nothing to alert on"
    assert quality_rules.build_prometheus_rule(md(stable=None), JOBS) is None, "never a floor without a registered figure"
    assert quality_rules.build_prometheus_rule(md(stable=1.7), JOBS) is None, "nor against a figure that is no proportion"
    assert quality_rules.floors(md(canary=0.92)) == pytest.approx({"7": 0.85, "8": 0.87})


def test_a_quality_drop_reaches_the_retraining_receiver_only_when_the_model_asks_for_retraining() -> None:
    """The alert carries kanari_retrain="true" (the drift alerts' route to the receiver) exactly when
    spec.monitoring.retrain is set; the receiver then applies that ModelDeployment's own policy."""
    from kanari.retrain.policy import decide, parse_payload, policy_from_model_deployment

    retrain = {"retrain": {"pipeline": "fraud-training", "cooldown": "24h", "maxPerDay": 1}}
    routed = quality_rules.build_prometheus_rule(md(monitoring=retrain), JOBS)
    assert routed is not None
    labels = routed["spec"]["groups"][0]["rules"][0]["labels"]
    assert labels["kanari_retrain"] == "true"
    for quiet in (md(), md(monitoring={**retrain, "enabled": False}), md(monitoring={"drift": {"method": "psi"}})):
        rule = quality_rules.build_prometheus_rule(quiet, JOBS)
        assert rule is not None and "kanari_retrain" not in rule["spec"]["groups"][0]["rules"][0]["labels"]
    # As Alertmanager would send it once firing, with the rule's labels and a revision from the expression.
    [alert] = parse_payload({"version": "4", "alerts": [{
        "status": "firing", "labels": {**labels, "alertname": quality_rules.ALERT, "revision": "7"},
        "startsAt": "2026-11-30T08:00:00Z", "fingerprint": "q1"}]})
    spec = {"spec": {"monitoring": retrain}}
    decision = decide(alert, policy_from_model_deployment(spec), [], T0)
    assert decision.trigger, decision


def promtool_test(tmp_path: Path, rule: dict[str, Any], tests: list[dict[str, Any]]) -> None:
    rules = tmp_path / "quality.rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    promtool = find_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    spec = tmp_path / "tests.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def series(name: str, revision: str, values: str, metric: str = "recall", **extra: str) -> dict[str, str]:
    labels = {"job": JOBS.monitor, "namespace": NS, "model": NAME, "revision": revision, "metric": metric, **extra}
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


@pytest.mark.timeout(60)
def test_a_realised_drop_fires_after_the_hold_and_nothing_else_does(tmp_path: Path) -> None:
    rule = quality_rules.build_prometheus_rule(md(canary=0.92), JOBS)
    assert rule is not None
    upper = wilson_upper(0.6 * 200, 200, 0.01)
    inputs = [
        # Stable "7" (registered 0.90): realised recall 0.90, then 0.60 over 200 labels from minute 5;
        # two monitor replicas export it (a sharded or restarted monitor), which must not double anything.
        series("kanari_realised_quality", "7", "0.9x4 0.6x30", pod="a"),
        series("kanari_realised_quality", "7", "0.9x4 0.6x30", pod="b"),
        series("kanari_realised_quality_denominator", "7", "200x35", pod="a"),
        # Canary "8" (registered 0.92): 0.60 but over 40 labels, fewer than minLabels 50: no verdict.
        series("kanari_realised_quality", "8", "0.6x35"),
        series("kanari_realised_quality_denominator", "8", "40x35"),
        # Another metric of the same revision, and another model: not this rule's business.
        series("kanari_realised_quality", "7", "0.1x35", metric="precision"),
        series("kanari_realised_quality_denominator", "7", "900x35", metric="precision"),
        series("kanari_realised_quality", "7", "0.1x35", model="other"),
        series("kanari_realised_quality_denominator", "7", "900x35", model="other"),
    ]
    alert = {
        "exp_labels": {"severity": "critical", "namespace": NS, "model": NAME, "revision": "7", "metric": "recall"},
        "exp_annotations": {
            "summary": "Realised recall of ml-prod/fraud revision 7 is below its registered recall less 0.05",
            "description": f"From delayed ground-truth labels: the 0.99 upper bound of the realised recall is "
                           f"{upper:.4f}, below the floor (registered less 0.05; 7: 0.85, 8: 0.87) over at least 50 "
                           "labels.",
        },
    }
    promtool_test(tmp_path, rule, [{
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": quality_rules.ALERT, "exp_alerts": []},
            {"eval_time": "12m", "alertname": quality_rules.ALERT, "exp_alerts": []},  # held, not yet for 10m
            {"eval_time": "16m", "alertname": quality_rules.ALERT, "exp_alerts": [alert]},
        ],
    }])


def realised(n: int, k: int) -> float:
    return k / n


cases = st.lists(
    st.tuples(st.integers(1, 400), st.floats(0, 1), st.floats(0.3, 1.0)).map(
        lambda t: (t[0], round(t[1] * t[0]), round(t[2], 3))),  # (denominator, successes, registered)
    min_size=1, max_size=12,
)


@pytest.mark.timeout(120)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=cases, tolerance=st.sampled_from([0.0, 0.02, 0.05, 0.1]), alpha=st.sampled_from([0.01, 0.05, 0.2]),
       min_labels=st.sampled_from([1, 30, 100]))
# One that rolls back (0.60 over 200 vs 0.90 - 0.05), one within tolerance, one with too few labels.
@example(cases=[(200, 120, 0.9), (200, 176, 0.9), (20, 2, 0.9)], tolerance=0.05, alpha=0.01, min_labels=30)
def test_the_alert_fires_for_exactly_the_revisions_the_retro_verdict_rolls_back(
    tmp_path: Path, cases: list[tuple[int, int, float]], tolerance: float, alpha: float, min_labels: int,
) -> None:
    floors, inputs, expected = {}, [], []
    for i, (n, k, registered) in enumerate(cases):
        revision, value = f"r{i}", realised(n, k)
        floor = registered - tolerance
        # A bound within rounding of the floor is a coin toss between two float implementations: not a property.
        if n >= min_labels and abs(wilson_upper(k, n, alpha) - floor) < 1e-9:
            continue
        floors[revision] = floor
        inputs += [series("kanari_realised_quality", revision, f"{value!r}x3"),
                   series("kanari_realised_quality_denominator", revision, f"{n}x3")]
        verdict = retro_verdict(metric="recall", realised=value, denominator=n, registered=registered,
                                tolerance=tolerance, promoted_at=T0, now=T0, rollback_window=timedelta(hours=1),
                                alpha=alpha, min_labels=min_labels)
        if verdict.rollback:
            expected.append(revision)
    if not floors:
        return
    if cases == [(200, 120, 0.9), (200, 176, 0.9), (20, 2, 0.9)]:
        assert expected == ["r0"]  # the explicit example: the property is not vacuously "nothing fires"
    rule = {"spec": {"groups": [{"name": "t", "rules": [{
        "alert": "Drop", "expr": quality_rules.drop_expr(NS, NAME, "recall", floors, alpha, min_labels, JOBS),
    }]}]}}
    exp_alerts = [{"exp_labels": {"namespace": NS, "model": NAME, "revision": r, "metric": "recall"}}
                  for r in sorted(expected)]
    promtool_test(tmp_path, rule, [{
        "interval": "1m", "input_series": inputs,
        "alert_rule_test": [{"eval_time": "1m", "alertname": "Drop", "exp_alerts": exp_alerts}],
    }])


def body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
            "spec": spec, "status": status or {}}


def test_the_controller_owns_the_rule_while_the_window_is_set() -> None:
    spec = {"model": {"modelPackageArn": ARN.format("7"), "format": "sklearn"}, "serving": {"accelerator": "cpu"},
            "rollout": {"strategy": "AllAtOnce", "rollbackWindow": WINDOW}}
    package = PackageInfo(ARN.format("7"), "s3://models/fraud/7/", None, "Approved",
                          {"kanari:metric.recall": "0.900000", "kanari:metric.f1": "0.810000"})
    first = reconcile(body(spec), ClusterObservation(now=T0, package=package), CONFIG)
    assert first.status.stableModel is not None
    assert first.status.stableModel.registeredMetrics == {"recall": 0.9, "f1": 0.81}
    rule = first.rules["qualityRule"]
    assert rule is not None and first.rules["driftRule"] is None
    assert rule["metadata"]["ownerReferences"] == [{
        "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment", "name": NAME, "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": True,
    }]
    assert 'revision="fraud/7"' in rule["spec"]["groups"][0]["rules"][0]["expr"]
    again = reconcile(body(spec, first.status.model_dump(mode="json")), ClusterObservation(now=T0, package=package),
                      CONFIG)
    assert again.rules == first.rules, "the same facts must give the same rule"
    # The window removed: the rule is to be deleted (None), not left behind.
    gone = {**spec, "rollout": {"strategy": "AllAtOnce"}}
    assert reconcile(body(gone, again.status.model_dump(mode="json")), ClusterObservation(now=T0, package=package),
                     CONFIG).rules["qualityRule"] is None


# ------------------------------------------------------------------ one source: status, filled before it is read
class Served:
    """One ModelDeployment driven through reconcile() with its model packages, the KServe stand-in applying each
    InferenceService, and the realised-quality reading taken as the handler takes it: from the status the
    reconcile starts from (kanari.rollout.quality.observe_realised reads only while retro_due)."""

    def __init__(self, packages: dict[str, dict[str, str]]):
        from tests.controller.kserve_sim import KServeSim

        self.packages = {v: PackageInfo(ARN.format(v), f"s3://models/fraud/{v}/", None, "Approved", meta)
                         for v, meta in packages.items()}
        self.version, self.now, self.cpu = "7", T0, "2"
        self.status: dict[str, Any] = {}
        self.kserve = KServeSim("Serverless")

    def spec(self) -> dict[str, Any]:
        return {"model": {"modelPackageArn": ARN.format(self.version), "version": self.version, "format": "sklearn"},
                "serving": {"accelerator": "cpu", "deploymentMode": "Serverless", "cpu": self.cpu},
                "rollout": {"steps": [{"setWeight": 50}], "rollbackWindow": {**WINDOW, "interval": "1m"}}}

    def reconcile(self, realised: float | None = None, denominator: int = 200, action: str | None = None) -> Any:
        from kanari.api.v1alpha1 import ModelDeploymentStatus, parse_spec
        from kanari.rollout.engine import RealisedQuality, retro_due

        self.now += timedelta(minutes=1)
        status = ModelDeploymentStatus.lenient(self.status)
        reading = None
        if realised is not None and retro_due(parse_spec(self.spec()), status, self.now):
            assert status.retro is not None
            reading = RealisedQuality(status.retro.revision, "recall", realised, denominator)
        md = body(self.spec(), self.status)
        if action is not None:
            md["metadata"]["annotations"] = {"kanari.dev/action": action}
        out = reconcile(md, ClusterObservation(
            now=self.now, isvc=self.kserve.isvc, package=self.packages[self.version], realised=reading), CONFIG)
        self.status = out.status.model_dump(mode="json")
        self.kserve.apply(out.isvc)
        self.kserve.settle(ready=True)
        return out

    def forget_registered(self, role: str) -> None:
        """As a controller that did not keep registered metrics wrote it."""
        self.status[role]["registeredMetrics"] = {}

    def promoted(self, version: str) -> Any:
        """Settle on the current version, then roll `version` out until its promotion opens the rollback window."""
        for _ in range(3):
            self.reconcile()
        self.version = version
        for _ in range(10):
            out = self.reconcile()
            if out.status.retro is not None:
                return out
        raise AssertionError(f"version {version} was never promoted: {out.status.message}")


def floors_of(out: Any) -> dict[str, str]:
    """revision -> floor, as written into the rule's expression (empty: no rule)."""
    import re

    rule = out.rules.get("qualityRule")
    if rule is None:
        return {}
    expr = rule["spec"]["groups"][0]["rules"][0]["expr"]
    return dict(re.findall(r'revision="([^"]+)".*?\) < ([0-9.e-]+) and', expr))


def passing(out: Any) -> tuple[str, str]:
    c = next(c for c in out.status.conditions if c.type == "RealisedQualityPassing")
    return c.status, c.reason


def test_a_version_filled_on_its_way_to_promotion_gets_its_alert_at_once_and_its_retro_verdict_next() -> None:
    """The canary recorded by a controller without registered metrics, up to the reconcile that promotes it: each
    pass fills them from its own package first (Event RegistryFactsFilled), so the rule it emits already holds
    that version's floor, the promoting pass's included; the first reconcile inside the window (the handler reads
    the realised figure from the status the promotion wrote) judges it against that figure and rolls it back."""
    w = Served({"7": {"kanari:metric.recall": "0.9"}, "8": {"kanari:metric.recall": "0.92"}})
    for _ in range(3):
        out = w.reconcile()
    assert out.status.phase == "Succeeded" and floors_of(out) == {"7": "0.85"}
    w.version = "8"
    out = w.reconcile()
    assert out.status.canaryModel is not None and out.status.canaryModel.version == "8"
    for _ in range(10):
        # Every pass meets the canary as an older controller wrote it, the promoting one included.
        w.forget_registered("canaryModel")
        out = w.reconcile()
        assert "RegistryFactsFilled" in [e.reason for e in out.events]
        assert floors_of(out) == ({"8": "0.87"} if out.status.canaryModel is None else {"7": "0.85", "8": "0.87"}), \
            "filled in this pass, in this pass's rule"
        if out.status.canaryModel is None:
            break
    assert "Promoted" in [e.reason for e in out.events] and out.status.retro is not None
    assert out.status.stableModel is not None and out.status.stableModel.registeredMetrics == {"recall": 0.92}
    out = w.reconcile(realised=0.6)  # 0.60 over 200 labels against 0.92 - 0.05
    assert "RealisedQualityDrop" in [e.reason for e in out.events]
    assert out.status.phase == "RolledBack" and out.status.stableModel.version == "7"
    assert floors_of(out) == {"7": "0.85"}


def test_a_promoted_version_recorded_without_its_figure_is_filled_then_judged_in_the_same_reconcile() -> None:
    """Status lacks the figure, the package has it (a status written by an older controller): the next reconcile
    fills it first, then judges (condition not NoRegisteredMetric) and alerts, in that one pass; never 'no
    registered figure' forever."""
    w = Served({"7": {"kanari:metric.recall": "0.9"}, "8": {"kanari:metric.recall": "0.92"}})
    w.promoted("8")
    w.forget_registered("stableModel")
    out = w.reconcile(realised=0.9)  # 0.90 over 200: within 0.92 - 0.05
    assert [e.reason for e in out.events] == ["RegistryFactsFilled"]
    assert passing(out) == ("True", "WithinTolerance") and floors_of(out) == {"8": "0.87"}
    w.forget_registered("stableModel")
    out = w.reconcile(realised=0.6)
    reasons = [e.reason for e in out.events]
    assert reasons.index("RegistryFactsFilled") < reasons.index("RealisedQualityDrop"), reasons
    assert out.status.phase == "RolledBack"


@pytest.mark.parametrize("registered", [{}, {"kanari:metric.recall": "1.7"}, {"kanari:metric.recall": "nan"},
                                        {"kanari:metric.f1": "0.9"}])
def test_without_a_registered_figure_no_alert_and_no_retro_rollback_ever(registered: dict[str, str]) -> None:
    """A promoted version whose package registers no recall that is a proportion: reconcile after reconcile, on a
    realised recall of 0.0 over 400 labels, no rule floor for it and no rollback, and status says why."""
    w = Served({"7": {"kanari:metric.recall": "0.9"}, "8": registered})
    out = w.promoted("8")
    assert floors_of(out) == {}
    for _ in range(5):
        out = w.reconcile(realised=0.0, denominator=400)
        assert out.status.stableModel is not None and out.status.stableModel.version == "8"
        assert passing(out) == ("Unknown", "NoRegisteredMetric") and floors_of(out) == {}
        assert "RealisedQualityDrop" not in [e.reason for e in out.events]


def test_a_stable_version_recorded_without_its_figure_gets_it_from_the_same_package_under_a_serving_change() -> None:
    """The stable version recorded by an older controller, then a serving-only change (same model package, a new
    rollout revision) rolled out and aborted: the stable gets its figure from that same package (they are the
    package's facts, whatever the revision), so its alert holds through and after the aborted rollout. (Before,
    the quality rule read the fetched package's metrics by ARN for this case; status is now the one source.)"""
    from kanari.api.v1alpha1 import ACTION_ANNOTATION

    assert ACTION_ANNOTATION == "kanari.dev/action"
    w = Served({"7": {"kanari:metric.recall": "0.9"}})
    for _ in range(3):
        w.reconcile()
    w.forget_registered("stableModel")
    w.cpu = "4"  # a new rollout revision, the same model package
    out = w.reconcile()
    assert out.status.canaryModel is not None and out.status.canaryModel.revision != out.status.stableModel.revision
    assert out.status.stableModel.registeredMetrics == {"recall": 0.9}
    assert "RegistryFactsFilled" in [e.reason for e in out.events] and floors_of(out) == {"7": "0.85"}
    out = w.reconcile(action="abort/1")
    assert out.status.phase == "RolledBack" and out.status.canaryModel is None
    assert floors_of(out) == {"7": "0.85"}, "the stable version kept its alert"
