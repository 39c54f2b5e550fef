"""What the cluster has free, in NeuronCores, for pods with a given node selector.

Read from the objects Karpenter and the kubelet keep (pure: the controller lists them, this decides):
- NodePool `spec.limits` on `aws.amazon.com/neuroncore` or `aws.amazon.com/neuron` (devices x 2 cores):
  the most the pool may ever provision; what it has provisioned is the largest of its `status.resources`,
  the sum of its NodeClaims' capacity and that of its registered Nodes (the status lags a launch by a few
  seconds; a claim may already be gone while its node drains).
- Nodes' allocatable minus the requests of the pods bound to them: room on nodes that already exist.
- NodeClaims still launching (no Node yet): their allocatable is room that is about to exist.
- Pods not yet bound that request NeuronCores: demand that will take room before ours does.

A replica needs all its cores on one node, so room is counted in replicas ("slots"), node by node, never
as a pooled sum of scattered free cores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from kanari.capacity.topology import CORES_PER_DEVICE, INSTANCES, NEURON_CORE, NEURON_DEVICE

INSTANCE_TYPE = "node.kubernetes.io/instance-type"
INSTANCE_FAMILY = "karpenter.k8s.aws/instance-family"
INSTANCE_SIZE = "karpenter.k8s.aws/instance-size"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
# Labels every node carries whatever the pool says; a pool that does not constrain them can satisfy any value.
WELL_KNOWN = {
    INSTANCE_TYPE, INSTANCE_FAMILY, INSTANCE_SIZE, "kubernetes.io/arch", "kubernetes.io/os",
    "topology.kubernetes.io/zone", "karpenter.sh/capacity-type",
}


def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value) if value is not None else None
    except (ValueError, TypeError):
        return None  # an unreadable quantity is treated as absent, never as zero room or infinite room


def neuron_cores(resources: Mapping[str, Any] | None) -> int | None:
    """NeuronCores in a resource list (requests, allocatable, limits): cores, or devices x 2, or None."""
    resources = resources or {}
    cores = _quantity(resources.get(NEURON_CORE))
    devices = _quantity(resources.get(NEURON_DEVICE))
    found = [int(c) for c in (cores, None if devices is None else devices * CORES_PER_DEVICE) if c is not None]
    return min(found) if found else None


def pod_cores(pod: Mapping[str, Any]) -> int:
    """NeuronCores a pod holds: its containers' requests (an init container's, if larger), as the scheduler counts."""
    spec = pod.get("spec") or {}

    def req(c: Mapping[str, Any]) -> int:
        res = c.get("resources") or {}
        return neuron_cores(res.get("requests") or res.get("limits")) or 0

    main = sum(req(c) for c in spec.get("containers") or [])
    init = max((req(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def allows(self, value: str) -> bool:
        if self.operator == "In":
            return value in self.values
        if self.operator == "NotIn":
            return value not in self.values
        if self.operator == "Exists":
            return True
        if self.operator == "DoesNotExist":
            return False
        if self.operator in ("Gt", "Lt"):
            try:
                bound, v = int(self.values[0]), int(value)
            except (ValueError, IndexError):
                return False
            return v > bound if self.operator == "Gt" else v < bound
        return False


@dataclass(frozen=True)
class NodeRoom:
    name: str
    labels: Mapping[str, str]
    allocatable: int
    used: int
    launching: bool = False  # a NodeClaim whose Node is not registered yet

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.used)


@dataclass(frozen=True)
class PoolRoom:
    name: str
    labels: Mapping[str, str]
    requirements: tuple[Requirement, ...]
    limit: int | None  # NeuronCores; None: the pool sets no Neuron limit
    provisioned: int

    @property
    def headroom(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.provisioned)

    def can_label(self, key: str, value: str) -> bool:
        """Could a node this pool launches carry key=value?"""
        if key in self.labels:
            return self.labels[key] == value
        reqs = [r for r in self.requirements if r.key == key]
        if key == INSTANCE_TYPE and not reqs:
            topo = INSTANCES.get(value)
            return topo is not None and self.allows_type(value)
        if reqs:
            return all(r.allows(value) for r in reqs)
        return key in WELL_KNOWN

    def allows_type(self, instance_type: str) -> bool:
        topo = INSTANCES.get(instance_type)
        if topo is None:
            return False
        size = instance_type.split(".", 1)[1]
        checks = {INSTANCE_TYPE: instance_type, INSTANCE_FAMILY: topo.family, INSTANCE_SIZE: size}
        return all(r.allows(checks[r.key]) for r in self.requirements if r.key in checks)

    def instance_types(self, selector: Mapping[str, str]) -> list[str]:
        """Neuron instance types this pool may launch for a pod with `selector`."""
        out = []
        for name, topo in INSTANCES.items():
            size = name.split(".", 1)[1]
            node_labels = {INSTANCE_TYPE: name, INSTANCE_FAMILY: topo.family, INSTANCE_SIZE: size}
            if self.allows_type(name) and all(
                node_labels[k] == v if k in node_labels else self.can_label(k, v) for k, v in selector.items()
            ):
                out.append(name)
        return out


@dataclass(frozen=True)
class ClusterRoom:
    nodes: tuple[NodeRoom, ...] = ()
    pools: tuple[PoolRoom, ...] = ()
    pending: tuple[tuple[Mapping[str, str], int], ...] = ()  # (node selector, cores) of unbound pods


@dataclass(frozen=True)
class Room:
    """Room for one kind of replica: how many more fit, and the figures a person needs to see why."""

    slots: int | None  # replicas that fit; None: no limit anywhere
    free_cores: int  # on existing and launching nodes, after pending pods
    headroom_cores: int | None  # what the matching NodePools may still provision; None: no limit
    limit_cores: int | None  # sum of the matching NodePools' limits; None: no limit
    pools: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        limit = "none" if self.limit_cores is None else str(self.limit_cores)
        head = "unlimited" if self.headroom_cores is None else str(self.headroom_cores)
        pools = f" (NodePools {', '.join(self.pools)})" if self.pools else ""
        return f"free {self.free_cores} on nodes, {head} more provisionable, limit {limit}{pools}"


def _requirements(raw: Iterable[Any]) -> tuple[Requirement, ...]:
    out = []
    for r in raw or []:
        if isinstance(r, Mapping) and r.get("key") and r.get("operator"):
            out.append(Requirement(str(r["key"]), str(r["operator"]), tuple(str(v) for v in r.get("values") or [])))
    return tuple(out)


def observe(
    nodepools: Iterable[Mapping[str, Any]],
    nodeclaims: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
) -> ClusterRoom:
    """The cluster's Neuron room from NodePools, NodeClaims, Nodes and Pods as the API returns them."""
    used: dict[str, int] = {}
    pending: list[tuple[Mapping[str, str], int]] = []
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        cores = pod_cores(pod)
        if not cores:
            continue
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            used[node] = used.get(node, 0) + cores
        else:
            pending.append(((pod.get("spec") or {}).get("nodeSelector") or {}, cores))

    rooms: list[NodeRoom] = []
    registered = set()
    pool_nodes: dict[str, int] = {}  # cores of registered nodes per NodePool, whatever their claims say
    for node in nodes:
        meta = node.get("metadata") or {}
        name = str(meta.get("name"))
        alloc = neuron_cores((node.get("status") or {}).get("allocatable"))
        registered.add(name)
        owner = (meta.get("labels") or {}).get(NODEPOOL_LABEL)
        if owner:
            node_cores = neuron_cores((node.get("status") or {}).get("capacity")) or alloc or 0
            pool_nodes[owner] = pool_nodes.get(owner, 0) + node_cores
        if not alloc or (node.get("spec") or {}).get("unschedulable"):
            continue  # no Neuron devices, or cordoned (draining): nothing new lands there
        rooms.append(NodeRoom(name, dict(meta.get("labels") or {}), alloc, used.get(name, 0)))

    claimed: dict[str, int] = {}
    for claim in nodeclaims:
        meta = claim.get("metadata") or {}
        status = claim.get("status") or {}
        pool = (meta.get("labels") or {}).get(NODEPOOL_LABEL)
        capacity = neuron_cores(status.get("capacity")) or neuron_cores(status.get("allocatable")) or 0
        if pool:
            claimed[pool] = claimed.get(pool, 0) + capacity
        if status.get("nodeName") in registered or meta.get("deletionTimestamp"):
            continue
        alloc = neuron_cores(status.get("allocatable"))
        if alloc:
            rooms.append(NodeRoom(str(meta.get("name")), _claim_labels(claim), alloc, 0, launching=True))

    pools: list[PoolRoom] = []
    for np_ in nodepools:
        meta = np_.get("metadata") or {}
        spec = np_.get("spec") or {}
        name = str(meta.get("name"))
        template = spec.get("template") or {}
        status_cores = neuron_cores((np_.get("status") or {}).get("resources")) or 0
        pools.append(
            PoolRoom(
                name=name,
                labels=dict((template.get("metadata") or {}).get("labels") or {}),
                requirements=_requirements((template.get("spec") or {}).get("requirements") or []),
                limit=neuron_cores(spec.get("limits")),
                provisioned=max(status_cores, claimed.get(name, 0), pool_nodes.get(name, 0)),
            )
        )
    return ClusterRoom(tuple(rooms), tuple(pools), tuple(pending))


def _claim_labels(claim: Mapping[str, Any]) -> dict[str, str]:
    """The labels the claim's Node will carry: single-valued requirements, the claim's labels, and what the
    instance type implies (Karpenter labels nodes with their family and size)."""
    labels: dict[str, str] = {}
    for r in _requirements((claim.get("spec") or {}).get("requirements") or []):
        if r.operator == "In" and len(r.values) == 1:
            labels[r.key] = r.values[0]
    labels.update((claim.get("metadata") or {}).get("labels") or {})
    topo = INSTANCES.get(labels.get(INSTANCE_TYPE, ""))
    if topo is not None:
        labels.setdefault(INSTANCE_FAMILY, topo.family)
        labels.setdefault(INSTANCE_SIZE, topo.instance_type.split(".", 1)[1])
    return labels


def _node_matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _compatible(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Could one node satisfy both selectors? (Pending pods that may compete with ours for room.)"""
    return all(b.get(k, v) == v for k, v in a.items())


def room_for(cluster: ClusterRoom, selector: Mapping[str, str], cores_per_replica: int) -> Room:
    """How many more replicas of `cores_per_replica` NeuronCores fit where `selector` lets them land."""
    r = max(1, cores_per_replica)
    nodes = [n for n in cluster.nodes if _node_matches(n.labels, selector)]
    pools = [p for p in cluster.pools if p.instance_types(selector)]
    slots_on_nodes = sum(n.free // r for n in nodes)
    free = sum(n.free for n in nodes)
    competing = sum(c for sel, c in cluster.pending if _compatible(sel, selector))

    headroom: int | None = 0
    limit: int | None = 0
    new_slots: int | None = 0
    for p in pools:
        best = 0
        if p.headroom is not None:
            for t in p.instance_types(selector):
                size = INSTANCES[t].cores
                if size >= r:
                    best = max(best, (p.headroom // size) * (size // r))
        fits_any = any(INSTANCES[t].cores >= r for t in p.instance_types(selector))
        if p.headroom is None and fits_any:
            headroom = limit = new_slots = None
        if headroom is not None and limit is not None and new_slots is not None:
            headroom += p.headroom or 0
            limit += p.limit or 0
            new_slots += best
    if not pools:
        # No NodePool can launch a node for these pods: only the nodes there are (no pool limit applies).
        headroom, limit, new_slots = 0, None, 0
    # Pending pods take room first: from existing nodes, then from what the pools may still launch.
    slots = None if new_slots is None else max(0, slots_on_nodes + new_slots - math.ceil(competing / r))
    return Room(
        slots=slots,
        free_cores=max(0, free - competing),
        headroom_cores=headroom,
        limit_cores=limit,
        pools=tuple(p.name for p in pools),
    )
