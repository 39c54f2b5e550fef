"""Plan a rollout step around NeuronCores: how many canary and stable replicas, and whether they fit.

The step's replicas (RawDeployment): the canary follows its traffic weight, as Argo Rollouts'
setCanaryScale does: ceil(fleet x weight / 100), and at least one pod so a 0% preview can be analysed.
Serverless: Knative sizes revisions itself; the canary revision starts at minReplicas (at least 1).

Policies:
- Surge: the stable fleet stays as it is; the canary's new pods need free room.
- Replace (RawDeployment only, for clusters that cannot hold two fleets): stable pods are given up to
  make room, but never below the floor the traffic still sent to the stable version needs:
  ceil(floor x (100 - current weight) / 100). Room is taken from free NeuronCores first, so stable pods
  are given up only when the cluster is full.

A plan that does not fit is not an error: the rollout waits (CapacityPending) and tries again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from kanari.capacity.cluster import Room

Policy = Literal["Surge", "Replace"]
Mode = Literal["Serverless", "RawDeployment"]


def canary_replicas(fleet: int, weight: int, mode: Mode, min_replicas: int = 1) -> int:
    if mode == "Serverless":
        return max(1, min_replicas)
    return max(1, math.ceil(max(1, fleet) * weight / 100))


def stable_floor(floor: int, current_weight: int) -> int:
    """Stable replicas the traffic still on stable needs while the canary takes `current_weight`%."""
    return math.ceil(max(0, floor) * (100 - current_weight) / 100)


@dataclass(frozen=True)
class StepPlan:
    fits: bool
    target_weight: int
    canary_replicas: int  # after the step
    stable_replicas: int  # while the step's canary pods start (traffic still at the current weight)
    canary_cores: int  # NeuronCores per canary replica
    added_cores: int  # NeuronCores the new canary pods take
    released_stable: int  # stable replicas given up to make room (Replace)
    room: Room
    message: str


def plan_step(
    *,
    policy: Policy,
    mode: Mode,
    fleet: int,
    floor: int,
    min_replicas: int,
    canary_cores: int,
    stable_cores: int,
    current_weight: int,
    target_weight: int,
    current_canary: int,
    current_stable: int,
    room: Room,
) -> StepPlan:
    """The replicas for moving the canary from `current_weight` to `target_weight`, and whether they fit."""
    want = canary_replicas(fleet, target_weight, mode, min_replicas)
    add = max(0, want - current_canary)
    needed = add * canary_cores
    slots = room.slots
    free_slots = add if slots is None else min(add, slots)
    missing = add - free_slots
    released = 0
    if missing and policy == "Replace" and mode == "RawDeployment":
        per_release = stable_cores // canary_cores if canary_cores else 0
        givable = max(0, current_stable - stable_floor(floor, current_weight))
        if per_release:
            released = min(givable, math.ceil(missing / per_release))
            missing = max(0, missing - released * per_release)
    fits = missing == 0
    stable = current_stable - released
    if fits:
        how = f", giving up {released} stable replica(s)" if released else ""
        msg = (
            f"weight {target_weight}: {want} canary replica(s) x {canary_cores} NeuronCores "
            f"(+{needed}){how}; {room.describe()}"
        )
    else:
        floor_note = ""
        if policy == "Replace":
            floor_note = (
                f"; Replace keeps at least {stable_floor(floor, current_weight)} stable replica(s) for the "
                f"{100 - current_weight}% of traffic still on stable"
            )
        msg = (
            f"weight {target_weight} needs {needed} more NeuronCores ({add} canary replica(s) x {canary_cores}); "
            f"{room.describe()}{floor_note}"
        )
    return StepPlan(
        fits=fits,
        target_weight=target_weight,
        canary_replicas=want if fits else current_canary,
        stable_replicas=stable if fits else current_stable,
        canary_cores=canary_cores,
        added_cores=needed if fits else 0,
        released_stable=released if fits else 0,
        room=room,
        message=msg,
    )
