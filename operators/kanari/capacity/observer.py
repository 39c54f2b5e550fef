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
from kanari.capacity.cluster import ClusterRoom, observe, pod_cores, room_for
from kanari.capacity.gate import RECHECK_SECONDS, CapacityView
from kanari.capacity.spec import node_selector, replica_cores

NODEPOOLS = ("karpenter.sh", "v1", "nodepools")
NODECLAIMS = ("karpenter.sh", "v1", "nodeclaims")
REVISION_LABEL = "kanari.dev/revision"
SNAPSHOT_TTL = 5.0
LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


def needs_capacity(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> bool:
    """Only a Neuron rollout (one in flight, or about to start) is gated."""
    if replica_cores(spec.serving) == 0 or status.stableModel is None:
        return False
    return status.canaryModel is not None or spec.rollout_revision() != status.stableModel.revision


@dataclass(frozen=True)
class Snapshot:
    room: ClusterRoom | None
    pods: list[dict[str, Any]]
    error: str | None
    at: float


class CapacityObserver:
    def __init__(self, api_client: client.ApiClient | None = None, recheck_seconds: float = RECHECK_SECONDS):
        self.recheck = recheck_seconds
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self._snapshot: Snapshot | None = None
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

    async def view(
        self, spec: ModelDeploymentSpec, status: ModelDeploymentStatus, namespace: str, selector_key: str
    ) -> CapacityView:
        snap = await self._snapshot_now()
        if snap.room is None:
            return CapacityView(room=None, error=snap.error, recheck_seconds=self.recheck)
        room = room_for(snap.room, node_selector(spec.serving, selector_key), replica_cores(spec.serving))
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
