"""The demo's CapacityPending phase: an Inferentia rollout waits for NeuronCores, then goes on by itself.

A second ModelDeployment (`<name>-inf2`: accelerator inferentia2, 2 NeuronCores per replica) runs v1 on a
simulated Karpenter NodePool whose `spec.limits` (2 NeuronCores) its one inf2.xlarge node already fills. Rolling
it out to v2 needs 2 more NeuronCores: the operator pauses it with the reason CapacityPending (needed, free and
limit in status.capacity, the CapacityAvailable condition and an Event) and creates no canary pod. The demo then
raises the NodePool's limit, as a platform engineer would; the operator notices on its next look, creates the
canary, and the rollout completes without anyone resuming it.

No Karpenter, Neuron device plugin or scheduler runs here: the NodePool, its Nodes and the predictor Pods are
objects the demo writes into the cluster stand-in (what Karpenter and the scheduler would have created), so the
operator reads the same kinds, fields and labels it reads on EKS. The KServe stand-in serves the revisions on CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kanari.api import v1alpha1 as api

from devstack.kubeapi import KubeApi

ROOT = Path(__file__).resolve().parents[1]
NODEPOOLS = ("karpenter.sh", "v1", "nodepools")
ISVCS = ("serving.kserve.io", "v1beta1", "inferenceservices")
POOL = "inf2-demo"
INSTANCE_TYPE = "inf2.xlarge"
CORES_PER_NODE = 2  # inf2.xlarge: one Inferentia2 device, two NeuronCores
CORES_PER_REPLICA = 2
NEURONCORE = "aws.amazon.com/neuroncore"
REVISION_LABEL = "kanari.dev/revision"


@dataclass(frozen=True)
class CapacityOutcome:
    """What the phase saw: the pause as the operator stated it, and how long the rollout waited."""

    needed: int
    free: int
    limit: int
    message: str
    event: str
    waited_seconds: float
    promoted: bool


class CapacityPhaseFailed(RuntimeError):
    pass


def nodepool(limit_cores: int) -> dict[str, Any]:
    """The shipped inf2 NodePool (manifests/karpenter/nodepool-inf2.yaml), limited to `limit_cores` NeuronCores."""
    obj: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "karpenter" / "nodepool-inf2.yaml").read_text())
    obj["metadata"] = {"name": POOL}
    obj["spec"]["template"]["spec"]["requirements"][1]["values"] = ["xlarge"]
    obj["spec"]["limits"] = {NEURONCORE: str(limit_cores)}
    return obj


def node(name: str) -> dict[str, Any]:
    """An inf2.xlarge node of the pool, as Karpenter registers it (labels) and the device plugin reports it."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "node.kubernetes.io/instance-type": INSTANCE_TYPE, "karpenter.k8s.aws/instance-family": "inf2",
            "karpenter.k8s.aws/instance-size": "xlarge", "karpenter.sh/nodepool": POOL}},
        "status": {"allocatable": {"aws.amazon.com/neuron": "1", NEURONCORE: str(CORES_PER_NODE), "cpu": "4"}},
    }


def predictor_pod(name: str, namespace: str, node_name: str, revision: str) -> dict[str, Any]:
    """A Ready predictor pod of `revision` bound to `node_name`, holding its NeuronCores."""
    res = {NEURONCORE: str(CORES_PER_REPLICA)}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {REVISION_LABEL: revision}},
        "spec": {"nodeName": node_name,
                 "containers": [{"name": "kserve-container", "resources": {"requests": res, "limits": res}}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def model_deployment(name: str, namespace: str, storage_uri: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION, "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"storageUri": storage_uri, "format": "pytorch-neuronx"},
            "serving": {"accelerator": "inferentia2", "neuronCores": CORES_PER_REPLICA, "instanceType": INSTANCE_TYPE,
                        "minReplicas": 1, "maxReplicas": 1},
            "rollout": {"strategy": "Canary", "steps": [{"setWeight": 50}], "progressDeadline": "5m"},
        },
    }


def _paused_for_capacity(md: dict[str, Any] | None) -> bool:
    status = (md or {}).get("status") or {}
    return any(p.get("reason") == "CapacityPending" for p in status.get("pauseConditions") or [])


async def _until(read: Callable[[], Any], check: Callable[[Any], bool], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise CapacityPhaseFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.3)


async def run(kube: KubeApi, namespace: str, name: str, v1_uri: str, v2_uri: str, say: Callable[[str, str], Any],
              timeout: float, hold_seconds: float = 1.0) -> CapacityOutcome:
    """Roll `name` from v1 to v2 on a full NodePool, raise the limit, and see it complete.

    `say(kind, text)` reports each fact; kind "capacity" for the pause and the resume."""
    md_path = KubeApi.path(api.GROUP, api.VERSION, api.PLURAL, namespace, name)
    isvc_path = KubeApi.path(*ISVCS, namespace, name)
    pool_path = KubeApi.path(*NODEPOOLS, None, POOL)

    async def md() -> dict[str, Any] | None:
        return await kube.get(md_path)

    async def isvc_uri() -> str:
        isvc = await kube.get(isvc_path) or {}
        return str((((isvc.get("spec") or {}).get("predictor") or {}).get("model") or {}).get("storageUri") or "")

    await kube.create(KubeApi.path(*NODEPOOLS), nodepool(CORES_PER_NODE))
    await kube.create(KubeApi.path("", "v1", "nodes"), node(f"{POOL}-node-0"))
    say("info", f"Karpenter NodePool {POOL} (simulated): spec.limits {NEURONCORE}={CORES_PER_NODE}, one "
                f"{INSTANCE_TYPE} node ({CORES_PER_NODE} NeuronCores)")
    await kube.create(KubeApi.path(api.GROUP, api.VERSION, api.PLURAL, namespace), model_deployment(name, namespace, v1_uri))
    deployed = await _until(md, lambda m: ((m or {}).get("status") or {}).get("phase") == "Succeeded", timeout,
                            f"{name} v1 to serve")
    stable = deployed["status"]["stableModel"]["revision"]
    # The scheduler bound v1's predictor to the node: the pool is now at its limit.
    await kube.create(KubeApi.path("", "v1", "pods", namespace),
                      predictor_pod(f"{name}-{stable}-0", namespace, f"{POOL}-node-0", stable))
    say("info", f"{name} (inferentia2, {CORES_PER_REPLICA} NeuronCores a replica) serves v1 on {POOL}; the pool is full")

    await kube.merge_patch(md_path, {"spec": {"model": {"storageUri": v2_uri}}})
    started = time.monotonic()
    paused = await _until(md, _paused_for_capacity, timeout, f"{name}'s rollout to wait for NeuronCores")
    cap = paused["status"].get("capacity") or {}
    needed, free, limit = int(cap.get("neededCores") or 0), int(cap.get("freeCores") or 0), int(cap.get("limitCores") or 0)
    message = next((c.get("message", "") for c in paused["status"].get("conditions") or []
                    if c.get("type") == "CapacityAvailable"), "")
    event = await _event_message(kube, namespace, name, "CapacityPending")
    say("capacity", f"{name} rollout to v2 paused: CapacityPending, needed {needed} NeuronCores, free {free}, "
                    f"limit {limit} (phase {paused['status'].get('phase')}); {message}")
    await asyncio.sleep(hold_seconds)
    held = await md()
    if not _paused_for_capacity(held) or await isvc_uri() != v1_uri:
        raise CapacityPhaseFailed(f"{name} did not keep waiting for capacity: {(held or {}).get('status')}")
    say("info", f"still waiting after {hold_seconds:g}s: no canary pod created, v1 keeps serving, nothing failed")

    raised = CORES_PER_NODE + CORES_PER_REPLICA
    await kube.merge_patch(pool_path, {"spec": {"limits": {NEURONCORE: str(raised)}}})
    say("info", f"raised NodePool {POOL} spec.limits {NEURONCORE} {limit} -> {raised}")
    await _until(isvc_uri, lambda uri: uri == v2_uri, timeout, f"{name}'s canary to be created")
    canary = await _until(md, lambda m: bool(((m or {}).get("status") or {}).get("canaryModel")), timeout,
                          f"{name}'s canary revision")
    revision = canary["status"]["canaryModel"]["revision"]
    # Karpenter launches a node for the canary's pod; the scheduler binds it there.
    await kube.create(KubeApi.path("", "v1", "nodes"), node(f"{POOL}-node-1"))
    await kube.create(KubeApi.path("", "v1", "pods", namespace),
                      predictor_pod(f"{name}-{revision}-0", namespace, f"{POOL}-node-1", revision))
    await _until(md, lambda m: ((m or {}).get("status") or {}).get("phase") == "Succeeded"
                 and (m["status"].get("stableModel") or {}).get("storageUri") == v2_uri, timeout, f"{name} v2 promoted")
    waited = time.monotonic() - started
    resumed = await _event_message(kube, namespace, name, "CapacityAvailable")
    say("capacity", f"{name} resumed by itself once the limit was raised ({resumed or 'CapacityAvailable'}) and "
                    f"promoted v2, {waited:.0f}s after the rollout started")
    return CapacityOutcome(needed, free, limit, message, event, waited, True)


async def _event_message(kube: KubeApi, namespace: str, name: str, reason: str) -> str:
    doc = await kube.get(KubeApi.path("", "v1", "events", namespace)) or {}
    for e in doc.get("items") or []:
        if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == reason:
            return str(e.get("message") or "")
    return ""
