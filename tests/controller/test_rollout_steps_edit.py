"""Regression (adversarial review): editing spec.rollout.steps mid-rollout so that the current step lies past the
end of the new list completed the rollout at once: the canary took 100% without running the analysis the new
list asks for. The steps are hashed (as Argo Rollouts' currentStepHash) and a change restarts them at step 0."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.controller.test_rollout_invariants import METRIC, ROLLOUTS, World

ANALYSIS = {"interval": "30s", "metrics": [METRIC]}
BEFORE = {"steps": [{"setWeight": 20}, {"setWeight": 50}, {"pause": {"duration": "10m"}}], "analysis": ANALYSIS}
AFTER = {"steps": [{"setWeight": 20}, {"analysis": {}}], "analysis": ANALYSIS}


def settle(w: World, times: int = 3) -> None:
    for _ in range(times):
        w.reconcile()
        w.kserve.settle(True)


@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_new_steps_that_end_before_the_current_step_are_walked_from_the_start(mode: str) -> None:
    ROLLOUTS.extend([BEFORE, AFTER])
    try:
        w = World(mode, set())
        w.edit(rollout=len(ROLLOUTS) - 2)
        settle(w)
        w.edit(version="v2")
        settle(w, 4)
        assert w.status["currentStep"] == 2, w.status["message"]  # pausing at weight 50
        w.edit(rollout=len(ROLLOUTS) - 1)  # the new list's analysis lies before step 2
        settle(w)
        assert w.status["phase"] != "Succeeded", w.status["message"]
        assert w.status["currentStep"] == 1, w.status["message"]
        share = w.kserve.traffic()
        assert len(share) == 2 and 0 < min(share.values()) < 100, share  # v2 still a canary, at 20%
        # The analysis the new list asks for decides: a passing measurement promotes.
        w.now += timedelta(seconds=31)
        w.reconcile(w.measurement("Successful"))
        settle(w)
        assert w.status["phase"] == "Succeeded", w.status["message"]
    finally:
        del ROLLOUTS[-2:]
