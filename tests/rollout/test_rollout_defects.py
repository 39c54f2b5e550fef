"""Regression tests for the rollout defects of issue 10, and the Argo Rollouts analysis semantics that replaced
them (failureLimit, inconclusiveLimit, consecutiveErrorLimit, count, initialDelay, dryRun, background
analysis, failureCondition). Each test names the defect it pins down."""

from __future__ import annotations

import pytest
from kanari.api.conditions import get_condition
from kanari.api.v1alpha1 import MetricResult, ModelDeploymentStatus, SpecError
from kanari.rollout.engine import TRANSITIONS, State, due_metrics
from kanari.rollout.judge import judge
from rollout_testlib import METRICS, Driver, make_spec, metric_of, pauses, reasons, ref, results, run_of

SR = {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.99}}


def rolling(rollout: dict, version: str = "v2") -> Driver:
    d = Driver(make_spec("v1", rollout))
    d.step()
    assert d.status.phase == "Succeeded"
    d.spec = make_spec(version, rollout)
    d.step()
    return d


def test_failing_canary_at_low_traffic_does_not_keep_its_weight():
    """Defect: too few samples is Inconclusive, and past inconclusiveLimit the rollout paused for a person with
    no deadline, still sending the canary its weight (a canary failing 100% of its 3 requests kept them)."""
    rollout = {"steps": [{"setWeight": 25}, {"analysis": {}}], "analysis": {"interval": "1m", "metrics": [SR]}}
    d = rolling(rollout)
    assert d.status.canaryWeight == 25
    few = judge(make_spec("v2", rollout).rollout.analysis.metrics[0], 0.0, 3, 100, "t")
    assert few.verdict == "Inconclusive" and "3 samples" in few.message
    for _ in range(3):  # inconclusiveLimit 2: the third one pauses
        d.tick(60)
        out = d.step(measurement=[few])
    assert pauses(out.status) == ["AnalysisInconclusive"] and out.status.phase == "Paused"
    assert out.canary_weight == 0 and out.canary == ref(d.spec), "the canary is kept, at 0%, for a person to decide"
    d.tick(24 * 3600)
    assert d.step().canary_weight == 0 and not d.due(), "nothing is measured or routed while it waits"


def test_a_failed_metric_does_not_hide_an_erroring_or_inconclusive_sibling():
    """Defect: in one measurement a Failed metric returned early, so an Error or Inconclusive metric beside it
    was neither counted nor reported."""
    metrics = [*METRICS, {"name": "custom", "query": "x", "minSampleCount": 0, "thresholdRange": {"max": 1}}]
    rollout = {"steps": [{"setWeight": 10}, {"analysis": {"count": 3}}],
               "analysis": {"interval": "30s", "failureLimit": 1, "metrics": metrics}}
    d = rolling(rollout)
    d.tick(30)
    out = d.step(measurement=[
        MetricResult(name="success-rate", verdict="Failed", value=0.5, threshold=">= 0.99", message="sr: breach"),
        MetricResult(name="p99", verdict="Error", message="p99: Prometheus unavailable: ConnectError"),
        MetricResult(name="custom", verdict="Inconclusive", message="custom: the query returned no data"),
    ])
    assert [(m.name, m.failed, m.error, m.inconclusive) for m in run_of(out.status, "step-1").metrics] == [
        ("success-rate", 1, 0, 0), ("p99", 0, 1, 0), ("custom", 0, 0, 1)]
    cond = get_condition(out.status.conditions, "AnalysisPassing")
    assert cond.reason == "AnalysisFailed"
    for words in ("metrics[0]: sr: breach", "metrics[1]: p99: Prometheus unavailable", "metrics[2]: custom: the query"):
        assert words in cond.message
    assert pauses(out.status) == ["PrometheusUnavailable"], "the erroring sibling holds the rollout"


def test_prometheus_outage_longer_than_progress_deadline_is_governed_by_consecutive_error_limit():
    """Defect: an outage longer than progressDeadline rolled back although no metric failed. Now errors hold
    the rollout (the deadline does not run) until consecutiveErrorLimit is exceeded, which rolls back."""
    rollout = {"steps": [{"setWeight": 10}, {"analysis": {}}], "progressDeadline": "2m",
               "analysis": {"interval": "1m", "consecutiveErrorLimit": 5, "metrics": [SR]}}
    d = rolling(rollout)
    down = [MetricResult(name="success-rate", verdict="Error", message="success-rate: Prometheus unavailable: x")]
    for i in range(5):
        d.tick(60)
        out = d.step(measurement=down)
        assert out.status.phase == "Paused" and out.canary_weight == 10, f"error {i + 1} of 5 holds"
    assert metric_of(out.status, "step-1", "success-rate").consecutiveError == 5
    d.tick(60)
    out = d.step(measurement=down)
    assert out.status.phase == "RolledBack" and out.canary_weight == 0
    assert get_condition(out.status.conditions, "Progressing").reason == "AnalysisError"
    assert "6 times in a row (> consecutiveErrorLimit 5)" in out.status.message


def test_blue_green_preview_lasts_preview_duration():
    """Defect: blueGreen.previewDuration was never read; the preview lasted analysis.count x interval."""
    bg = {"strategy": "BlueGreen", "blueGreen": {"previewDuration": "5m", "bakeDuration": "0s"},
          "analysis": {"interval": "1m", "metrics": [SR]}}
    d = rolling(bg)
    v1 = d.status.stableModel
    for _ in range(4):
        d.tick(60)
        out = d.step(measurement=results(d.spec))
        assert out.canary_weight == 0 and out.stable == v1, "still previewing before previewDuration"
    d.tick(60)
    out = d.step(measurement=results(d.spec))
    assert metric_of(out.status, "step-1", "success-rate").successful == 5
    assert out.stable == ref(d.spec), "switched after 5 one-minute measurements = previewDuration"
    # Without analysis the preview is a pause of previewDuration.
    plain = rolling({"strategy": "BlueGreen", "blueGreen": {"previewDuration": "3m", "bakeDuration": "0s"}})
    plain.tick(179)
    assert plain.step().canary_weight == 0 and plain.status.phase == "Paused"
    plain.tick(1)
    assert plain.step().status.stableModel == ref(plain.spec)


def test_custom_query_without_sample_query_must_opt_out_explicitly():
    """Defect: a custom query without sampleQuery skipped minSampleCount silently (it passed on 8 requests)."""
    bad = {"name": "errors", "query": "sum(x)", "thresholdRange": {"max": 0.01}}
    with pytest.raises(SpecError) as info:
        make_spec("v1", {"analysis": {"minSampleCount": 1000, "metrics": [bad]}})
    assert info.value.field == "spec.rollout.analysis.metrics[0].sampleQuery"
    assert "minSampleCount: 0" in info.value.message
    spec = make_spec("v1", {"analysis": {"metrics": [{**bad, "minSampleCount": 0}]}})
    m = spec.rollout.analysis.metrics[0]
    r = judge(m, 0.001, None, None, "t")
    assert r.verdict == "Successful" and "sample count not checked (minSampleCount: 0)" in r.message
    make_spec("v1", {"analysis": {"metrics": [{**bad, "sampleQuery": "sum(y)"}]}})


# ------------------------------------------------------------------------------- Argo Rollouts semantics
def test_count_counts_judged_measurements_and_never_ends_on_missing_data():
    rollout = {"steps": [{"setWeight": 10}, {"analysis": {"count": 2}}],
               "analysis": {"interval": "30s", "inconclusiveLimit": 5, "metrics": [SR]}}
    d = rolling(rollout)
    for verdict in ("Inconclusive", "Successful", "Inconclusive"):
        d.tick(30)
        d.step(measurement=results(d.spec, verdict))
    sr = metric_of(d.status, "step-1", "success-rate")
    assert (sr.count, sr.successful, sr.inconclusive, sr.phase) == (3, 1, 2, "Running")
    d.tick(30)
    out = d.step(measurement=results(d.spec))
    assert run_of(out.status, "step-1").phase == "Successful" and out.status.stableModel == ref(d.spec)


def test_initial_delay_postpones_the_first_measurement():
    rollout = {"steps": [{"setWeight": 10}, {"analysis": {}}],
               "analysis": {"interval": "30s", "metrics": [{**SR, "initialDelay": "2m"}]}}
    d = rolling(rollout)
    d.tick(119)
    assert not d.due()
    d.tick(1)
    assert due_metrics(d.spec, d.status, d.now) == ["success-rate"]


def test_dry_run_metric_is_measured_and_shown_but_never_gates():
    metrics = [SR, {"name": "p99", "template": "request-latency-p99", "thresholdRange": {"max": 0.25}, "dryRun": True}]
    rollout = {"steps": [{"setWeight": 10}, {"analysis": {}}], "analysis": {"interval": "30s", "metrics": metrics}}
    d = rolling(rollout)
    d.tick(30)
    out = d.step(measurement=results(d.spec, p99="Failed"))
    assert out.status.stableModel == ref(d.spec), "promoted although the dry-run metric failed"
    p99 = metric_of(out.status, "step-1", "p99")
    assert p99.dryRun and p99.failed == 1 and p99.measurements[-1].phase == "Failed"
    assert "DryRunMetric" in reasons(out)


def test_background_analysis_sees_a_regression_during_a_long_pause():
    rollout = {"steps": [{"setWeight": 20}, {"pause": {"duration": "1h"}}, {"setWeight": 50}],
               "analysis": {"interval": "1m", "background": {}, "metrics": [SR]}}
    d = rolling(rollout)
    assert d.status.phase == "Paused" and pauses(d.status) == ["PauseStep"]
    for _ in range(3):
        d.tick(60)
        d.step(measurement=results(d.spec))
    assert metric_of(d.status, "background", "success-rate").successful == 3
    d.tick(60)
    out = d.step(measurement=results(d.spec, "Failed"))
    assert out.status.phase == "RolledBack" and out.canary_weight == 0
    assert "analysis run background" in out.status.message and run_of(out.status, "background").phase == "Failed"


def test_failure_condition_leaves_an_inconclusive_band():
    rollout = {"steps": [{"setWeight": 10}, {"analysis": {}}],
               "analysis": {"metrics": [{**SR, "thresholdRange": {"min": 0.99}, "failureCondition": "result < 0.95"}]}}
    m = make_spec("v2", rollout).rollout.analysis.metrics[0]
    assert judge(m, 0.995, 500, 100, "t").verdict == "Successful"
    band = judge(m, 0.97, 500, 100, "t")
    assert band.verdict == "Inconclusive" and "between pass and fail" in band.message
    assert judge(m, 0.9, 500, 100, "t").verdict == "Failed"


def test_the_transition_table_has_no_path_from_serving_to_a_new_model_without_a_canary():
    # Only "start" (a canary at 0%) leaves STABLE or ROLLED_BACK for another model; "replace" is only for a first
    # deployment never seen serving. "retro-rollback" returns to the version the last promotion replaced, never
    # to a new one (test_rollout_properties checks it on every random sequence).
    assert {m for (s, m) in TRANSITIONS if s in (State.STABLE, State.ROLLED_BACK)} <= {
        "start", "retry", "supersede", "retro-rollback"}
    assert {s for (s, m) in TRANSITIONS if m == "replace"} == {State.DEPLOYING, State.DEPLOY_FAILED}


def test_a_status_written_before_the_rework_keeps_its_rollback_and_its_canary():
    """An operator upgrade must not retry a rolled-back revision nor treat a serving model as a first deployment
    (which may be replaced without a canary)."""
    spec = make_spec("v2", {"steps": [{"setWeight": 10}, {"pause": {}}]})
    v1 = ref(make_spec("v1"))
    legacy_rolled_back = {"phase": "RolledBack", "stableModel": v1.model_dump(), "canaryWeight": 0,
                          "rollout": {"revision": spec.rollout_revision(), "abortedRevision": spec.rollout_revision(),
                                      "lastAction": "abort/1"}}
    d = Driver(spec, ModelDeploymentStatus.model_validate(legacy_rolled_back))
    out = d.step()
    assert out.status.phase == "RolledBack" and out.canary is None and "RolloutStarted" not in reasons(out)
    legacy_serving = {"phase": "Succeeded", "stableModel": v1.model_dump(), "rollout": {"revision": v1.revision}}
    d = Driver(spec, ModelDeploymentStatus.model_validate(legacy_serving))
    out = d.step(canary_ready=False)
    assert out.canary == ref(spec) and out.stable == v1 and out.canary_weight == 0 and "RolloutStarted" in reasons(out)
    legacy_paused = {"phase": "Paused", "stableModel": v1.model_dump(), "canaryModel": ref(spec).model_dump(),
                     "canaryWeight": 10, "currentStep": 1,
                     "rollout": {"revision": spec.rollout_revision(), "pausedReason": "PausedByUser",
                                 "stepStartedAt": "2026-03-01T11:00:00Z"}}
    d = Driver(spec, ModelDeploymentStatus.model_validate(legacy_paused))
    out = d.step()
    assert out.status.phase == "Paused" and pauses(out.status) == ["PausedByUser"] and out.canary_weight == 10
