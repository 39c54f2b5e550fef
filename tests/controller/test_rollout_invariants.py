"""The headline guarantee, over random sequences of what users and the cluster do, through the controller's
whole decision (reconcile) and a KServe stand-in that applies every InferenceService it emits:

- no model reaches 100% of traffic unless it was first served as a canary at a weight strictly between 0
  and 100. Excepted, as documented: the first model ever served, a model a person promoted by hand
  (promote / promote-full), and strategies with no step strictly between 0 and 100 (AllAtOnce, and a
  BlueGreen switch, which must follow a Ready preview);
- scaling edits reach the InferenceService whatever the rollout did before (after a rollback included);
- with no rollout in progress the InferenceService's template is the stable model (a rolled-back template
  is never kept);
- reconcile is idempotent: run again on its own output, it changes nothing and says nothing.

CI runs it derandomized (the same sequences every run) for both deployment modes: 400 sequences of 30 to 150
steps each (about 28,000 reconciles per mode; fewer, longer sequences than the 800 of 20 to 100 it had, which
reach deeper states for less per-sequence overhead). KANARI_INVARIANT_EXAMPLES raises the count for a longer hunt.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.api.v1alpha1 import ACTION_ANNOTATION, MetricResult, ModelDeploymentStatus, SpecError, parse_spec
from kanari.controller.config import OperatorConfig
from kanari.controller.reconcile import ClusterObservation, ReconcileResult, reconcile
from kanari.rollout import engine

from tests.controller.kserve_sim import KServeSim

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
CONFIG = OperatorConfig(drift_monitor_url="http://drift.kanari:8080")
EXAMPLES = int(os.environ.get("KANARI_INVARIANT_EXAMPLES", "400"))
METRIC = {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.99}}
ROLLOUTS: list[dict[str, Any]] = [
    {"steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 60}, {"pause": {"duration": "1m"}}],
     "analysis": {"interval": "30s", "inconclusiveLimit": 1, "consecutiveErrorLimit": 1, "metrics": [METRIC]},
     "progressDeadline": "5m"},
    {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "2m"}}],
     "analysis": {"interval": "30s", "background": {}, "metrics": [METRIC]}},
    {"strategy": "Linear", "linear": {"stepWeight": 40, "interval": "1m"}},
    {"strategy": "BlueGreen", "blueGreen": {"previewDuration": "1m", "bakeDuration": "1m"},
     "analysis": {"interval": "30s", "metrics": [METRIC]}},
    {"strategy": "AllAtOnce"},
]
VERSIONS = ("v1", "v2", "v3", "v4")
ACTIONS = ("promote", "promote-full", "abort", "pause", "resume", "retry")

# Weighted towards progress (KServe making things Ready, time passing, passing measurements), so that most
# sequences take several models through whole rollouts, with edits and failures arriving in between.
progress = st.one_of(
    st.tuples(st.just("advance")),  # KServe makes things Ready, 31 s pass, a passing measurement if one is due
    st.tuples(st.just("advance")),
    st.tuples(st.just("kserve"), st.just(True)),
    st.tuples(st.just("tick"), st.sampled_from((30, 61))),
    st.tuples(st.just("measure"), st.just("Successful")),
)
op = st.one_of(
    progress, progress, progress, progress, progress, progress, progress, progress,
    # A model edit that may also fix an invalid spec: the old canary bypass ("invalid, then a valid edit with a
    # new model went straight to 100%").
    st.tuples(st.just("model"), st.sampled_from(VERSIONS), st.booleans()),
    st.tuples(st.just("invalid"), st.sampled_from((True, False, False))),
    st.tuples(st.just("suspend"), st.booleans()),
    st.tuples(st.just("scale"), st.integers(0, 3)),
    st.tuples(st.just("strategy"), st.integers(0, len(ROLLOUTS) - 1)),
    st.tuples(st.just("action"), st.sampled_from(ACTIONS)),
    st.tuples(st.just("kserve"), st.just(False)),
    st.tuples(st.just("tick"), st.sampled_from((5, 400))),
    st.tuples(st.just("measure"), st.sampled_from(("Failed", "Inconclusive", "Error"))),
    # The status lost (kubectl edit, a restore without status, another writer) or its stable model unreadable.
    st.tuples(st.just("wipe"), st.sampled_from(({}, {"stableModel": 5}))),
)


class World:
    def __init__(self, mode: str, broken: set[str]):
        self.mode = mode
        self.kserve = KServeSim(mode, broken={f"s3://models/fraud/{v}" for v in broken})
        self.version, self.rollout, self.min_replicas = "v1", 0, 1
        self.invalid = self.suspend = False
        self.status: dict[str, Any] = {}
        self.generation = 1
        self.annotations: dict[str, str] = {}
        self.now = T0
        self.nonce = 0
        # What traffic has shown so far.
        self.full: set[str] = set()  # models that have had 100%
        self.partial: set[str] = set()  # models served at 0 < weight < 100
        self.previewed: set[str] = set()  # models seen as a Ready canary/preview template
        self.exempt: set[str] = set()  # models promoted by hand, or by a strategy without partial weights

    def spec(self) -> dict[str, Any]:
        serving: dict[str, Any] = {"accelerator": "cpu", "deploymentMode": self.mode,
                                   "minReplicas": self.min_replicas, "maxReplicas": 3}
        if self.invalid:
            serving.update(minReplicas=3, maxReplicas=1)
        return {"model": {"storageUri": f"s3://models/fraud/{self.version}", "format": "sklearn"},
                "serving": serving, "rollout": ROLLOUTS[self.rollout], "suspend": self.suspend}

    def body(self) -> dict[str, Any]:
        return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-1", "generation": self.generation,
                             "annotations": dict(self.annotations)},
                "spec": self.spec(), "status": self.status}

    def edit(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self, k, v)
        self.generation += 1

    def measurement(self, verdict: str) -> list[MetricResult] | None:
        try:
            spec = parse_spec(self.spec())
        except SpecError:
            return None
        due = engine.due_metrics(spec, ModelDeploymentStatus.model_validate(self.status), self.now)
        if not due:
            return None
        value = {"Successful": 0.999, "Failed": 0.5}.get(verdict)
        return [MetricResult(name=n, verdict=verdict, value=value, sampleCount=500,  # type: ignore[arg-type]
                             message=f"{n}: {verdict}") for n in due]

    def observation(self, measurement: list[MetricResult] | None) -> ClusterObservation:
        return ClusterObservation(now=self.now, isvc=self.kserve.isvc, measurement=measurement)

    def recorded(self, out: ReconcileResult) -> None:
        """What a subclass learns from each reconcile's output (after the invariants here are checked)."""

    def reconcile(self, measurement: list[MetricResult] | None = None) -> None:
        obs = self.observation(measurement)
        out = reconcile(self.body(), obs, CONFIG)
        stored = out.status.model_dump(mode="json", exclude={"retraining"})
        again = reconcile({**self.body(), "status": stored}, obs, CONFIG)
        assert again.status.model_dump(mode="json", exclude={"retraining"}) == stored, "reconcile is not idempotent"
        assert again.events == [], f"a repeated reconcile emitted {again.events}"
        assert again.isvc == out.isvc
        stable_before = self.status.get("stableModel")
        before = stable_before.get("storageUri") if isinstance(stable_before, dict) else None
        if before is None:  # a status that lost its stable model: the engine adopts what the InferenceService serves
            before = next((m for m, pct in self.kserve.traffic().items() if pct == 100), None)
        self.status = stored
        model = f"s3://models/fraud/{self.version}"
        # Only a promotion a person asked for and the engine honoured is excepted: a promote-full it acted on, or
        # a promote whose step was the last one (an ignored promote, or one that moved a step, excepts nothing).
        steps_said = " ".join(e.message for e in out.events if e.reason == "StepAdvanced")
        if "full promotion requested" in steps_said or ("promoted by an operator" in steps_said and any(
                e.reason in ("Promoted", "Switched") for e in out.events)):
            self.exempt.add(model)
        after = (stored.get("stableModel") or {}).get("storageUri")
        if stored.get("canaryModel") and stored.get("canaryWeight") == 100:
            after = stored["canaryModel"]["storageUri"]  # all traffic to the canary (AllAtOnce, BlueGreen bake)
        if before and after and after != before and after not in self.partial and after not in self.full:
            # How the promotion was decided, whatever the spec says by the time KServe applies it.
            steps = parse_spec({**self.spec(), "serving": {"accelerator": "cpu"}}).rollout.effective_steps()
            if not any(s.setWeight is not None and 0 < s.setWeight < 100 for s in steps):
                if ROLLOUTS[self.rollout].get("strategy") == "BlueGreen":
                    assert after in self.previewed, f"BlueGreen switched to {after} without a Ready preview"
                self.exempt.add(after)
        self.recorded(out)
        self.kserve.apply(out.isvc)
        self.check_desired(out.isvc)

    def check_desired(self, isvc: dict[str, Any] | None) -> None:
        if isvc is None or self.invalid or self.suspend:
            return
        preds = [isvc["spec"]["predictor"]] + [c["predictor"] for c in isvc["spec"].get("canary") or []]
        for p in preds:
            assert (p["minReplicas"], p["maxReplicas"]) == (self.min_replicas, 3), "a scaling edit was not applied"
        st_ = ModelDeploymentStatus.model_validate(self.status)
        if st_.canaryModel is None and st_.stableModel is not None:
            assert isvc["spec"]["predictor"]["model"]["storageUri"] == st_.stableModel.storageUri, \
                "no rollout in progress, yet the template is not the stable model"
            assert "canary" not in isvc["spec"]

    def observe_traffic(self) -> None:
        traffic = self.kserve.traffic()
        assert sum(traffic.values()) in (0, 100), traffic
        preview = self.kserve.ready_preview()
        if preview is not None:
            self.previewed.add(preview)
        for model, pct in traffic.items():
            if 0 < pct < 100:
                self.partial.add(model)
            if pct == 100 and model not in self.full:
                allowed = not self.full or model in self.partial or model in self.exempt  # first model: nothing before

                assert allowed, (f"{model} reached 100% without being a canary between 0 and 100% "
                                 f"(ever full: {sorted(self.full)}, partial: {sorted(self.partial)})")
                self.full.add(model)

    def step(self, o: tuple[Any, ...]) -> None:
        """One operation of a sequence, then a reconcile and a look at the traffic."""
        measurement = None
        kind = o[0]
        if kind == "model":
            self.edit(version=o[1], invalid=self.invalid and not o[2])
        elif kind == "invalid":
            self.edit(invalid=o[1])
        elif kind == "suspend":
            self.edit(suspend=o[1])
        elif kind == "scale":
            self.edit(min_replicas=o[1])
        elif kind == "strategy":
            self.edit(rollout=o[1])
        elif kind == "action":
            self.nonce += 1
            self.annotations[ACTION_ANNOTATION] = f"{o[1]}/{self.nonce}"
        elif kind == "tick":
            self.now += timedelta(seconds=o[1])
        elif kind == "measure":
            measurement = self.measurement(o[1])
        elif kind == "wipe":
            self.status = {} if not o[1] else {**self.status, **o[1]}
        elif kind == "advance":
            self.kserve.settle(ready=True)
            self.observe_traffic()
            self.reconcile()
            self.now += timedelta(seconds=31)
            measurement = self.measurement("Successful")
        if kind == "kserve":
            self.kserve.settle(ready=o[1])
            self.observe_traffic()
        self.reconcile(measurement)
        self.observe_traffic()

    def play(self, ops: list[tuple[Any, ...]]) -> None:
        self.reconcile()
        self.kserve.settle(ready=True)
        self.observe_traffic()
        for o in ops:
            self.step(o)


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_no_model_takes_all_traffic_without_its_canary(mode: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(broken=st.sets(st.sampled_from(VERSIONS[1:]), max_size=2), ops=st.lists(op, min_size=30, max_size=150))
    def run(broken: set[str], ops: list[tuple[Any, ...]]) -> None:
        World(mode, broken).play(ops)

    run()


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
@pytest.mark.parametrize("garble", [
    ("inferenceService", {"ready": "sometimes"}),  # another field of status, hand-edited
    ("previewUrl", 5),
    ("conditions", [{"type": "Ready"}]),
    ("retraining", [{"at": 1}] * 21),  # another writer's list, over its bound
])
def test_an_unreadable_status_field_does_not_forget_the_stable_model(mode: str, garble: tuple[str, Any]) -> None:
    """Regression: one unreadable status field made reconcile rebuild the whole status from nothing, so the
    stable model was forgotten and the spec's new model was deployed outright at 100%, skipping its canary."""
    w = World(mode, set())
    for _ in range(3):
        w.reconcile()
        w.kserve.settle(ready=True)
    w.observe_traffic()
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 100}
    key, value = garble
    w.status[key] = value
    w.edit(version="v2")
    for _ in range(4):
        w.reconcile()
        w.kserve.settle(ready=True)
        w.observe_traffic()  # asserts v2 is not at 100% before a partial weight
        w.now += timedelta(seconds=31)
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 80, "s3://models/fraud/v2": 20}


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
@pytest.mark.parametrize("wipe", [{}, {"stableModel": "v1"}, {"stableModel": None}])
def test_a_wiped_status_does_not_let_a_new_model_skip_its_canary(mode: str, wipe: dict[str, Any]) -> None:
    """Regression (adversarial review): with the status wiped or its stable model unreadable, the engine did not
    look at the model the existing InferenceService serves, so a new spec.model was deployed outright at 100%."""
    w = World(mode, set())
    for _ in range(3):
        w.reconcile()
        w.kserve.settle(ready=True)
    w.observe_traffic()
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 100}
    w.status = {**w.status, **wipe} if wipe else {}
    w.edit(version="v2")
    for _ in range(4):
        w.reconcile()
        w.kserve.settle(ready=True)
        w.observe_traffic()  # asserts v2 is not at 100% before a partial weight
        w.now += timedelta(seconds=31)
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 80, "s3://models/fraud/v2": 20}
    assert w.status["stableModel"]["storageUri"] == "s3://models/fraud/v1"


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
@pytest.mark.parametrize("strategy", [0, 4])
def test_a_lost_stable_model_does_not_lift_a_persons_pause(mode: str, strategy: int) -> None:
    """Regression (found by the invariant's sequences): with status.stableModel unreadable while a person had
    paused the canary, the engine adopted the served model as stable and started the canary's rollout afresh,
    dropping the pause: under AllAtOnce the paused model took all traffic in the same reconcile."""
    w = World(mode, set())
    w.play([("advance",)] * 3)
    w.nonce += 1
    w.annotations[ACTION_ANNOTATION] = f"pause/{w.nonce}"  # given with the edit: it holds the new rollout
    w.edit(rollout=strategy, version="v2")
    w.reconcile()
    assert [p["reason"] for p in w.status["pauseConditions"]] == ["PausedByUser"]
    held = w.kserve.traffic()
    w.status["stableModel"] = 5
    for _ in range(3):
        w.step(("advance",))
    assert w.kserve.traffic() == held
    if mode == "Serverless":  # the template is the paused canary, the stable an unnamed Knative revision
        progressing = next(c for c in w.status["conditions"] if c["type"] == "Progressing")
        assert w.status["stableModel"] is None and progressing["reason"] == "StableUnknown"
        return
    assert w.status["stableModel"]["storageUri"] == "s3://models/fraud/v1"
    assert w.status["canaryModel"]["storageUri"] == "s3://models/fraud/v2"
    assert "PausedByUser" in [p["reason"] for p in w.status["pauseConditions"]]


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_a_wiped_status_with_the_same_model_is_not_a_first_deployment_again(mode: str) -> None:
    """Regression (found by the status-wipe edit in the invariant test): wiped while the spec still named the
    served model, the status restarted as a first deployment, which the next model edit may replace outright
    until it is seen serving (a scaling edit KServe had not observed yet kept it "not serving")."""
    w = World(mode, set())
    for _ in range(3):
        w.reconcile()
        w.kserve.settle(ready=True)
    w.observe_traffic()
    w.edit(min_replicas=0)
    w.reconcile()
    w.status = {}
    w.reconcile()
    w.edit(version="v2")
    for _ in range(4):
        w.reconcile()
        w.kserve.settle(ready=True)
        w.observe_traffic()
        w.now += timedelta(seconds=31)
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 80, "s3://models/fraud/v2": 20}


def test_a_status_wiped_mid_split_leaves_the_serverless_inference_service_alone() -> None:
    """Regression (found by the status-wipe edit in the invariant test): wiped while a Serverless canary template
    splits traffic with the rolled-out revision, the template's model was taken for the stable and then served
    alone. The InferenceService does not name the rolled-out model, so nothing is written until a person acts."""
    w = World("Serverless", set())
    for _ in range(3):
        w.reconcile()
        w.kserve.settle(ready=True)
    w.edit(version="v2")
    w.reconcile()
    w.status = {}
    for _ in range(4):
        w.kserve.settle(ready=True)
        w.observe_traffic()
        w.reconcile()
        w.now += timedelta(seconds=31)
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 100}
    progressing = next(c for c in w.status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "StableUnknown" and "restore status.stableModel" in progressing["message"]


def test_a_re_created_serverless_inference_service_does_not_give_the_preview_all_traffic() -> None:
    """Regression: the InferenceService deleted mid-rollout (a BlueGreen preview at 0%) was re-created with the
    canary template and canaryTrafficPercent; with no rolled-out revision KServe sent it all traffic."""
    w = World("Serverless", set())
    w.rollout = 3  # BlueGreen: the preview at 0%
    for _ in range(3):
        w.reconcile()
        w.kserve.settle(ready=True)
    w.observe_traffic()
    w.edit(version="v2")
    w.reconcile()
    w.kserve.settle(ready=True)
    w.observe_traffic()
    w.kserve = KServeSim("Serverless")  # deleted (kubectl delete, a prune) and re-created by the controller
    for _ in range(3):
        w.reconcile()
        w.kserve.settle(ready=True)
        w.observe_traffic()
        assert w.kserve.traffic() == {"s3://models/fraud/v1": 100}
    assert w.kserve.ready_preview() == "s3://models/fraud/v2"  # the preview is back, at 0%


def test_an_action_meant_for_one_canary_does_not_promote_the_model_that_replaced_it() -> None:
    """Regression: `kanari.dev/action: promote-full` written for canary v2, with the spec moved on to v3 before
    the controller saw it, promoted v3 to 100% at once: it had never had any traffic."""
    w = World("RawDeployment", set())
    for _ in range(3):
        w.reconcile()
        w.kserve.settle(ready=True)
    w.edit(version="v2")
    for _ in range(3):
        w.reconcile()
        w.kserve.settle(ready=True)
    w.observe_traffic()
    w.annotations[ACTION_ANNOTATION] = "promote-full/1"
    w.edit(version="v3")
    for _ in range(2):
        w.reconcile()
        w.kserve.settle(ready=True)
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 80, "s3://models/fraud/v3": 20}
