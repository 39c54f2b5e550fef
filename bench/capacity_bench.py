"""Capacity benchmark: N ModelDeployments start rolling out at once on a cluster with room for only a few
percent more NeuronCores. How many proceed, how many wait, how long until all are promoted, and whether
any plan ever needed a node beyond the NodePool limit.

Simulated (no API server, no Karpenter): the real rollout engine and capacity gate decide; a small model of
the cluster acts on the sized InferenceServices: the scheduler binds canary pods to free NeuronCores, and
Karpenter launches an inf2.xlarge (2 NeuronCores) for a pod with no room, refusing past the NodePool limit
(a refusal is counted as a plan that exceeded the limit). Canary pods are Ready `--cold-start` seconds
after they are bound. A promoted canary replaces the stable pods. Every ModelDeployment is reconciled each
`--tick` simulated seconds, one after another, each on the cluster as the previous one left it.

    python bench/capacity_bench.py                       # 100 rollouts, 20% headroom, Surge and Replace
    python bench/capacity_bench.py --deployments 10      # the short version the tests run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operators"), str(ROOT)]

from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, ModelRef, parse_spec  # noqa: E402
from kanari.capacity.cluster import ClusterRoom, NodeRoom, PoolRoom, Requirement, room_for  # noqa: E402
from kanari.capacity.gate import CapacityView  # noqa: E402
from kanari.rollout.engine import RolloutObservation, decide  # noqa: E402

SELECTOR = {"karpenter.k8s.aws/instance-family": "inf2"}
NODE_CORES = 2  # inf2.xlarge
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STEPS = {
    "Surge": [{"setWeight": 25}, {"pause": {"duration": "1m"}}, {"setWeight": 50}, {"pause": {"duration": "1m"}},
              {"setWeight": 100}],
    "Replace": [{"setWeight": 25}, {"pause": {"duration": "1m"}}, {"setWeight": 50}, {"pause": {"duration": "1m"}},
                {"setWeight": 75}, {"pause": {"duration": "1m"}}, {"setWeight": 100}],
}


@dataclass
class Pod:
    md: int
    revision: str
    node: int
    ready_at: float


@dataclass
class Sim:
    limit_cores: int
    cold_start: float
    nodes: list[int] = field(default_factory=list)  # free cores per node
    pods: list[Pod] = field(default_factory=list)
    refused: int = 0
    peak_cores: int = 0

    def provisioned(self) -> int:
        return len(self.nodes) * NODE_CORES

    def bind(self, md: int, revision: str, now: float, ready: bool = False) -> bool:
        node = next((i for i, free in enumerate(self.nodes) if free >= NODE_CORES), None)
        if node is None:
            if self.provisioned() + NODE_CORES > self.limit_cores:
                self.refused += 1  # Karpenter refuses: a plan asked for more than the limit allows
                return False
            self.nodes.append(NODE_CORES)
            node = len(self.nodes) - 1
        self.nodes[node] -= NODE_CORES
        self.pods.append(Pod(md, revision, node, now if ready else now + self.cold_start))
        self.peak_cores = max(self.peak_cores, self.provisioned() - sum(self.nodes))
        return True

    def remove(self, md: int, revision: str, keep: int = 0) -> None:
        mine = [p for p in self.pods if p.md == md and p.revision == revision]
        for p in mine[keep:]:
            self.pods.remove(p)
            self.nodes[p.node] += NODE_CORES

    def count(self, md: int, revision: str, now: float | None = None) -> int:
        return sum(1 for p in self.pods if p.md == md and p.revision == revision
                   and (now is None or p.ready_at <= now))

    def room(self, demand: list[tuple[dict[str, str], int]]) -> ClusterRoom:
        """`demand`: NeuronCores other rollouts were admitted for that no pod holds yet (as the operator
        counts them, kanari.capacity.observer.outstanding)."""
        nodes = tuple(NodeRoom(f"n{i}", {**SELECTOR}, NODE_CORES, NODE_CORES - free) for i, free in enumerate(self.nodes))
        pool = PoolRoom("inf2", {}, (Requirement("karpenter.k8s.aws/instance-family", "In", ("inf2",)),
                                     Requirement("karpenter.k8s.aws/instance-size", "In", ("xlarge",))),
                        self.limit_cores, self.provisioned())
        return ClusterRoom(nodes, (pool,), tuple(demand))


def spec_for(version: str, policy: str, fleet: int) -> ModelDeploymentSpec:
    return parse_spec({
        "model": {"storageUri": f"s3://models/m/{version}"},
        "serving": {"neuronCores": NODE_CORES, "minReplicas": fleet, "maxReplicas": fleet,
                    "deploymentMode": "RawDeployment", "capacityPolicy": policy},
        "rollout": {"steps": STEPS[policy], "progressDeadline": "10m"},
    })


def ref(spec: ModelDeploymentSpec) -> ModelRef:
    return ModelRef(revision=spec.rollout_revision(), version=spec.model.display_version())


def run(deployments: int, fleet: int, headroom: float, policy: str, tick: float, cold_start: float,
        horizon: float) -> dict[str, Any]:
    stable_cores = deployments * fleet * NODE_CORES
    sim = Sim(limit_cores=int(stable_cores * (1 + headroom)), cold_start=cold_start)
    v1, v2 = spec_for("v1", policy, fleet), spec_for("v2", policy, fleet)
    statuses = []
    for md in range(deployments):
        for _ in range(fleet):
            sim.bind(md, v1.rollout_revision(), 0.0, ready=True)
        statuses.append(ModelDeploymentStatus(phase="Succeeded", stableModel=ref(v1)))
    stable_rev, canary_rev = v1.rollout_revision(), v2.rollout_revision()
    promoted_at: dict[int, float] = {}
    started_at: dict[int, float] = {}
    first_pass_admitted = 0
    rollbacks = 0
    decide_seconds = 0.0
    now = 0.0
    passes = 0
    while len(promoted_at) < deployments and now <= horizon:
        for md in range(deployments):
            if md in promoted_at:
                continue
            st = statuses[md]
            demand = []
            for other, ost in enumerate(statuses):
                oc = ost.capacity
                if other != md and oc is not None and ost.canaryModel is not None and oc.revision == canary_rev:
                    missing = max(oc.canaryReplicas, oc.reservedReplicas) - sim.count(other, canary_rev)
                    if missing > 0:
                        demand.append((SELECTOR, missing * NODE_CORES))
            room = room_for(sim.room(demand), SELECTOR, NODE_CORES)
            view = CapacityView(room=room, stable_replicas=sim.count(md, stable_rev) or None, stable_cores=NODE_CORES,
                                canary_ready_replicas=sim.count(md, canary_rev, now))
            t = time.perf_counter()
            d = decide(v2, st, RolloutObservation(now=T0 + timedelta(seconds=now), desired=ref(v2), stable_ready=True,
                                                  canary_ready=sim.count(md, canary_rev, now) > 0, capacity=view), 1)
            decide_seconds += time.perf_counter() - t
            statuses[md] = st = d.status
            rollbacks += any(e.reason == "RolledBack" for e in d.events)
            cap = st.capacity
            if cap is not None and st.canaryModel is not None and cap.revision == canary_rev:
                if cap.stableReplicas is not None:
                    sim.remove(md, stable_rev, keep=cap.stableReplicas)
                while sim.count(md, canary_rev) < cap.canaryReplicas:
                    if not sim.bind(md, canary_rev, now):
                        break
                if cap.canaryReplicas and md not in started_at:
                    started_at[md] = now
            if st.phase == "Succeeded" and st.stableModel and st.stableModel.revision == canary_rev:
                sim.remove(md, stable_rev)
                promoted_at[md] = now
        if passes == 0:
            first_pass_admitted = len(started_at)
        passes += 1
        now += tick
    waits = [started_at[m] for m in started_at]
    return {
        "policy": policy,
        "deployments": deployments,
        "fleet_replicas": fleet,
        "neuroncores_per_replica": NODE_CORES,
        "stable_neuroncores": stable_cores,
        "nodepool_limit_neuroncores": sim.limit_cores,
        "headroom_percent": round(headroom * 100, 1),
        "proceeded_at_once": first_pass_admitted,
        "waited_at_first": deployments - first_pass_admitted,
        "promoted": len(promoted_at),
        "rolled_back": rollbacks,
        "seconds_to_all_promoted": max(promoted_at.values()) if len(promoted_at) == deployments else None,
        "median_wait_before_start_s": sorted(waits)[len(waits) // 2] if waits else None,
        "max_wait_before_start_s": max(waits) if waits else None,
        "peak_neuroncores_in_use": sim.peak_cores,
        "plans_beyond_limit": sim.refused,
        "never_exceeded_limit": sim.refused == 0 and sim.peak_cores <= sim.limit_cores,
        "decide_calls": passes * deployments,
        "decide_ms_mean": round(1000 * decide_seconds / max(1, passes * deployments), 3),
        "simulated_tick_s": tick,
        "cold_start_s": cold_start,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deployments", type=int, default=100)
    p.add_argument("--fleet", type=int, default=4, help="stable replicas per ModelDeployment")
    p.add_argument("--headroom", type=float, default=0.2, help="NodePool limit above the stable fleets (0.2 = 20%%)")
    p.add_argument("--tick", type=float, default=15.0)
    p.add_argument("--cold-start", type=float, default=60.0)
    p.add_argument("--horizon", type=float, default=6 * 3600.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "capacity.json"))
    args = p.parse_args(argv)
    started = time.monotonic()
    results = [run(args.deployments, args.fleet, args.headroom, policy, args.tick, args.cold_start, args.horizon)
               for policy in ("Surge", "Replace")]
    out = {"benchmark": "capacity", "wall_seconds": round(time.monotonic() - started, 1), "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for r in results:
        total = r["seconds_to_all_promoted"]
        print(f"{r['policy']:8} {r['proceeded_at_once']:3} proceeded, {r['waited_at_first']:3} waited; all "
              f"{r['promoted']} promoted after {'never' if total is None else f'{total / 60:.1f} min'}; "
              f"peak {r['peak_neuroncores_in_use']}/{r['nodepool_limit_neuroncores']} NeuronCores; "
              f"plans beyond limit: {r['plans_beyond_limit']}")
    return 0 if all(r["never_exceeded_limit"] and r["promoted"] == r["deployments"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
