"""A rollout on a full cluster waits in CapacityPending instead of failing or overcommitting, and goes on by
itself when a NodePool limit is raised; the InferenceService is sized by the plan."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, parse_spec
from kanari.capacity import isvc as capacity_isvc
from kanari.capacity.cluster import observe, room_for
from kanari.capacity.gate import CapacityView
from kanari.rollout.engine import RolloutDecision, RolloutObservation, decide

from tests.capacity.capacity_fixtures import node, nodepool, pod
from tests.rollout.rollout_testlib import T0, ref, same

INF2 = {"karpenter.k8s.aws/instance-family": "inf2"}


def inf2_spec(version: str, policy: str = "Surge", steps: list[dict[str, Any]] | None = None,
              replicas: int = 4, **serving: Any) -> ModelDeploymentSpec:
    return parse_spec({
        "model": {"storageUri": f"s3://models/llm/{version}"},
        "serving": {"neuronCores": 2, "minReplicas": replicas, "maxReplicas": replicas,
                    "deploymentMode": "RawDeployment", "capacityPolicy": policy, **serving},
        "rollout": {"steps": steps or [{"setWeight": 25}, {"pause": {"duration": "1m"}}, {"setWeight": 50},
                                       {"pause": {"duration": "1m"}}, {"setWeight": 100}],
                    "progressDeadline": "10m"},
    })


class Cluster:
    """inf2.xlarge nodes (2 cores each) owned by one NodePool whose limit is in NeuronCores."""

    def __init__(self, limit: int, nodes: int, stable: int):
        self.limit = limit
        self.nodes = [node(f"n{i}", "inf2.xlarge") for i in range(nodes)]
        self.stable = [pod(f"stable-{i}", 2, f"n{i}") for i in range(stable)]
        self.canary: list[dict[str, Any]] = []

    def view(self, canary_ready: int | None = None) -> CapacityView:
        pool = nodepool("inf2", {"aws.amazon.com/neuroncore": str(self.limit)},
                        {"aws.amazon.com/neuroncore": str(2 * len(self.nodes))}, sizes=["xlarge"])
        room = room_for(observe([pool], [], self.nodes, self.stable + self.canary), INF2, 2)
        return CapacityView(room=room, stable_replicas=len(self.stable), stable_cores=2,
                            canary_ready_replicas=len(self.canary) if canary_ready is None else canary_ready)

    def converge(self, status: ModelDeploymentStatus, spec: ModelDeploymentSpec) -> None:
        """What KServe, the scheduler and Karpenter do with the sized InferenceService."""
        cap = status.capacity
        if cap is None or status.canaryModel is None:
            return
        if cap.stableReplicas is not None:
            self.stable = self.stable[: cap.stableReplicas]
        while len(self.canary) < cap.canaryReplicas:
            used = {p["spec"]["nodeName"] for p in self.stable + self.canary}
            free = [n["metadata"]["name"] for n in self.nodes if n["metadata"]["name"] not in used]
            if not free:
                if 2 * (len(self.nodes) + 1) > self.limit:
                    raise AssertionError("the plan needed a node beyond the NodePool limit")
                self.nodes.append(node(f"n{len(self.nodes)}", "inf2.xlarge"))
                free = [self.nodes[-1]["metadata"]["name"]]
            self.canary.append(pod(f"canary-{len(self.canary)}", 2, free[0]))


def run(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, cluster: Cluster, now: Any) -> RolloutDecision:
    obs = RolloutObservation(now=now, desired=ref(spec), stable_ready=True, canary_ready=True,
                             capacity=cluster.view())
    d = decide(spec, status, obs, 3)
    stored = ModelDeploymentStatus.model_validate(d.status.model_dump(mode="json"))
    again = decide(spec, stored, obs, 3)
    assert same(d, again) and again.events == [], "not idempotent"
    return d


def deployed(spec: ModelDeploymentSpec) -> ModelDeploymentStatus:
    status = ModelDeploymentStatus()
    obs = RolloutObservation(now=T0, desired=ref(spec), stable_ready=True, canary_ready=True)
    return decide(spec, status, obs, 1).status


def test_full_cluster_waits_in_capacity_pending_and_resumes_when_the_limit_is_raised() -> None:
    v1, v2 = inf2_spec("v1"), inf2_spec("v2")
    cluster = Cluster(limit=8, nodes=4, stable=4)  # four replicas of two cores: the pool is full
    status = deployed(v1)
    now = T0
    events: list[str] = []
    for _ in range(200):  # an hour at 15 s a pass, far beyond progressDeadline (10m)
        d = run(v2, status, cluster, now)
        status = d.status
        events += [e.reason for e in d.events]
        now += timedelta(seconds=15)
    assert status.phase == "Paused" and status.rollout.pausedReason == "CapacityPending"
    assert status.canaryWeight == 0 and "RolledBack" not in events and events.count("CapacityPending") == 1
    cond = next(c for c in status.conditions if c.type == "CapacityAvailable")
    assert cond.status == "False"
    assert "needs 2 more NeuronCores" in cond.message and "limit 8" in cond.message and "free 0" in cond.message
    assert status.capacity is not None and status.capacity.pending and status.capacity.canaryReplicas == 0
    # No canary pod exists while it waits: it could only sit Pending.
    assert capacity_isvc.hold_canary(status)

    cluster.limit = 16  # an operator raises the NodePool limit
    for _ in range(40):
        d = run(v2, status, cluster, now)
        status = d.status
        events += [e.reason for e in d.events]
        cluster.converge(status, v2)
        now += timedelta(seconds=15)
        if status.phase == "Succeeded":
            break
    assert status.phase == "Succeeded", status.message
    assert "CapacityAvailable" in events and "RolledBack" not in events
    assert status.stableModel is not None and status.stableModel.version == "v2"


def test_canary_replicas_follow_the_weight_and_size_the_inferenceservice() -> None:
    from kanari.api.v1alpha1 import ModelDeployment, ObjectMeta
    from kanari.controller import inferenceservice
    from kanari.controller.config import OperatorConfig
    from kanari.controller.serving_runtime import RuntimeChoice

    v1, v2 = inf2_spec("v1", replicas=8), inf2_spec("v2", replicas=8)
    cluster = Cluster(limit=64, nodes=8, stable=8)
    status = deployed(v1)
    now = T0
    seen = []
    for _ in range(60):
        status = run(v2, status, cluster, now).status
        cluster.converge(status, v2)
        if status.capacity and status.canaryModel:
            seen.append((status.canaryWeight, status.capacity.canaryReplicas))
            md = ModelDeployment(metadata=ObjectMeta(name="llm"), spec=v2, status=status)
            built = inferenceservice.build(md, stable=status.stableModel, canary=status.canaryModel,
                                           canary_weight=status.canaryWeight,
                                           runtime=RuntimeChoice("kanari-neuron", "pytorch-neuronx"),
                                           config=OperatorConfig())
            sized = capacity_isvc.size(built, v2, status)
            assert sized is not None
            assert sized["spec"]["canary"][0]["predictor"]["minReplicas"] == status.capacity.canaryReplicas
            assert sized["spec"]["predictor"]["minReplicas"] == 8  # Surge: stable untouched
        now += timedelta(seconds=15)
    assert (25, 2) in seen and (50, 4) in seen and (100, 8) not in [(w, r) for w, r in seen if r < 8]
    assert all(r * 100 >= 8 * w for w, r in seen), "a canary took traffic before its replicas were planned"


def test_replace_fits_a_rollout_in_one_spare_node_and_keeps_the_floor() -> None:
    # Steps of one replica's share (25% of 4): each needs one more replica than the stable share keeps.
    steps = [{"setWeight": w} for w in (25, 50, 75, 100)]
    v1 = inf2_spec("v1", policy="Replace", steps=steps)
    v2 = inf2_spec("v2", policy="Replace", steps=steps)
    cluster = Cluster(limit=10, nodes=5, stable=4)  # room for one replica beyond the fleet; Surge would need 4
    status = deployed(v1)
    now = T0
    for _ in range(80):
        status = run(v2, status, cluster, now).status
        cluster.converge(status, v2)
        traffic_on_stable = 100 - status.canaryWeight if status.canaryModel else 100
        assert len(cluster.stable) * 100 >= 4 * traffic_on_stable or status.canaryModel is None
        now += timedelta(seconds=15)
        if status.phase == "Succeeded":
            break
    assert status.phase == "Succeeded", status.message
    assert len(cluster.nodes) == 5  # never a node beyond the limit (converge() checks each launch)


def test_replace_waits_when_a_step_outgrows_the_floor() -> None:
    # The traffic needs 3 replicas (capacityFloor), so 0 -> 50 fits: 2 canary + 3 stable on 5 slots. 50 -> 100
    # does not: the canary needs all 4 replicas while the 50% still on stable needs 2 stable ones.
    steps = [{"setWeight": 50}, {"setWeight": 100}]
    v1 = inf2_spec("v1", policy="Replace", steps=steps, capacityFloor=3)
    v2 = inf2_spec("v2", policy="Replace", steps=steps, capacityFloor=3)
    cluster = Cluster(limit=10, nodes=5, stable=4)
    status = deployed(v1)
    now = T0
    for _ in range(40):
        status = run(v2, status, cluster, now).status
        cluster.converge(status, v2)
        now += timedelta(seconds=15)
    assert status.canaryWeight == 50 and status.rollout.pausedReason == "CapacityPending"
    assert "keeps at least 2 stable replica(s)" in status.message and len(cluster.stable) == 3


def test_surge_on_the_same_cluster_waits() -> None:
    v1, v2 = inf2_spec("v1"), inf2_spec("v2")
    cluster = Cluster(limit=10, nodes=5, stable=4)
    status = deployed(v1)
    now = T0
    for _ in range(40):
        status = run(v2, status, cluster, now).status
        cluster.converge(status, v2)
        now += timedelta(seconds=15)
    # Weight 25 fits (one replica); weight 50 needs a second one and waits for it.
    assert status.canaryWeight == 25 and status.rollout.pausedReason == "CapacityPending"
    assert len(cluster.stable) == 4


def test_unknown_capacity_waits_rather_than_guessing() -> None:
    v1, v2 = inf2_spec("v1"), inf2_spec("v2")
    status = deployed(v1)
    obs = RolloutObservation(now=T0, desired=ref(v2), stable_ready=True, canary_ready=True,
                             capacity=CapacityView(room=None, error="nodepools.karpenter.sh is forbidden"))
    d = decide(v2, status, obs, 3)
    assert d.status.rollout.pausedReason == "CapacityPending" and "forbidden" in d.status.message
