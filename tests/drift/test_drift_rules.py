"""Drift alerts: the PrometheusRule validates against the Prometheus Operator CRD, and the rules behave
under the real `promtool test rules` (fire after the `for:` hold, not before; silent without drift)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from drift_testlib import rule_file, write_rule_file
from kanari.api.v1alpha1 import ModelDeployment, parse_model_deployment
from kanari.controller.drift_rules import build_prometheus_rule
from kanari.scrape import ScrapeJobs

from devstack.stack import find_binary
from tests.support.schemas import UPSTREAM_CRDS, to_jsonschema

PROMETHEUS_RULE_CRD = UPSTREAM_CRDS / "monitoring.coreos.com_prometheusrules.yaml"


def validate_prometheus_rule(obj: dict[str, Any]) -> None:
    """openAPIV3Schema of the Prometheus Operator's CRD, via jsonschema (only this CRD: the others are slow to load)."""
    crd = yaml.safe_load(PROMETHEUS_RULE_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    jsonschema.Draft4Validator(to_jsonschema(version["schema"]["openAPIV3Schema"])).validate(obj)

MD: dict[str, Any] = {
    "apiVersion": "kanari.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "fraud-scorer", "namespace": "ml-prod"},
    "spec": {
        "model": {"storageUri": "s3://models/fraud/7", "format": "sklearn"},
        "serving": {"accelerator": "cpu"},
        "monitoring": {
            "drift": {"method": "psi", "warn": 0.1, "critical": 0.25, "for": "15m"},
            "retrain": {"pipeline": "fraud-training", "cooldown": "12h", "maxPerDay": 3, "parameters": {"epochs": "5"}},
        },
    },
}


def md(**monitoring: Any) -> ModelDeployment:
    doc = copy.deepcopy(MD)
    if monitoring.get("_none"):
        doc["spec"].pop("monitoring")
    else:
        doc["spec"]["monitoring"].update(monitoring)
        doc["spec"]["monitoring"] = {k: v for k, v in doc["spec"]["monitoring"].items() if v is not None}
    return parse_model_deployment(doc)


def test_prometheus_rule_fits_the_operator_crd() -> None:
    rule = build_prometheus_rule(md(), ScrapeJobs())
    assert rule is not None
    validate_prometheus_rule(rule)
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["for"] = "15 minutes"
    with pytest.raises(jsonschema.ValidationError):  # the schema is really checked
        validate_prometheus_rule(broken)
    assert rule["metadata"] == {
        "name": "fraud-scorer-drift",
        "namespace": "ml-prod",
        "labels": {
            "app.kubernetes.io/managed-by": "kanari",
            "app.kubernetes.io/component": "drift-alerts",
            "kanari.dev/model-deployment": "fraud-scorer",
        },
    }
    assert "ownerReferences" not in rule["metadata"]
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert names == [
        "KanariFeatureDriftWarning", "KanariPredictionDriftWarning",
        "KanariFeatureDriftCritical", "KanariPredictionDriftCritical", "KanariSchemaViolations",
    ]


def test_no_rule_without_monitoring() -> None:
    assert build_prometheus_rule(md(_none=True), ScrapeJobs()) is None
    assert build_prometheus_rule(md(enabled=False), ScrapeJobs()) is None
    assert rule_file([md(enabled=False)]) == {"groups": []}


def test_retrain_label_only_on_critical_alerts_and_only_with_retrain() -> None:
    def labels(rule: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {r["alert"]: r["labels"] for g in rule["spec"]["groups"] for r in g["rules"]}

    with_retrain = labels(build_prometheus_rule(md(), ScrapeJobs()))  # type: ignore[arg-type]
    assert with_retrain["KanariFeatureDriftCritical"]["kanari_retrain"] == "true"
    assert with_retrain["KanariPredictionDriftCritical"]["kanari_retrain"] == "true"
    assert "kanari_retrain" not in with_retrain["KanariFeatureDriftWarning"]
    without = labels(build_prometheus_rule(md(retrain=None), ScrapeJobs()))  # type: ignore[arg-type]
    assert all("kanari_retrain" not in v for v in without.values())


def promtool_test(tmp_path: Path, rules: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "tests.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run([find_binary("promtool"), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)


MONITOR = f'job="{ScrapeJobs().monitor}"'
SERIES = f'kanari_feature_drift{{{MONITOR},namespace="ml-prod",model="fraud-scorer",endpoint="default",revision="7",feature="amount",method="psi"}}'
OTHER_METHOD = SERIES.replace('method="psi"', 'method="linf"')
PRED = f'kanari_prediction_drift{{{MONITOR},namespace="ml-prod",model="fraud-scorer",endpoint="default",revision="7",method="psi"}}'
SCHEMA = f'kanari_schema_violations_total{{{MONITOR},namespace="ml-prod",model="fraud-scorer",kind="unseen_category"}}'


def feature_alert(severity: str, value: str, threshold: str) -> dict[str, Any]:
    labels = {
        "namespace": "ml-prod", "model": "fraud-scorer", "feature": "amount", "severity": severity, "kanari_method": "psi",
    }
    annotations = {
        "summary": f"Input feature amount of ml-prod/fraud-scorer has drifted ({severity})",
        "description": f"Feature amount of model ml-prod/fraud-scorer: psi {value} is above {threshold} for 15m "
        "(live traffic vs the training baseline).",
    }
    if severity == "critical":
        labels["kanari_retrain"] = "true"
        annotations.update(
            retrain_pipeline="fraud-training", retrain_cooldown="12h", retrain_max_per_day="3",
            retrain_parameters='{"epochs": "5"}',
        )
    return {"exp_labels": labels, "exp_annotations": annotations}


@pytest.mark.timeout(60)
def test_rules_fire_after_the_hold_and_stay_silent_without_drift(tmp_path: Path) -> None:
    rules = write_rule_file([md()], tmp_path / "kanari-drift.rules.yml")
    check = subprocess.run([find_binary("promtool"), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = [
        {   # PSI 0.4 from minute 2 on: pending for 15m, firing from minute 17.
            "interval": "1m",
            "input_series": [
                {"series": SERIES, "values": "0.05 0.05 0.4x40"},
                {"series": OTHER_METHOD, "values": "0.9x40"},  # another method's series never counts
            ],
            "alert_rule_test": [
                {"eval_time": "16m", "alertname": "KanariFeatureDriftCritical", "exp_alerts": []},
                {"eval_time": "17m", "alertname": "KanariFeatureDriftCritical",
                 "exp_alerts": [feature_alert("critical", "0.400", "0.25")]},
                {"eval_time": "17m", "alertname": "KanariFeatureDriftWarning",
                 "exp_alerts": [feature_alert("warning", "0.400", "0.1")]},
            ],
        },
        {   # between warn and critical: only the warning
            "interval": "1m",
            "input_series": [{"series": SERIES, "values": "0.18x40"}],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "KanariFeatureDriftWarning",
                 "exp_alerts": [feature_alert("warning", "0.180", "0.1")]},
                {"eval_time": "20m", "alertname": "KanariFeatureDriftCritical", "exp_alerts": []},
            ],
        },
        {   # drift that does not hold for 15m never fires; no drift at all stays silent
            "interval": "1m",
            "input_series": [
                {"series": SERIES, "values": "0.4x10 0.05x30"},
                {"series": PRED, "values": "0.02x40"},
            ],
            "alert_rule_test": [
                {"eval_time": f"{t}m", "alertname": name, "exp_alerts": []}
                for t in (5, 12, 30)
                for name in ("KanariFeatureDriftCritical", "KanariFeatureDriftWarning",
                             "KanariPredictionDriftCritical", "KanariSchemaViolations")
            ],
        },
        {   # prediction drift and schema violations
            "interval": "1m",
            "input_series": [
                {"series": PRED, "values": "0.5x40"},
                {"series": SCHEMA,
                 "values": "0+10x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "KanariPredictionDriftCritical",
                 "exp_alerts": [{
                     "exp_labels": {"namespace": "ml-prod", "model": "fraud-scorer", "severity": "critical",
                                    "kanari_method": "psi", "kanari_retrain": "true"},
                     "exp_annotations": {
                         "summary": "Predictions of ml-prod/fraud-scorer have drifted (critical)",
                         "description": "Predictions of model ml-prod/fraud-scorer: psi 0.500 vs the training target is "
                         "above 0.25 for 15m.",
                         "retrain_pipeline": "fraud-training", "retrain_cooldown": "12h", "retrain_max_per_day": "3",
                         "retrain_parameters": '{"epochs": "5"}',
                     },
                 }]},
                {"eval_time": "14m", "alertname": "KanariPredictionDriftCritical", "exp_alerts": []},
                {"eval_time": "25m", "alertname": "KanariSchemaViolations",
                 "exp_alerts": [{
                     "exp_labels": {"namespace": "ml-prod", "model": "fraud-scorer", "severity": "warning",
                                    "kind": "unseen_category"},
                     "exp_annotations": {
                         "summary": "Requests to ml-prod/fraud-scorer break the training schema (unseen_category)",
                         "description": "50 unseen_category violations in the last 5m for ml-prod/fraud-scorer.",
                     },
                 }]},
            ],
        },
    ]
    result = promtool_test(tmp_path, rules, tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
