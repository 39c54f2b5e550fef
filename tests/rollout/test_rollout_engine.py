"""The rollout engine, scenario by scenario, as a user sees it in status, traffic and Events."""

from __future__ import annotations

from kanari.api.conditions import get_condition
from kanari.api.v1alpha1 import MetricResult, ModelDeploymentStatus
from kanari.rollout.engine import due_metrics
from rollout_testlib import METRICS, Driver, make_spec, metric_of, pauses, reasons, ref, results, run_of

CANARY = {
    "strategy": "Canary",
    "steps": [{"setWeight": 10}, {"analysis": {}}, {"setWeight": 50}, {"pause": {"duration": "1m"}}],
    "analysis": {"interval": "30s", "metrics": METRICS},
}


def serving(spec_v1) -> Driver:
    """A driver whose v1 is deployed and Succeeded."""
    d = Driver(spec_v1)
    d.step()
    assert d.status.phase == "Succeeded"
    return d


def test_first_deployment_goes_straight_to_stable_without_canary():
    d = Driver(make_spec("v1", CANARY))
    out = d.step(stable_ready=False, canary_ready=False)
    assert out.stable == ref(d.spec) and out.canary is None and out.canary_weight == 0
    assert out.status.phase == "Progressing" and "Deploying" in reasons(out)
    d.tick(5)
    out = d.step()
    assert out.status.phase == "Succeeded" and reasons(out) == ["Deployed"]


def test_first_deployment_that_never_gets_ready_fails_at_the_deadline():
    d = Driver(make_spec("v1", {**CANARY, "progressDeadline": "2m"}))
    d.step(stable_ready=False)
    d.tick(121)
    out = d.step(stable_ready=False)
    assert out.status.phase == "Failed" and "ProgressDeadlineExceeded" in reasons(out)


def test_healthy_canary_is_promoted_step_by_step():
    d = serving(make_spec("v1", CANARY))
    v1 = ref(d.spec)
    d.spec = make_spec("v2", CANARY)
    out = d.step(canary_ready=False)
    assert "RolloutStarted" in reasons(out)
    assert out.canary == ref(d.spec) and out.stable == v1 and out.canary_weight == 0
    assert "waiting for canary" in out.status.message

    d.tick(10)
    out = d.step()
    assert out.canary_weight == 10 and out.status.currentStep == 1
    assert {"WeightChanged", "StepAdvanced"} <= set(reasons(out))
    assert not d.due(), "the first measurement waits one interval after the weight change"
    d.tick(30)
    assert d.due() and due_metrics(d.spec, d.status, d.now) == ["success-rate", "p99"]
    out = d.step(measurement=results(d.spec))
    assert "AnalysisPassed" in reasons(out)
    assert out.canary_weight == 50 and out.status.currentStep == 3
    assert get_condition(out.status.conditions, "AnalysisPassing").status == "True"
    step1 = run_of(out.status, "step-1")
    assert step1.phase == "Successful" and step1.revision == ref(d.spec).revision
    assert [(m.name, m.count, m.successful, m.measurements[-1].phase) for m in step1.metrics] == [
        ("success-rate", 1, 1, "Successful"), ("p99", 1, 1, "Successful")]
    assert step1.metrics[0].measurements[-1].stableValue == 0.998
    assert out.requeue_after == 60
    assert out.status.phase == "Paused" and pauses(out.status) == ["PauseStep"], "a timed pause step is a pause"

    d.tick(60)
    out = d.step()
    assert "Promoted" in reasons(out)
    assert out.stable == ref(d.spec) and out.canary is None and out.canary_weight == 0
    assert out.status.phase == "Succeeded" and out.status.pauseConditions == []
    assert d.step().status.phase == "Succeeded"


def test_breaching_canary_is_rolled_back_and_not_retried_until_asked():
    d = serving(make_spec("v1", CANARY))
    v1 = ref(d.spec)
    d.spec = make_spec("v2", CANARY)
    d.step()
    d.tick(30)
    bad = results(d.spec, p99="Failed")
    bad[1] = MetricResult(name="p99", value=0.41, threshold="<= 0.25", verdict="Failed", sampleCount=800,
                          message="p99: value 0.41 breaches <= 0.25")
    out = d.step(measurement=bad)
    assert out.canary_weight == 0 and out.canary is None and out.stable == v1
    assert out.status.phase == "RolledBack"
    assert "p99" in out.status.message and "0.41" in out.status.message and "<= 0.25" in out.status.message
    assert "spec.rollout.analysis.metrics[1]" in out.status.message
    assert [e.type for e in out.events if e.reason == "RolledBack"] == ["Warning"]
    assert get_condition(out.status.conditions, "Progressing").reason == "AnalysisFailed"
    assert out.status.abortedRevision == d.spec.rollout_revision()
    assert run_of(out.status, "step-1").phase == "Failed"

    d.tick(600)
    out = d.step(action="promote/1")
    assert out.status.phase == "RolledBack" and out.canary is None and "ActionIgnored" in reasons(out)
    out = d.step(action="retry/2")
    assert "Retrying" in reasons(out) and "RolloutStarted" in reasons(out)
    assert out.canary == ref(d.spec) and out.canary_weight == 10 and out.status.phase == "Progressing"


def test_failure_limit_tolerates_failures_before_rolling_back():
    spec = {**CANARY, "analysis": {"interval": "30s", "failureLimit": 1, "count": 3, "metrics": METRICS}}
    d = serving(make_spec("v1", spec))
    d.spec = make_spec("v2", spec)
    d.step()
    d.tick(30)
    out = d.step(measurement=results(d.spec, success_rate="Failed"))
    assert out.status.phase == "Progressing" and out.canary_weight == 10
    assert "AnalysisFailed" in reasons(out)
    assert get_condition(out.status.conditions, "AnalysisPassing").status == "False"
    d.tick(30)
    out = d.step(measurement=results(d.spec, success_rate="Failed"))
    assert out.status.phase == "RolledBack" and out.canary_weight == 0


def test_no_data_is_inconclusive_then_paused_at_zero_percent_never_promoted():
    spec = {**CANARY, "analysis": {"interval": "30s", "inconclusiveLimit": 1, "metrics": METRICS}}
    d = serving(make_spec("v1", spec))
    d.spec = make_spec("v2", spec)
    d.step()
    for _ in range(2):
        d.tick(30)
        out = d.step(measurement=results(d.spec, "Inconclusive"))
    assert out.status.phase == "Paused" and pauses(out.status) == ["AnalysisInconclusive"]
    # A canary with too few requests to judge may be failing all of them: it serves nothing while a person decides.
    assert out.canary_weight == 0 and out.status.currentStep == 1 and out.canary == ref(d.spec)
    assert "WeightChanged" in reasons(out)
    assert run_of(out.status, "step-1").phase == "Inconclusive"
    paused = get_condition(out.status.conditions, "Paused")
    assert paused.status == "True" and paused.reason == "AnalysisInconclusive"
    assert get_condition(out.status.conditions, "AnalysisPassing").status == "Unknown"
    d.tick(3600)
    assert not d.due()
    assert d.step().status.phase == "Paused", "an inconclusive pause waits for a person, not the deadline"
    out = d.step(action="resume/a")
    assert out.status.phase == "Progressing" and "Resumed" in reasons(out)
    assert out.canary_weight == 10, "resuming gives the canary its step's weight back"
    assert run_of(out.status, "step-1").metrics[0].count == 0, "resume starts a fresh run"
    d.tick(30)
    out = d.step(measurement=results(d.spec))
    assert out.canary_weight == 50


def test_prometheus_unavailable_pauses_with_reason_and_recovers():
    d = serving(make_spec("v1", CANARY))
    d.spec = make_spec("v2", CANARY)
    d.step()
    d.tick(30)
    down = [MetricResult(name=m, verdict="Error", message=f"{m}: Prometheus unavailable: ConnectError")
            for m in ("success-rate", "p99")]
    out = d.step(measurement=down)
    assert out.status.phase == "Paused" and pauses(out.status) == ["PrometheusUnavailable"]
    assert out.canary_weight == 10, "an outage holds traffic where it is"
    assert metric_of(out.status, "step-1", "p99").consecutiveError == 1
    assert get_condition(out.status.conditions, "AnalysisPassing").reason == "PrometheusUnavailable"
    assert not d.due()
    d.tick(30)
    assert d.due(), "retried at the next interval"
    out = d.step(measurement=results(d.spec))
    assert out.canary_weight == 50 and pauses(out.status) == ["PauseStep"], "then the timed pause step"
    assert metric_of(out.status, "step-1", "p99").consecutiveError == 0


def test_rejected_query_names_the_metric_and_keeps_stable():
    d = serving(make_spec("v1", CANARY))
    v1 = ref(d.spec)
    d.spec = make_spec("v2", CANARY)
    d.step()
    d.tick(30)
    meas = results(d.spec)
    meas[1] = MetricResult(name="p99", verdict="Error",
                           message="p99: Prometheus rejected the query (bad_data): parse error")
    out = d.step(measurement=meas)
    cond = get_condition(out.status.conditions, "AnalysisPassing")
    assert cond.status == "False" and cond.reason == "AnalysisError"
    assert "spec.rollout.analysis.metrics[1]" in cond.message and "parse error" in cond.message
    assert out.stable == v1 and out.canary_weight == 10 and out.status.phase == "Paused"


def test_canary_that_never_gets_ready_is_rolled_back_at_the_deadline_without_traffic():
    spec = {**CANARY, "progressDeadline": "5m"}
    d = serving(make_spec("v1", spec))
    d.spec = make_spec("v2", spec)
    out = d.step(canary_ready=False)
    assert out.requeue_after == 300
    d.tick(299)
    assert d.step(canary_ready=False).canary_weight == 0
    d.tick(2)
    out = d.step(canary_ready=False)
    assert out.status.phase == "RolledBack" and "ProgressDeadlineExceeded" in reasons(out)
    assert get_condition(out.status.conditions, "Progressing").reason == "ProgressDeadlineExceeded"


def test_operator_actions_pause_resume_promote_abort():
    steps = {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "1h"}}]}
    d = serving(make_spec("v1", steps))
    d.spec = make_spec("v2", steps)
    out = d.step()
    assert out.canary_weight == 20 and out.status.phase == "Paused"
    assert pauses(out.status) == ["PauseStep"]
    out = d.step(action="promote/1")
    assert out.canary_weight == 60 and out.status.currentStep == 3
    assert out.status.rollout.lastAction == "promote/1"
    out = d.step(action="promote/1")
    assert out.canary_weight == 60 and out.status.currentStep == 3, "an action value is consumed once"
    out = d.step(action="pause/2")
    assert out.status.phase == "Paused" and "PausedByUser" in pauses(out.status)
    d.tick(7200)
    assert d.step().status.phase == "Paused", "a user pause holds even a timed pause step"
    out = d.step(action="resume/3")
    assert out.status.phase == "Succeeded" and "Promoted" in reasons(out)

    d.spec = make_spec("v3", steps)
    d.step()
    out = d.step(action="abort/4")
    assert out.status.phase == "RolledBack" and out.canary_weight == 0 and "Aborted" in reasons(out)
    assert get_condition(out.status.conditions, "Progressing").reason == "Aborted"


def test_promote_full_skips_the_remaining_steps_but_not_readiness():
    d = serving(make_spec("v1", CANARY))
    d.spec = make_spec("v2", CANARY)
    out = d.step(canary_ready=False, action="promote-full/x")
    assert out.canary_weight == 0 and out.status.phase == "Progressing"
    out = d.step(action="promote-full/y")
    assert out.status.phase == "Succeeded" and out.stable == ref(d.spec)


def test_unknown_action_is_reported_and_consumed():
    d = serving(make_spec("v1", CANARY))
    out = d.step(action="promot/1")
    assert [e.type for e in out.events] == ["Warning"] and "InvalidAction" in reasons(out)
    assert out.status.rollout.lastAction == "promot/1"


def test_linear_walks_the_weights_at_each_interval():
    lin = {"strategy": "Linear", "linear": {"stepWeight": 25, "maxWeight": 75, "interval": "1m"}}
    d = serving(make_spec("v1", lin))
    d.spec = make_spec("v2", lin)
    weights = [d.step().canary_weight]
    for _ in range(3):
        d.tick(60)
        weights.append(d.step().canary_weight)
    assert weights[:3] == [25, 50, 75]
    assert d.status.phase == "Succeeded" and d.status.stableModel == ref(d.spec)


def test_all_at_once_switches_when_ready():
    d = serving(make_spec("v1", {"strategy": "AllAtOnce"}))
    d.spec = make_spec("v2", {"strategy": "AllAtOnce"})
    assert d.step(canary_ready=False).canary_weight == 0
    out = d.step()
    assert out.status.phase == "Succeeded" and out.stable == ref(d.spec) and "Promoted" in reasons(out)


def test_blue_green_previews_switches_bakes_and_switches_back_instantly():
    bg = {"strategy": "BlueGreen", "blueGreen": {"bakeDuration": "10m", "previewDuration": "30s"},
          "analysis": {"interval": "30s", "metrics": METRICS}}
    d = serving(make_spec("v1", bg))
    v1 = ref(d.spec)
    d.spec = make_spec("v2", bg)
    out = d.step()
    assert out.canary_weight == 0 and out.canary == ref(d.spec), "the preview gets no traffic"
    d.tick(30)
    out = d.step(measurement=results(d.spec))
    assert out.canary_weight == 100 and out.status.phase == "Promoting" and out.stable == v1
    assert out.status.rollout.bakeUntil and out.requeue_after == 600
    d.tick(60)
    out = d.step(action="abort/1")
    assert out.canary_weight == 0 and out.canary is None and out.stable == v1

    d.spec = make_spec("v3", bg)
    d.step()
    d.tick(30)
    d.step(measurement=results(d.spec))
    d.tick(600)
    out = d.step()
    assert out.status.phase == "Succeeded" and out.stable == ref(d.spec) and out.canary is None


def test_spec_change_mid_rollout_restarts_or_cancels():
    d = serving(make_spec("v1", CANARY))
    v1 = ref(d.spec)
    d.spec = make_spec("v2", CANARY)
    assert d.step().canary_weight == 10
    d.spec = make_spec("v3", CANARY)
    out = d.step(canary_ready=False)
    assert out.canary == ref(d.spec) and out.canary_weight == 0 and "RolloutStarted" in reasons(out)
    d.spec = make_spec("v1", CANARY)
    out = d.step()
    assert out.canary is None and out.stable == v1 and out.status.phase == "Succeeded"
    assert "RolloutSuperseded" in reasons(out)


def test_measurements_are_capped_by_retention_and_status_survives_a_restart():
    spec = {**CANARY, "analysis": {"interval": "30s", "count": 30, "measurementRetention": 7, "metrics": METRICS}}
    d = serving(make_spec("v1", spec))
    d.spec = make_spec("v2", spec)
    d.step()
    for _ in range(25):
        d.tick(30)
        d.step(measurement=results(d.spec))
    sr = metric_of(d.status, "step-1", "success-rate")
    assert len(sr.measurements) == 7 and sr.count == 25 and sr.successful == 25
    assert d.status.canaryWeight == 10 and run_of(d.status, "step-1").phase == "Running"
    restarted = Driver(d.spec, ModelDeploymentStatus.model_validate(d.status.model_dump(mode="json")))
    restarted.now = d.now
    out = restarted.step()
    assert out.canary_weight == 10 and out.events == []
