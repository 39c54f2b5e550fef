"""Invariants of capacity planning over random clusters and random rollouts.

- Room never counts more replicas than existing nodes plus what the NodePools' limits still let Karpenter
  launch (checked against an independent optimum: a knapsack over the pool's instance types).
- A plan never adds more canary pods than there is room for, and Replace never takes the stable version
  below the floor the traffic on it needs, at any point of any rollout.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.capacity.cluster import observe, room_for
from kanari.capacity.plan import canary_replicas, plan_step, stable_floor
from kanari.capacity.topology import INSTANCES

from tests.capacity.capacity_fixtures import node, nodeclaim, nodepool, pod
from tests.support.schemas import validate_custom

INF2_TYPES = [t for t in INSTANCES if t.startswith("inf2.")]
SIZES = {t: t.split(".")[1] for t in INF2_TYPES}
SELECTORS = [
    {"karpenter.k8s.aws/instance-family": "inf2"},
    {"node.kubernetes.io/instance-type": "inf2.xlarge"},
    {"node.kubernetes.io/instance-type": "inf2.48xlarge"},
    {"karpenter.k8s.aws/instance-family": "inf2", "kanari.dev/accelerator": "inferentia2"},
]


@st.composite
def clusters(draw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    pools, claims, nodes, pods = [], [], [], []
    for p in range(draw(st.integers(0, 3))):
        name = f"pool{p}"
        sizes = draw(st.lists(st.sampled_from(sorted(set(SIZES.values()))), min_size=1, max_size=4, unique=True))
        limit_kind = draw(st.sampled_from(["cores", "devices", "none"]))
        limit_value = draw(st.integers(0, 120))
        limit = {"cores": {"aws.amazon.com/neuroncore": str(limit_value)},
                 "devices": {"aws.amazon.com/neuron": str(limit_value // 2)}, "none": None}[limit_kind]
        status = draw(st.one_of(st.none(), st.integers(0, 60).map(lambda c: {"aws.amazon.com/neuroncore": str(c)})))
        obj = nodepool(name, limit, status, sizes=sizes)
        validate_custom(obj)
        pools.append(obj)
        for c in range(draw(st.integers(0, 3))):
            itype = draw(st.sampled_from([t for t in INF2_TYPES if SIZES[t] in sizes]))
            registered = draw(st.booleans())
            claim = nodeclaim(f"{name}-c{c}", name, itype, node_name=f"{name}-n{c}" if registered else None)
            validate_custom(claim)
            claims.append(claim)
            if registered:
                nodes.append(node(f"{name}-n{c}", itype, name))
    for n in range(draw(st.integers(0, 3))):  # nodes no pool owns (a managed node group)
        nodes.append(node(f"static-{n}", draw(st.sampled_from(INF2_TYPES)), None))
    for i, n in enumerate(nodes):
        cap = INSTANCES[n["metadata"]["labels"]["node.kubernetes.io/instance-type"]].cores
        taken = draw(st.integers(0, cap))
        while taken:
            c = draw(st.integers(1, taken))
            pods.append(pod(f"p{i}-{taken}", c, n["metadata"]["name"]))
            taken -= c
    return pools, claims, nodes, pods


def _knapsack(headroom: int, sizes: list[int], r: int) -> int:
    """Most replicas of r cores that new nodes of the given sizes can hold within `headroom` cores."""
    best = [0] * (headroom + 1)
    for h in range(headroom + 1):
        for s in sizes:
            if s <= h:
                best[h] = max(best[h], best[h - s] + s // r)
    return best[headroom]


@settings(max_examples=150, deadline=None)
@given(clusters(), st.sampled_from(SELECTORS), st.sampled_from([1, 2, 4, 6, 12, 24]))
def test_room_never_exceeds_nodes_plus_what_the_limits_allow(cluster: Any, selector: dict[str, str], r: int) -> None:
    pools, claims, nodes, pods = cluster
    room = room_for(observe(pools, claims, nodes, pods), selector, r)

    def matches(labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    used: dict[str, int] = {}
    for p in pods:
        used[p["spec"]["nodeName"]] = used.get(p["spec"]["nodeName"], 0) + int(
            p["spec"]["containers"][0]["resources"]["requests"]["aws.amazon.com/neuroncore"])
    existing = 0
    for n in nodes:
        if matches(n["metadata"]["labels"]):
            cap = int(n["status"]["allocatable"]["aws.amazon.com/neuroncore"])
            existing += (cap - used.get(n["metadata"]["name"], 0)) // r
    registered = {n["metadata"]["name"] for n in nodes}
    for c in claims:
        labels = {**c["metadata"]["labels"], "karpenter.k8s.aws/instance-family": "inf2",
                  "karpenter.k8s.aws/instance-size": c["metadata"]["labels"]["node.kubernetes.io/instance-type"].split(".")[1]}
        if c["status"].get("nodeName") not in registered and matches(labels):
            existing += int(c["status"]["allocatable"]["aws.amazon.com/neuroncore"]) // r

    unbounded = False
    launchable = 0
    for p in pools:
        name = p["metadata"]["name"]
        allowed = [t for t in INF2_TYPES if SIZES[t] in p["spec"]["template"]["spec"]["requirements"][1]["values"]
                   and all(v == {"node.kubernetes.io/instance-type": t, "karpenter.k8s.aws/instance-family": "inf2",
                                 "kanari.dev/accelerator": "inferentia2"}.get(k) for k, v in selector.items())]
        if not allowed:
            continue
        limits = p["spec"].get("limits")
        if limits is None:
            unbounded = unbounded or any(INSTANCES[t].cores >= r for t in allowed)
            continue
        limit = int(limits.get("aws.amazon.com/neuroncore", 0)) or 2 * int(limits.get("aws.amazon.com/neuron", 0))
        claimed = sum(int(c["status"]["capacity"]["aws.amazon.com/neuroncore"]) for c in claims
                      if c["metadata"]["labels"]["karpenter.sh/nodepool"] == name)
        status = int((p.get("status") or {}).get("resources", {}).get("aws.amazon.com/neuroncore", 0))
        headroom = max(0, limit - max(claimed, status))
        launchable += _knapsack(headroom, [INSTANCES[t].cores for t in allowed], r)

    if unbounded:
        assert room.slots is None
    else:
        assert room.slots is not None and 0 <= room.slots <= existing + launchable


@st.composite
def rollouts(draw: Any) -> dict[str, Any]:
    fleet = draw(st.integers(1, 12))
    weights = sorted(draw(st.lists(st.integers(1, 100), min_size=1, max_size=6)))
    return {
        "fleet": fleet,
        "floor": draw(st.integers(0, fleet)),
        "r": draw(st.sampled_from([1, 2, 4])),
        "spare": draw(st.integers(0, 12)),  # free replica slots beyond the stable fleet
        "weights": [*weights, 100] if weights[-1] != 100 else weights,
        "policy": draw(st.sampled_from(["Surge", "Replace"])),
        "grow": draw(st.lists(st.integers(0, 3), min_size=8, max_size=8)),  # capacity appearing while waiting
    }


@settings(max_examples=300, deadline=None)
@given(rollouts())
def test_rollouts_never_overcommit_and_replace_keeps_the_floor(case: dict[str, Any]) -> None:
    """Walk a RawDeployment rollout step by step on a fixed cluster (slots = replicas that fit)."""
    fleet, floor, r = case["fleet"], case["floor"], case["r"]
    total_slots = fleet + case["spare"]
    stable, canary, weight = fleet, 0, 0
    from kanari.capacity.cluster import Room

    waits = 0
    for target in case["weights"]:
        while True:
            free = total_slots - stable - canary
            room = Room(slots=free, free_cores=free * r, headroom_cores=0, limit_cores=total_slots * r)
            plan = plan_step(policy=case["policy"], mode="RawDeployment", fleet=fleet, floor=floor, min_replicas=fleet,
                             canary_cores=r, stable_cores=r, current_weight=weight, target_weight=target,
                             current_canary=canary, current_stable=stable, room=room)
            if plan.fits:
                break
            assert "needs" in plan.message and "limit" in plan.message
            assert plan.stable_replicas == stable and plan.canary_replicas == canary  # waiting changes nothing
            total_slots += case["grow"][waits % len(case["grow"])]
            waits += 1
            if waits > 40:
                return  # never enough room: it keeps waiting, which is the point
        # While the new canary pods start, traffic is still at `weight`.
        stable, canary = plan.stable_replicas, plan.canary_replicas
        assert stable + canary <= total_slots, "planned more replicas than fit"
        assert stable >= stable_floor(floor, weight), "Replace went below the serving floor"
        if case["policy"] == "Surge":
            assert stable == fleet
        assert canary >= canary_replicas(fleet, target, "RawDeployment")
        assert canary * 100 >= fleet * target or canary == 1
        weight = target
    assert weight == 100 and canary >= fleet


@given(st.integers(0, 100), st.integers(0, 50))
def test_stable_floor_covers_the_stable_share(weight: int, floor: int) -> None:
    assert stable_floor(floor, weight) >= floor * (100 - weight) / 100
    assert stable_floor(floor, weight) <= floor
    assert math.ceil(floor * (100 - weight) / 100) == stable_floor(floor, weight)
