"""The rollout engine's capacity gate: may the canary grow to the next weight's replicas now?

Pure: (spec, status, what the controller observed of the cluster, the weight about to be set) -> the
plan to store in status.capacity and whether the step may go on. Not enough room is never a failure:
the rollout waits with the pause reason CapacityPending and goes on by itself once the room is there.
"""

from __future__ import annotations

from dataclasses import dataclass

from kanari.api.v1alpha1 import CanaryStep, CapacityStatus, ModelDeploymentSpec, ModelDeploymentStatus
from kanari.capacity.cluster import Room
from kanari.capacity.plan import canary_replicas, plan_step
from kanari.capacity.spec import replica_cores

REASON = "CapacityPending"
RECHECK_SECONDS = 15.0  # how soon a waiting rollout looks again (NodePool limits, nodes, pods change)


@dataclass(frozen=True)
class CapacityView:
    """What the controller saw of the cluster for one ModelDeployment (kanari.capacity.observer)."""

    room: Room | None
    stable_replicas: int | None = None  # running stable pods
    stable_cores: int | None = None  # NeuronCores each stable pod holds
    canary_ready_replicas: int | None = None  # Ready canary pods
    error: str | None = None  # why the cluster could not be read (then nothing is planned)
    recheck_seconds: float = RECHECK_SECONDS


@dataclass(frozen=True)
class GateResult:
    admitted: bool  # the canary may have the planned replicas
    ready: bool  # ...and they are Ready, so traffic may move
    status: CapacityStatus
    message: str


def next_weight(steps: list[CanaryStep], current_step: int, current_weight: int) -> int:
    """The weight the canary must be sized for now: the current step's setWeight, else where it is."""
    if current_step < len(steps) and steps[current_step].setWeight is not None:
        return max(current_weight, steps[current_step].setWeight or 0)
    return current_weight


def check(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, view: CapacityView, target_weight: int
) -> GateResult:
    serving = spec.serving
    assert status.canaryModel is not None
    revision = status.canaryModel.revision
    cores = replica_cores(serving)
    previous = status.capacity if status.capacity and status.capacity.revision == revision else None
    fleet = max(serving.minReplicas, view.stable_replicas or 0, 1)
    current_canary = previous.canaryReplicas if previous else 0
    current_stable = previous.stableReplicas if previous and previous.stableReplicas is not None else fleet
    if view.error is not None or view.room is None:
        msg = f"cannot tell whether {cores} NeuronCores per canary replica fit: {view.error or 'cluster not observed'}"
        held = CapacityStatus(revision=revision, canaryReplicas=current_canary, stableReplicas=current_stable,
                              coresPerReplica=cores, pending=True, message=msg)
        return GateResult(False, False, held, msg)
    want = canary_replicas(fleet, target_weight, serving.deploymentMode, serving.minReplicas)
    if previous and current_canary >= want:
        ready = view.canary_ready_replicas is None or view.canary_ready_replicas >= current_canary
        return GateResult(True, ready, previous.model_copy(update={"pending": False}), previous.message)
    plan = plan_step(
        policy=serving.capacityPolicy,
        mode=serving.deploymentMode,
        fleet=fleet,
        floor=serving.capacityFloor if serving.capacityFloor is not None else fleet,
        min_replicas=serving.minReplicas,
        canary_cores=cores,
        stable_cores=view.stable_cores or cores,
        current_weight=status.canaryWeight,
        target_weight=target_weight,
        current_canary=current_canary,
        current_stable=current_stable,
        room=view.room,
    )
    new = CapacityStatus(
        revision=revision,
        canaryReplicas=plan.canary_replicas,
        stableReplicas=plan.stable_replicas if serving.capacityPolicy == "Replace" else None,
        coresPerReplica=cores,
        neededCores=(want - current_canary) * cores,
        freeCores=view.room.free_cores,
        limitCores=view.room.limit_cores,
        pending=not plan.fits,
        message=plan.message,
    )
    ready = plan.fits and (view.canary_ready_replicas is None or view.canary_ready_replicas >= plan.canary_replicas)
    return GateResult(plan.fits, ready, new, plan.message)
