"""The rollout invariant with the warm-up gate on, through the controller's whole decision (reconcile) and the
KServe stand-in that applies every InferenceService it emits, over random sequences (the same operations as
test_rollout_invariants, plus warm-up observations that come, go, or fall short):

- no model other than the very first receives any traffic before the warm-up gate recorded its revision warm;
- a revision is recorded warm only after every pod observed answered `requests` warm-up requests;
- reconcile is idempotent with the warm-up observation in it;
- and every invariant of test_rollout_invariants still holds (the same World, its checks inherited).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.api.v1alpha1 import MetricResult, ModelDeploymentStatus
from kanari.controller.reconcile import ClusterObservation, ReconcileResult
from kanari.rollout.warmup import PodObservation, WarmupObservation

from tests.controller.test_rollout_invariants import VERSIONS, World, op

EXAMPLES = int(os.environ.get("KANARI_INVARIANT_EXAMPLES", "150"))
WARMUP = {"requests": 2, "timeoutSeconds": 5, "budgetSeconds": 600}

warm_op = st.tuples(st.just("warm"), st.lists(st.integers(0, 3), max_size=3))
ops = st.one_of(op, warm_op, warm_op, st.tuples(st.just("unwarm")))


class WarmWorld(World):
    def __init__(self, mode: str, broken: set[str]):
        super().__init__(mode, broken)
        self.warm: WarmupObservation | None = None
        self.seen: set[str] = set()  # models that have had traffic
        self.warmed: set[str] = set()  # models whose revision the gate recorded warm
        self.first: str | None = None

    def spec(self) -> dict[str, Any]:
        s = super().spec()
        return {**s, "rollout": {**s["rollout"], "warmup": WARMUP}}

    def observation(self, measurement: list[MetricResult] | None) -> ClusterObservation:
        return ClusterObservation(now=self.now, isvc=self.kserve.isvc, measurement=measurement, warmup=self.warm)

    def recorded(self, out: ReconcileResult) -> None:
        st_ = out.status
        w = st_.warmup
        # The revision warmed is the canary's, or already the stable's when the same reconcile promoted it
        # (AllAtOnce: all traffic once warm).
        served = next((m for m in (st_.canaryModel, st_.stableModel) if w is not None and m is not None
                       and m.revision == w.revision), None)
        if w is not None and w.succeededAt and served is not None:
            assert w.pods and all(p.answered >= WARMUP["requests"] for p in w.pods), w
            self.warmed.add(served.storageUri)

    def observe_traffic(self) -> None:
        super().observe_traffic()
        for model, pct in self.kserve.traffic().items():
            if pct <= 0 or model in self.seen:
                continue
            if self.first is None:
                self.first = model  # the first model ever deployed has nothing to be a canary against
            assert model == self.first or model in self.warmed, (
                f"{model} took {pct}% before its warm-up succeeded (warmed: {sorted(self.warmed)})")
            self.seen.add(model)

    def step(self, o: tuple[Any, ...]) -> None:
        if o[0] == "warm":
            canary = ModelDeploymentStatus.model_validate(self.status).canaryModel
            self.warm = WarmupObservation(revision=canary.revision if canary else "none", pods=tuple(
                PodObservation(name=f"p{i}", scheduled_at=self.now, answered=a) for i, a in enumerate(o[1])))
        elif o[0] == "unwarm":
            self.warm = None
        else:
            super().step(o)
            return
        self.reconcile()
        self.observe_traffic()


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_no_model_gets_traffic_before_its_warm_up(mode: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(broken=st.sets(st.sampled_from(VERSIONS[1:]), max_size=1), steps=st.lists(ops, min_size=20, max_size=80))
    def run(broken: set[str], steps: list[tuple[Any, ...]]) -> None:
        WarmWorld(mode, broken).play(steps)

    run()
