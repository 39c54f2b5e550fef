"""Read the cluster's Neuron capacity for the capacity gate: NodePools, NodeClaims, Nodes and Pods.

One snapshot serves every ModelDeployment for a few seconds (100 rollouts must not mean 400 list calls a
pass). A cluster without Karpenter (its CRDs absent: 404) has nodes and pods only. Any other failure is
reported to the gate, which then waits: room that could not be read is never taken for room.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus
from kanari.capacity.cluster import ClusterRoom, observe, pod_cores, room_for, with_demand
from kanari.capacity.gate import RECHECK_SECONDS, CapacityView
from kanari.capacity.provenance import PREFIX as NEURON_PREFIX
from kanari.capacity.provenance import RUNTIME_SDK_ANNOTATION
from kanari.capacity.spec import node_selector, replica_cores

NODEPOOLS = ("karpenter.sh", "v1", "nodepools")
NODECLAIMS = ("karpenter.sh", "v1", "nodeclaims")
REVISION_LABEL = "kanari.dev/revision"
SNAPSHOT_TTL = 5.0
LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


def needs_runtime_sdk(spec: ModelDeploymentSpec, package_metadata: dict[str, str] | None) -> bool:
    """Only a Neuron model whose package records how it was built is checked against its runtime."""
    return replica_cores(spec.serving) > 0 and any(k.startswith(NEURON_PREFIX) for k in package_metadata or {})


def needs_capacity(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> bool:
    """Only a Neuron rollout (one in flight, or about to start) is gated."""
    if replica_cores(spec.serving) == 0 or status.stableModel is None:
        return False
    return status.canaryModel is not None or spec.rollout_revision() != status.stableModel.revision


@dataclass(frozen=True)
class Plan:
    """A rollout's admitted canary pods, remembered until its pods show up in a snapshot."""

    namespace: str
    revision: str
    selector: dict[str, str]
    cores: int
    replicas: int


def outstanding(plans: dict[tuple[str, str], Plan], pods: list[dict[str, Any]],
                but: tuple[str, str]) -> list[tuple[dict[str, str], int]]:
    """NeuronCores other rollouts were given that no pod holds yet: the room they will take.

    Without this, rollouts deciding on one snapshot before the first one's pods exist would all be
    given the same free NeuronCores."""
    seen: dict[tuple[str, str], int] = {}
    for p in pods:
        meta = p.get("metadata") or {}
        rev = (meta.get("labels") or {}).get(REVISION_LABEL)
        if rev:
            seen[(meta.get("namespace") or "", rev)] = seen.get((meta.get("namespace") or "", rev), 0) + 1
    out = []
    for key, plan in plans.items():
        missing = plan.replicas - seen.get((plan.namespace, plan.revision), 0)
        if key != but and missing > 0:
            out.append((plan.selector, missing * plan.cores))
    return out


@dataclass(frozen=True)
class Snapshot:
    room: ClusterRoom | None
    pods: list[dict[str, Any]]
    error: str | None
    at: float


SERVING_RUNTIMES = ("serving.kserve.io", "v1alpha1", "servingruntimes")
CLUSTER_SERVING_RUNTIMES = ("serving.kserve.io", "v1alpha1", "clusterservingruntimes")
RUNTIME_TTL = 30.0


class CapacityObserver:
    def __init__(self, api_client: client.ApiClient | None = None, recheck_seconds: float = RECHECK_SECONDS):
        self.recheck = recheck_seconds
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self._snapshot: Snapshot | None = None
        self._runtimes: dict[tuple[str, str], tuple[float, str | None]] = {}
        self.plans: dict[tuple[str, str], Plan] = {}
        self.selector_key = "karpenter.k8s.aws/instance-family"
        self._lock = asyncio.Lock()

    async def _list_custom(self, gvr: tuple[str, str, str]) -> list[dict[str, Any]]:
        group, version, plural = gvr
        try:
            out = await asyncio.to_thread(self.custom.list_cluster_custom_object, group, version, plural)
        except ApiException as exc:
            if exc.status == 404:
                return []  # Karpenter is not installed: no pools, no claims
            raise
        return list(out.get("items") or [])

    async def _snapshot_now(self) -> Snapshot:
        async with self._lock:
            if self._snapshot is not None and time.monotonic() - self._snapshot.at < min(SNAPSHOT_TTL, self.recheck):
                return self._snapshot
            try:
                pools, claims, nodes, pods = await asyncio.gather(
                    self._list_custom(NODEPOOLS),
                    self._list_custom(NODECLAIMS),
                    asyncio.to_thread(self.core.list_node),
                    asyncio.to_thread(self.core.list_pod_for_all_namespaces, field_selector=LIVE_PODS),
                )
                ser = self.core.api_client.sanitize_for_serialization
                node_dicts = [ser(n) for n in nodes.items]
                pod_dicts = [ser(p) for p in pods.items]
                snap = Snapshot(observe(pools, claims, node_dicts, pod_dicts), pod_dicts, None, time.monotonic())
            except ApiException as exc:
                # Only the status travels: an API error body can carry internal names.
                snap = Snapshot(None, [], f"reading cluster capacity failed: {exc.status} {exc.reason}", time.monotonic())
            except OSError as exc:
                snap = Snapshot(None, [], f"reading cluster capacity failed: {type(exc).__name__}", time.monotonic())
            self._snapshot = snap
            return snap

    def record(self, namespace: str, name: str, spec: ModelDeploymentSpec | None, status: ModelDeploymentStatus) -> None:
        """Remember the canary pods a reconcile just admitted (or forget them once the rollout is over)."""
        cap = status.capacity
        key = (namespace, name)
        if spec is None or cap is None or status.canaryModel is None or cap.revision != status.canaryModel.revision:
            self.plans.pop(key, None)
            return
        self.plans[key] = Plan(namespace, cap.revision, node_selector(spec.serving, self.selector_key),
                               cap.coresPerReplica, max(cap.canaryReplicas, cap.reservedReplicas))

    async def runtime_sdk(self, namespace: str, name: str) -> str | None:
        """The Neuron SDK a ServingRuntime (or, failing that, a ClusterServingRuntime) declares; None: none.

        API errors other than 404 propagate: the controller retries rather than calling the SDK unknown."""
        key = (namespace, name)
        cached = self._runtimes.get(key)
        if cached and time.monotonic() - cached[0] < RUNTIME_TTL:
            return cached[1]
        found: dict[str, Any] | None = None
        for gvr, ns in ((SERVING_RUNTIMES, namespace), (CLUSTER_SERVING_RUNTIMES, None)):
            group, version, plural = gvr
            try:
                if ns is None:
                    found = await asyncio.to_thread(self.custom.get_cluster_custom_object, group, version, plural, name)
                else:
                    found = await asyncio.to_thread(
                        self.custom.get_namespaced_custom_object, group, version, ns, plural, name
                    )
                break
            except ApiException as exc:
                if exc.status != 404:
                    raise
        sdk = ((found or {}).get("metadata") or {}).get("annotations", {}).get(RUNTIME_SDK_ANNOTATION)
        self._runtimes[key] = (time.monotonic(), sdk)
        return sdk

    async def view(
        self, spec: ModelDeploymentSpec, status: ModelDeploymentStatus, namespace: str, name: str, selector_key: str
    ) -> CapacityView:
        snap = await self._snapshot_now()
        if snap.room is None:
            return CapacityView(room=None, error=snap.error, recheck_seconds=self.recheck)
        self.selector_key = selector_key
        cluster = with_demand(snap.room, outstanding(self.plans, snap.pods, (namespace, name)))
        room = room_for(cluster, node_selector(spec.serving, selector_key), replica_cores(spec.serving))
        return replace(_with_pods(room, snap.pods, status, namespace), recheck_seconds=self.recheck)


def _with_pods(room: Any, pods: list[dict[str, Any]], status: ModelDeploymentStatus, namespace: str) -> CapacityView:
    def of(revision: str | None) -> list[dict[str, Any]]:
        return [
            p for p in pods
            if revision and (p.get("metadata") or {}).get("namespace") == namespace
            and ((p.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL) == revision
        ]

    stable = [p for p in of(status.stableModel.revision if status.stableModel else None)
              if (p.get("spec") or {}).get("nodeName")]
    canary = of(status.canaryModel.revision if status.canaryModel else None)
    ready = sum(
        1 for p in canary
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in (p.get("status") or {}).get("conditions") or [])
    )
    return CapacityView(
        room=room,
        stable_replicas=len(stable) or None,
        stable_cores=pod_cores(stable[0]) if stable else None,
        canary_ready_replicas=ready,
    )
