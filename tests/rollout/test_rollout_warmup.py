"""The warm-up gate in the pure engine: no weight before every canary pod is warm, a spent budget rolls back
naming the figure, and the gate is restart-safe and idempotent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.api.conditions import parse_time
from kanari.api.v1alpha1 import ModelDeploymentStatus
from kanari.rollout.engine import PAUSE_REASONS, RolloutObservation, decide
from kanari.rollout.warmup import REASON, PodObservation, WarmupObservation
from rollout_testlib import METRICS, T0, make_spec, ref, same

WARMUP = {"requests": 3, "timeoutSeconds": 30, "budgetSeconds": 600}


def spec_for(version: str, rollout: dict | None = None, warmup: dict | None = WARMUP):
    r = dict(rollout or {"steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}, {"setWeight": 60}]})
    if warmup is not None:
        r["warmup"] = warmup
    return make_spec(version, r)


def stable_status() -> ModelDeploymentStatus:
    d = decide(spec_for("v1"), ModelDeploymentStatus(), RolloutObservation(
        now=T0, desired=ref(spec_for("v1")), stable_ready=True, canary_ready=False), 1)
    assert d.status.stableModel is not None and d.status.canaryModel is None
    return d.status


def pods(revision: str, *answers: int, error: str = "") -> WarmupObservation:
    return WarmupObservation(revision=revision, pods=tuple(
        PodObservation(name=f"p{i}", scheduled_at=T0, answered=a, failed=0 if a else 1,
                       first_success_at=T0 + timedelta(seconds=40 + i) if a else None,
                       latency_seconds=0.2 if a else None, last_error="" if a else error)
        for i, a in enumerate(answers)), source="inline")


def step(spec, status, seconds: float, warm: WarmupObservation | None = None, action: str | None = None,
         canary_ready: bool = True):
    obs = RolloutObservation(now=T0 + timedelta(seconds=seconds), desired=ref(spec), stable_ready=True,
                             canary_ready=canary_ready, action=action, warmup=warm)
    d = decide(spec, status, obs, 2)
    stored = ModelDeploymentStatus.model_validate(d.status.model_dump(mode="json"))
    again = decide(spec, stored, obs, 2)
    assert same(d, again) and again.events == [], "not idempotent"
    return d, stored


def test_the_warm_up_reason_is_defined_once_and_clears_itself() -> None:
    r = PAUSE_REASONS[REASON]
    assert not r.waits_for_person and r.drops_traffic and r.blocks_measuring


def test_no_weight_until_every_pod_has_answered_then_the_steps_go_on() -> None:
    spec = spec_for("v2")
    rev = ref(spec).revision
    d, st_ = step(spec, stable_status(), 1)
    assert d.canary is not None and d.canary_weight == 0
    assert [p.reason for p in st_.pauseConditions] == [REASON] and st_.phase == "Paused"
    assert any(e.reason == REASON for e in d.events)
    assert st_.warmup is not None and st_.warmup.revision == rev and st_.warmup.succeededAt is None
    # Some answers, one pod short; then a pod that answers nothing; the canary stays at 0% throughout.
    for t, obs in ((10, pods(rev, 3, 2)), (20, pods(rev, 3, 3, 0, error="HTTP 503")), (25, None)):
        d, st_ = step(spec, st_, t, obs)
        assert d.canary_weight == 0 and REASON in [p.reason for p in st_.pauseConditions], t
    assert "HTTP 503" in st_.message
    # Nothing new observed: nothing in status changes (no status write every few seconds while it waits).
    d, again = step(spec, st_, 27, None)
    assert again == st_ and d.events == []
    d, st_ = step(spec, st_, 30, pods(rev, 3, 3, 3))
    assert d.canary_weight == 20 and [p.reason for p in st_.pauseConditions] == ["PauseStep"]
    assert "WarmedUp" in [e.reason for e in d.events]
    w = st_.warmup
    assert w is not None and w.succeededAt is not None and w.answered == 9 and w.coldStartSeconds == pytest.approx(42)
    # Warm is a fact: later observations (a prober restarted at zero, no pods) do not take the weight away.
    d, st_ = step(spec, st_, 100, pods(rev, 0, error="connection refused"))
    assert "promote" in d.moves and st_.stableModel is not None and st_.stableModel.revision == rev


def test_no_pod_and_no_data_is_never_warm_and_the_budget_rolls_back_naming_the_figure() -> None:
    spec = spec_for("v2")
    rev = ref(spec).revision
    _, st_ = step(spec, stable_status(), 1)
    d, st_ = step(spec, st_, 300, WarmupObservation(revision=rev, error="no warm-up inputs: no samples"))
    assert d.canary_weight == 0 and "no warm-up inputs" in st_.message
    d, st_ = step(spec, st_, 600, pods(rev, 2, error="timed out after 30 s"))
    assert d.canary_weight == 0
    d, st_ = step(spec, st_, 601.5, pods(rev, 2))
    assert d.canary is None and d.canary_weight == 0 and st_.phase == "RolledBack"
    assert st_.abortedRevision == rev
    assert "budgetSeconds 600" in st_.message and "fewest answers 2/3" in st_.message
    assert "WarmupFailed" in [e.reason for e in d.events]
    assert st_.warmup is not None and st_.warmup.failedAt is not None


def test_a_report_that_could_not_see_the_pods_keeps_what_was_seen() -> None:
    spec = spec_for("v2")
    rev = ref(spec).revision
    _, st_ = step(spec, stable_status(), 1)
    _, st_ = step(spec, st_, 10, pods(rev, 3, 2))
    d, st_ = step(spec, st_, 20, WarmupObservation(revision=rev, error="listing the canary's pods failed: 500"))
    assert [p.answered for p in st_.warmup.pods] == [3, 2] and d.canary_weight == 0
    assert "listing the canary's pods failed: 500" in st_.warmup.message


def test_an_observation_for_another_revision_is_not_this_canarys() -> None:
    spec = spec_for("v2")
    _, st_ = step(spec, stable_status(), 1)
    d, st_ = step(spec, st_, 10, pods(ref(spec_for("v3")).revision, 3, 3))
    assert d.canary_weight == 0 and st_.warmup is not None and st_.warmup.pods == []


def test_restart_keeps_the_budget_and_what_pods_answered() -> None:
    spec = spec_for("v2")
    rev = ref(spec).revision
    _, st_ = step(spec, stable_status(), 1)
    _, st_ = step(spec, st_, 200, pods(rev, 2, 1))
    # A restarted operator's prober counts from zero: answers given before the restart still count, and the
    # budget still runs from the canary's creation.
    d, st_ = step(spec, st_, 210, pods(rev, 1, 2))
    assert d.canary_weight == 0 and [p.answered for p in st_.warmup.pods] == [2, 2]
    d, st_ = step(spec, st_, 220, pods(rev, 3, 0))
    assert d.canary_weight == 0
    d, st_ = step(spec, st_, 230, pods(rev, 0, 3))
    assert d.canary_weight == 20
    assert parse_time(st_.warmup.startedAt) == T0 + timedelta(seconds=1)


def test_promote_and_promote_full_do_not_skip_the_warm_up() -> None:
    spec = spec_for("v2")
    for action in ("promote/1", "promote-full/2"):
        _, st_ = step(spec, stable_status(), 1)
        d, st_ = step(spec, st_, 5, action=action)
        assert d.canary is not None and d.canary_weight == 0 and REASON in [p.reason for p in st_.pauseConditions]


def test_retry_of_a_rolled_back_revision_warms_again() -> None:
    spec = spec_for("v2", warmup={**WARMUP, "budgetSeconds": 10})
    _, st_ = step(spec, stable_status(), 1)
    d, st_ = step(spec, st_, 20)
    assert st_.phase == "RolledBack"
    d, st_ = step(spec, st_, 30, action="retry/1")
    assert d.canary is not None and d.canary_weight == 0 and st_.warmup.failedAt is None
    assert REASON in [p.reason for p in st_.pauseConditions]


def test_without_warmup_in_the_spec_there_is_no_gate() -> None:
    spec = spec_for("v2", warmup=None)
    d, st_ = step(spec, stable_status(), 1)
    assert d.canary_weight == 20 and st_.warmup is None


# ------------------------------------------------------------------------------------------ invariant
ROLLOUTS = [
    {"steps": [{"setWeight": 10}, {"analysis": {}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 100}],
     "analysis": {"interval": "30s", "metrics": METRICS}},
    {"strategy": "BlueGreen", "blueGreen": {"bakeDuration": "1m"}},
    {"strategy": "AllAtOnce"},
    {"strategy": "Linear", "linear": {"stepWeight": 50, "interval": "30s"}},
]
op = st.one_of(
    st.tuples(st.just("tick"), st.integers(1, 300)),
    st.tuples(st.just("probe"), st.lists(st.integers(0, 4), max_size=3), st.booleans()),
    st.tuples(st.just("action"), st.sampled_from(["promote", "promote-full", "abort", "pause", "resume", "retry"])),
    st.tuples(st.just("spec"), st.sampled_from(["v1", "v2", "v3"])),
    st.tuples(st.just("ready"), st.booleans()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rollout=st.sampled_from(ROLLOUTS), ops=st.lists(op, min_size=5, max_size=60))
def test_no_weight_before_warm_up_under_any_sequence(rollout, ops) -> None:
    warm = {**WARMUP, "budgetSeconds": 900}
    spec = spec_for("v1", rollout, warm)
    status = ModelDeploymentStatus()
    now, canary_ready, nonce = T0, True, 0
    for o in ops:
        action, obs_w = None, None
        if o[0] == "tick":
            now += timedelta(seconds=o[1])
        elif o[0] == "probe":
            revision = status.canaryModel.revision if status.canaryModel and o[2] else ref(spec_for("v9")).revision
            obs_w = WarmupObservation(revision=revision, pods=tuple(
                PodObservation(name=f"p{i}", scheduled_at=now, answered=a) for i, a in enumerate(o[1])))
        elif o[0] == "action":
            nonce += 1
            action = f"{o[1]}/{nonce}"
        elif o[0] == "spec":
            spec = spec_for(o[1], rollout, warm)
        else:
            canary_ready = o[1]
        obs = RolloutObservation(now=now, desired=ref(spec), stable_ready=True, canary_ready=canary_ready,
                                 action=action, warmup=obs_w)
        d = decide(spec, status, obs, 1)
        out = d.status
        if d.canary is not None and d.canary_weight > 0:
            w = out.warmup
            assert w is not None and w.revision == d.canary.revision and w.succeededAt is not None, out
            assert len(w.pods) > 0 and all(p.answered >= warm["requests"] for p in w.pods)
        if "WarmupFailed" in [e.reason for e in d.events]:
            assert out.warmup is not None
            started = parse_time(out.warmup.startedAt)
            assert started is not None and (now - started).total_seconds() >= warm["budgetSeconds"]
        stored = ModelDeploymentStatus.model_validate(out.model_dump(mode="json"))
        again = decide(spec, stored, obs, 1)
        assert same(d, again)
        status = stored


def test_kanari_status_shows_the_warm_up() -> None:
    from kanari.cli.rollout import render_status

    spec = spec_for("v2")
    rev = ref(spec).revision
    _, st_ = step(spec, stable_status(), 1)
    _, st_ = step(spec, st_, 20, pods(rev, 3, 0, error="HTTP 503"))
    obj = {"metadata": {"name": "fraud", "namespace": "ml"}, "spec": spec.model_dump(mode="json", exclude_none=True),
           "status": st_.model_dump(mode="json")}
    out = render_status(obj)
    assert "Paused:      WarmingUp since" in out and "p1: HTTP 503" in out
    assert f"Warm-up:     revision {rev}: warming since" in out and "3 answered, 1 failed" in out
    _, st_ = step(spec, st_, 30, pods(rev, 3, 3))
    out = render_status({**obj, "status": st_.model_dump(mode="json")})
    assert "Warm-up:     revision" in out and "warm since" in out and "cold start 41.0s" in out


@pytest.mark.parametrize(("warmup", "field"), [
    ({"samples": [{"rows": [1]}]}, "spec.rollout.warmup.samples[0]"),
    ({"samples": [{"instances": [[1]]}, {"instances": "x"}]}, "spec.rollout.warmup.samples[1]"),
    ({"budgetSeconds": 5}, "spec.rollout.warmup.budgetSeconds"),
    ({"requests": 0}, "spec.rollout.warmup.requests"),
    ({"timeoutSecs": 5}, "spec.rollout.warmup.timeoutSecs"),
])
def test_a_bad_warm_up_spec_is_refused_naming_the_field(warmup: dict, field: str) -> None:
    from kanari.api.v1alpha1 import SpecError

    with pytest.raises(SpecError) as err:
        spec_for("v2", warmup=warmup)
    assert err.value.field == field, str(err.value)
