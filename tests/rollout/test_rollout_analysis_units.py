"""Verdicts, PromQL building, query variables and the controller metrics, without a Prometheus."""

from __future__ import annotations

import math

import pytest
from kanari import observability
from kanari.api.v1alpha1 import MetricSpec, ModelDeploymentStatus, ModelRef
from kanari.rollout.analysis import variables
from kanari.rollout.judge import judge
from kanari.rollout.templates import TemplateError, metric_query
from kanari.scrape import ScrapeJobs
from prometheus_client import generate_latest
from rollout_testlib import METRICS, make_spec

SR = MetricSpec.model_validate(METRICS[0])


@pytest.mark.parametrize(("value", "samples", "verdict", "words"), [
    (0.995, 500, "Successful", "meets >= 0.99"),
    (0.97, 500, "Failed", "value 0.97 breaches >= 0.99"),
    (None, 500, "Inconclusive", "no data"),
    (math.nan, 500, "Inconclusive", "NaN"),
    (0.999, 12, "Inconclusive", "12 samples in the window, fewer than minSampleCount 100"),
    (0.999, None, "Inconclusive", "no samples"),
])
def test_verdicts_never_pass_on_missing_data(value, samples, verdict, words):
    r = judge(SR, value, samples, 100, "t")
    assert r.verdict == verdict and words in r.message and r.message.startswith("success-rate:")


def test_success_condition_is_read_and_applied():
    m = MetricSpec(name="err", query="x", successCondition="result >= 0.1 && result < 0.3")
    assert judge(m, 0.2, None, None, "t").verdict == "Successful"
    assert judge(m, 0.3, None, None, "t").verdict == "Failed"
    assert judge(m, 0.05, None, None, "t").threshold == "result >= 0.1 && result < 0.3"


def test_one_query_carries_value_samples_and_stable():
    spec = make_spec("v2", {"analysis": {"interval": "90s", "metrics": METRICS}})
    q = metric_query(spec, SR, {"namespace": "ml", "name": "fraud", "canaryRevision": "r2", "stableRevision": "r1"})
    # Three parts (canary value, its sample count, stable value) glued into one query.
    assert q.combined and q.promql.count(" or label_replace(") == 2
    assert 'revision_name="r2"' in q.promql and 'revision_name="r1"' in q.promql and "[1m30s]" in q.promql
    raw = make_spec("v2", {"analysis": {"metrics": METRICS}}, serving={"accelerator": "cpu",
                                                                       "deploymentMode": "RawDeployment"})
    q = metric_query(raw, SR, {"namespace": "ml", "name": "fraud", "canaryRevision": "r2", "stableRevision": "r1"})
    assert 'request_postprocess_seconds_count{namespace="ml", kanari_dev_revision="r2"}' in q.promql


def test_custom_query_variables_are_checked():
    m = MetricSpec(name="c", query='sum(x{ns="{{namespace}}", rev="{{ canaryRevision }}", z="{{zone}}"})',
                   thresholdRange={"max": 1}, minSampleCount=0)
    spec = make_spec("v2", {"analysis": {"metrics": [m.model_dump(exclude_none=True)]}})
    with pytest.raises(TemplateError, match=r"unknown variable \{\{zone\}\}"):
        metric_query(spec, m, {"namespace": "ml", "canaryRevision": "r2"})
    ok = MetricSpec(name="c", query='sum(x{rev="{{canaryRevision}}"})', thresholdRange={"max": 1}, minSampleCount=0)
    with pytest.raises(TemplateError, match=r"\{\{canaryRevision\}\} has no value"):
        metric_query(spec, ok, {"canaryRevision": ""})
    assert not metric_query(spec, ok, {"canaryRevision": "r2"}).combined


def test_variables_come_from_the_inference_service_in_serverless_mode():
    spec = make_spec("v2")
    status = ModelDeploymentStatus(stableModel=ModelRef(revision="a1"), canaryModel=ModelRef(revision="b2"))
    isvc = {"status": {"components": {"predictor": {"traffic": [
        {"revisionName": "fraud-predictor-00002", "percent": 10, "tag": "latest", "latestRevision": True},
        {"revisionName": "fraud-predictor-00001", "percent": 90, "tag": "prev"}]}}}}
    v = variables("ml", "fraud", spec, status, isvc, jobs=ScrapeJobs())
    assert v["canaryRevision"] == "fraud-predictor-00002" and v["stableRevision"] == "fraud-predictor-00001"
    assert variables("ml", "fraud", spec, status, jobs=ScrapeJobs())["canaryRevision"] == "", "unknown stays empty, never guessed"
    raw = make_spec("v2", serving={"accelerator": "cpu", "deploymentMode": "RawDeployment"})
    jobs = ScrapeJobs(monitor='dm"x', controller="ctl")
    assert variables("ml", "fraud", raw, status, jobs=jobs) == {"namespace": "ml", "name": "fraud", "canaryRevision": "b2",
                                                      # quoted for a label matcher, like every other variable
                                                      "monitorJob": 'dm\\"x', "controllerJob": "ctl",
                                                      "stableRevision": "a1", "canaryTag": "ml.fraud.b2",
                                                      "stableTag": "ml.fraud.a1", "canaryMonitorRevision": "b2",
                                                      # no figure registered: empty, so a CBPE query is an Error
                                                      "canaryRegisteredF1": "", "canaryRegisteredRocAuc": ""}


def test_controller_metrics_count_each_promotion_and_rollback_once():
    v1, v2 = ModelRef(revision="a1"), ModelRef(revision="b2")
    rolling = ModelDeploymentStatus(phase="Progressing", stableModel=v1, canaryModel=v2, canaryWeight=30)
    rolled = ModelDeploymentStatus.model_validate({
        "phase": "RolledBack", "stableModel": v1.model_dump(),
        "conditions": [{"type": "Progressing", "status": "False", "reason": "AnalysisFailed",
                        "lastTransitionTime": "2026-03-01T12:00:00Z"}]})
    promoted = ModelDeploymentStatus(phase="Succeeded", stableModel=v2)
    for status in (rolling, rolling, rolled, rolled, rolling, promoted, promoted):
        observability.observe("ml", "obs-test", status)
    text = generate_latest(observability.REGISTRY).decode()
    assert 'kanari_rollbacks_total{name="obs-test",namespace="ml",reason="AnalysisFailed"} 1.0' in text
    assert 'kanari_promotions_total{name="obs-test",namespace="ml"} 1.0' in text
    assert 'kanari_modeldeployment_phase{kanari_modeldeployment_phase="Succeeded",name="obs-test",namespace="ml"} 1.0' in text
    assert 'kanari_canary_weight_percent{name="obs-test",namespace="ml"} 0.0' in text
    measured = ModelDeploymentStatus.model_validate({**rolling.model_dump(mode="json"), "analysisRuns": [
        {"name": "step-1", "revision": "b2", "step": 1, "metrics": [{"name": "success-rate", "measurements": [
            {"phase": "Successful", "value": 0.97, "finishedAt": "2026-03-01T12:00:00Z"},
            {"phase": "Failed", "value": 0.42, "finishedAt": "2026-03-01T12:01:00Z"}]}]}]})
    observability.observe("ml", "obs-test", measured)
    text = generate_latest(observability.REGISTRY).decode()
    assert 'kanari_analysis_value{metric="success-rate",name="obs-test",namespace="ml"} 0.42' in text
    assert 'kanari_analysis_verdict{kanari_analysis_verdict="Failed",metric="success-rate",name="obs-test",namespace="ml"} 1.0' in text
    observability.forget("ml", "obs-test", ("success-rate",))
    assert 'name="obs-test"' not in generate_latest(observability.REGISTRY).decode()
