"""A status that lost its stable model (wiped, hand-edited, another writer) is adopted against what the
InferenceService serves. What the rest of that status still says must hold: a rollback stays a rollback, and a
contradictory status is no reason for the controller to fail every reconcile."""

from __future__ import annotations

from typing import Any

import pytest
from kanari.api.v1alpha1 import ACTION_ANNOTATION

from tests.controller.test_rollout_invariants import World


def _action(w: World, name: str) -> None:
    w.nonce += 1
    w.annotations[ACTION_ANNOTATION] = f"{name}/{w.nonce}"


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_a_lost_stable_model_does_not_roll_out_a_rolled_back_revision_again(mode: str) -> None:
    """Regression (review 4): an operator aborted v2; the status then lost its stable model, and the adopt path
    cleared abortedRevision and started v2's rollout again without a retry (it went on to 100%)."""
    w = World(mode, set())
    w.play([("advance",)] * 3)
    w.edit(version="v2")
    w.play([("advance",)] * 2)
    _action(w, "abort")
    w.play([("advance",)] * 3)
    aborted = w.status["abortedRevision"]
    assert aborted and w.kserve.traffic() == {"s3://models/fraud/v1": 100}
    w.status["stableModel"] = 5
    w.play([("advance",)] * 6)
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 100}
    assert w.status["abortedRevision"] == aborted and w.status["canaryModel"] is None
    assert w.status["stableModel"]["storageUri"] == "s3://models/fraud/v1"
    assert w.status["phase"] == "RolledBack"
    _action(w, "retry")  # a person's retry still rolls it out, as a canary
    w.play([("advance",)] * 2)
    assert w.status["canaryModel"]["storageUri"] == "s3://models/fraud/v2"
    assert w.status["abortedRevision"] is None


@pytest.mark.parametrize("garble", [{"deploying": True}, {"deploying": True, "deployFailed": "x"}])
def test_a_lost_stable_model_beside_a_contradictory_rollout_does_not_fail_reconcile(garble: dict[str, Any]) -> None:
    """Regression (review 4): a status with no stable model, the spec's model as canary and rollout.deploying set
    resumed the rollout as Rolling while its facts said Deploying: the engine's own move check raised
    AssertionError on every reconcile, so the ModelDeployment was stuck."""
    w = World("RawDeployment", set())
    w.play([("advance",)] * 3)
    w.edit(version="v2")
    w.step(("advance",))
    w.status["stableModel"] = 5
    w.status["rollout"].update(garble)
    w.step(("advance",))  # World.reconcile also checks idempotency and the traffic invariant
    assert w.status["stableModel"]["storageUri"] == "s3://models/fraud/v1"
    assert w.status["canaryModel"]["storageUri"] == "s3://models/fraud/v2"
    assert 0 < w.kserve.traffic()["s3://models/fraud/v2"] < 100


def test_a_spent_retry_is_not_taken_again_when_the_status_lost_its_last_action() -> None:
    """Review 4: a rolled-back revision whose status then lost its stable model and its rollout record (where the
    last action taken is kept) read the annotation's old, spent `retry` as new and rolled the revision out again.
    A retry given afresh still works."""
    w = World("RawDeployment", {"v2"})  # v2 never becomes Ready: its rollouts fail
    w.play([("advance",)] * 3)
    w.edit(version="v2")
    w.play([("advance",)] * 6)
    _action(w, "retry")
    w.play([("advance",)] * 6)
    aborted = w.status["abortedRevision"]
    assert aborted and w.status["rollout"]["lastAction"].startswith("retry/")
    w.status["stableModel"] = 5
    w.status["rollout"] = 5
    w.play([("kserve", True)] * 2)
    assert w.status["abortedRevision"] == aborted and w.status["canaryModel"] is None
    assert w.kserve.traffic() == {"s3://models/fraud/v1": 100}
    _action(w, "retry")
    w.step(("kserve", True))
    assert w.status["canaryModel"]["storageUri"] == "s3://models/fraud/v2"
