"""Property tests of the rollout state machine under random observations, actions and spec changes."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kanari.api.v1alpha1 import MetricResult, ModelDeploymentSpec, ModelDeploymentStatus, ModelRef
from kanari.rollout.engine import (
    RealisedQuality,
    RolloutObservation,
    analysis_due,
    decide,
    derive_phase,
    due_metrics,
    retro_due,
)
from rollout_testlib import METRICS, T0, make_spec, ref, same

ROLLOUTS = [
    {"steps": [{"setWeight": 10}, {"analysis": {}}, {"setWeight": 40}, {"pause": {}}, {"setWeight": 70},
               {"analysis": {"count": 2}}],
     "analysis": {"interval": "30s", "failureLimit": 1, "inconclusiveLimit": 1, "metrics": METRICS},
     "progressDeadline": "5m", "rollbackWindow": {"duration": "15m", "minLabels": 40, "tolerance": 0.05}},
    {"strategy": "Linear", "linear": {"stepWeight": 30, "interval": "1m"},
     "analysis": {"interval": "20s", "metrics": METRICS[:1]}},
    {"strategy": "BlueGreen", "blueGreen": {"bakeDuration": "2m", "autoPromote": False},
     "analysis": {"interval": "30s", "metrics": METRICS}},
    {"strategy": "AllAtOnce", "rollbackWindow": {"duration": "5m", "metric": "precision", "minLabels": 10}},
    {"steps": [{"setWeight": 20}, {"pause": {"duration": "5m"}}, {"setWeight": 60}, {"analysis": {}}],
     "analysis": {"interval": "30s", "background": {}, "consecutiveErrorLimit": 2,
                  "metrics": [METRICS[0], {**METRICS[1], "dryRun": True}]}},
]
VERDICTS = ("Successful", "Failed", "Inconclusive", "Error")
# A reading of the promoted version's realised quality: value, denominator, failed, and whether the status it meets
# was written by a controller that did not keep registered metrics (filled from the package in the same pass).
REALISED = st.tuples(st.just("realised"), st.sampled_from([0.3, 0.0, 0.84, 0.9, 1.0]),
                     st.sampled_from([400, 40, 39, 10, 9, 0]), st.sampled_from([False, False, True]),
                     st.booleans())
# What each version's model package registered (v3: nothing to compare with, v4: a figure that is no proportion).
REGISTERED: dict[str, dict[str, float]] = {"v1": {"recall": 0.9, "precision": 0.9}, "v2": {"recall": 1.0, "precision": 1.0},
                                           "v3": {}, "v4": {"recall": 1.5, "precision": -0.1}}
# A status written by a controller that did not keep the registered metrics: its refs come without them.
LEGACY = st.tuples(st.just("legacy"))


def desired(spec: ModelDeploymentSpec) -> ModelRef:
    """The spec's model as the controller resolves it from its package (controller.model_source.model_ref)."""
    version = (spec.model.storageUri or "").rstrip("/").rsplit("/", 1)[-1]
    return ref(spec).model_copy(update={"modelPackageArn": f"arn:aws:sagemaker:us-east-1:1:model-package/fraud/{version}",
                                        "registeredMetrics": REGISTERED[version]})


def forget_registered(status: ModelDeploymentStatus) -> ModelDeploymentStatus:
    out = status.model_copy(deep=True)
    for role in ("stableModel", "canaryModel"):
        if getattr(out, role) is not None:
            setattr(out, role, getattr(out, role).model_copy(update={"registeredMetrics": {}}))
    return out

op = st.one_of(
    st.tuples(st.just("tick"), st.integers(1, 400)),
    st.tuples(st.just("ready"), st.booleans(), st.booleans()),
    st.tuples(st.just("measure"), st.lists(st.sampled_from(VERDICTS), min_size=2, max_size=2)),
    st.tuples(st.just("action"), st.sampled_from(["promote", "promote-full", "abort", "pause", "resume", "retry",
                                                  "bogus"])),
    st.tuples(st.just("spec"), st.sampled_from(["v1", "v2", "v3", "v4"])),
    REALISED,
    LEGACY,
)


def counted(status: ModelDeploymentStatus) -> int:
    return sum(m.count for r in status.analysisRuns for m in r.metrics)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rollout=st.sampled_from(ROLLOUTS), ops=st.lists(op, min_size=5, max_size=80))
def test_state_machine_invariants(rollout, ops):
    run_invariants(rollout, ops)


# Promotions followed by many realised-quality readings: the retro-verdict's paths, reached often.

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rollout=st.sampled_from([r for r in ROLLOUTS if "rollbackWindow" in r] + [
           {"steps": [{"setWeight": 50}], "rollbackWindow": {"duration": "3m", "minLabels": 40}}]),
       ops=st.lists(st.one_of(REALISED, st.tuples(st.just("tick"), st.integers(1, 40)), *op.branches),
                    min_size=5, max_size=60))
def test_retro_verdict_invariants(rollout, ops):
    # v1 serves, then the spec moves to v2: promotions (and their windows) come early and often.
    run_invariants(rollout, [("tick", 1), ("spec", "v2"), *ops])


def run_invariants(rollout, ops):
    spec = make_spec("v1", rollout)
    status = ModelDeploymentStatus()
    now, stable_ready, canary_ready = T0, True, True
    nonce = 0
    manual: set[str] = set()  # revisions an operator promoted by hand (analysis may be skipped then)
    passed: dict[str, set[int]] = {}  # revision -> analysis steps with a Successful measurement this rollout
    analysis_steps = {i for i, s in enumerate(spec.rollout.effective_steps()) if s.analysis is not None}
    for o in ops:
        measurement, action = None, None
        if o[0] == "tick":
            now += timedelta(seconds=o[1])
        elif o[0] == "ready":
            stable_ready, canary_ready = o[1], o[2]
        elif o[0] == "measure":
            names = [m.name for m in spec.rollout.analysis.metrics] if spec.rollout.analysis else []
            measurement = [MetricResult(name=n, verdict=v, value=1.0 if v != "Error" else None, message=f"{n}: {v}")
                           for n, v in zip(names, o[1], strict=False)]
        elif o[0] == "action":
            nonce += 1
            action = f"{o[1]}/{nonce}"
        elif o[0] == "spec":
            spec = make_spec(o[1], rollout)
        if o[0] == "legacy" or (o[0] == "realised" and o[4]):
            status = forget_registered(status)
        realised = None
        if o[0] == "realised" and status.retro is not None:
            rw = spec.rollout.rollbackWindow
            realised = RealisedQuality(status.retro.revision, rw.metric if rw else "recall", o[1], o[2],
                                       "Prometheus unavailable" if o[3] else None)
        due_before = analysis_due(spec, status, now)
        due_names = set(due_metrics(spec, status, now))
        obs = RolloutObservation(now=now, desired=desired(spec), stable_ready=stable_ready, canary_ready=canary_ready,
                          measurement=measurement, action=action, realised=realised)
        retro_open = retro_due(spec, status, now)
        d = decide(spec, status, obs, 1)
        out = d.status
        reasons = [e.reason for e in d.events]

        # One source for the figure judged against: the stable ref's status, a ref recorded without it filled from
        # its own package first, in the same pass; a version with no figure that is a proportion is never judged.
        rw = spec.rollout.rollbackWindow
        if rw is not None and realised is not None and retro_open and realised.error is None:
            stable, want = status.stableModel, desired(spec)
            recorded = stable.registeredMetrics or (
                want.registeredMetrics if stable.modelPackageArn == want.modelPackageArn else {})
            figure = stable.model_copy(update={"registeredMetrics": recorded}).registered(rw.metric)
            passing = next(c for c in out.conditions if c.type == "RealisedQualityPassing")
            if figure is None:
                event("retro-verdict: no registered figure")
                assert "RealisedQualityDrop" not in reasons and out.stableModel.revision == stable.revision
                assert passing.reason == "NoRegisteredMetric"
            else:
                event("retro-verdict: judged" + (" (filled this pass)" if not stable.registeredMetrics else ""))
                assert passing.reason != "NoRegisteredMetric"
        for role in ("stableModel", "canaryModel"):
            before, after = getattr(status, role), getattr(out, role)
            if before is not None and after is not None and before.revision == after.revision and before.registeredMetrics:
                assert after.registeredMetrics == before.registeredMetrics, "a recorded figure was replaced"

        # The stable version changes only to the canary it promoted, on a first deployment, or (retro-verdict)
        # back to the version the last promotion replaced: inside the window, on a reading with enough labels.
        # (By revision: a ref recorded without its registry facts is filled in place, the same version.)
        if (status.stableModel is not None and out.stableModel.revision != status.stableModel.revision
                and not status.rollout.deploying):
            if "RealisedQualityDrop" in reasons:
                event("retro-verdict rolled back")
                assert retro_open and realised is not None and realised.error is None
                assert realised.denominator >= spec.rollout.rollbackWindow.minLabels
                assert status.retro is not None and out.stableModel == status.retro.previousStable
                assert out.abortedRevision == status.stableModel.revision and out.phase == "RolledBack"
            else:
                assert "Promoted" in reasons and out.stableModel.revision == ref(spec).revision
        if "RealisedQualityDrop" not in reasons and realised is not None and (
                not retro_open or realised.error or realised.denominator < 10):
            assert out.stableModel.revision == status.stableModel.revision or "Promoted" in reasons
        assert 0 <= d.canary_weight <= 100
        assert d.canary is not None or d.canary_weight == 0
        if out.phase == "RolledBack":
            assert d.canary is None and d.canary_weight == 0
        same_canary = d.canary is not None and status.canaryModel is not None and (
            d.canary.revision == status.canaryModel.revision)
        if d.canary is not None and d.canary_weight > status.canaryWeight and same_canary:
            assert canary_ready, "traffic shifted onto a canary that is not Ready"
        if d.canary is not None and not same_canary:
            assert d.canary_weight == 0 or canary_ready
        if measurement is not None and not due_before:
            assert counted(out) == counted(status), "a measurement that was not due was counted"
        if any(p.reason == "AnalysisInconclusive" for p in out.pauseConditions):
            assert d.canary_weight == 0, "an inconclusive pause leaves the canary serving"
        assert out.phase == derive_phase(out, stable_ready)

        revision = ref(spec).revision
        if "RolloutStarted" in reasons:
            passed[revision] = set()
            manual.discard(revision)
        if action and action.split("/")[0] in ("promote", "promote-full") and "ActionConsumed" in reasons:
            manual.add(revision)
        if measurement is not None and due_before and "AnalysisPassed" in reasons:
            dry = {m.name for m in spec.rollout.analysis.metrics if m.dryRun}
            assert all(m.verdict == "Successful" for m in measurement if m.name in due_names - dry)
            passed.setdefault(revision, set()).add(status.currentStep)
        if "Promoted" in reasons and revision not in manual:
            missing = analysis_steps - passed.get(revision, set())
            assert not missing, f"promoted without a Successful measurement at steps {missing}"

        stored = ModelDeploymentStatus.model_validate(out.model_dump(mode="json"))
        again = decide(spec, stored, obs, 1)
        assert same(d, again) and again.events == [], "decide() is not idempotent"
        status = stored
