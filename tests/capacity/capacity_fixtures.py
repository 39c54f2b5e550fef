"""Karpenter NodePools and NodeClaims, Nodes and Pods shaped as the API server returns them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kanari.capacity.topology import INSTANCES

ROOT = Path(__file__).resolve().parents[2]


def shipped_nodepool(name: str = "inf2") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "karpenter" / f"nodepool-{name}.yaml").read_text())
    return doc


def nodepool(name: str, limit: dict[str, Any] | None, provisioned: dict[str, Any] | None = None,
             family: str = "inf2", sizes: list[str] | None = None) -> dict[str, Any]:
    obj = shipped_nodepool()
    obj["metadata"] = {"name": name}
    reqs = obj["spec"]["template"]["spec"]["requirements"]
    reqs[0]["values"] = [family]
    reqs[1]["values"] = sizes or ["xlarge", "8xlarge", "24xlarge", "48xlarge"]
    if limit is None:
        obj["spec"].pop("limits", None)
    else:
        obj["spec"]["limits"] = limit
    if provisioned is not None:
        obj["status"] = {"resources": provisioned, "nodes": 0}
    return obj


def nodeclaim(name: str, pool: str, instance_type: str, node_name: str | None = None) -> dict[str, Any]:
    topo = INSTANCES[instance_type]
    res = {"aws.amazon.com/neuron": str(topo.devices), "aws.amazon.com/neuroncore": str(topo.cores),
           "cpu": str(topo.vcpu), "memory": f"{topo.memory_gib}Gi"}
    status: dict[str, Any] = {"capacity": dict(res), "allocatable": dict(res)}
    if node_name:
        status["nodeName"] = node_name
        status["providerID"] = f"aws:///us-east-1a/i-{abs(hash(name)) % 10**12:012d}"
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": pool,
                                                "node.kubernetes.io/instance-type": instance_type}},
        "spec": {
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "neuron"},
            "requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [instance_type]}],
        },
        "status": status,
    }


def node(name: str, instance_type: str, pool: str | None = "inf2", **labels: str) -> dict[str, Any]:
    topo = INSTANCES[instance_type]
    all_labels = {"node.kubernetes.io/instance-type": instance_type, "karpenter.k8s.aws/instance-family": topo.family,
                  "karpenter.k8s.aws/instance-size": instance_type.split(".")[1], **labels}
    if pool:
        all_labels["karpenter.sh/nodepool"] = pool
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": all_labels},
        "status": {"allocatable": {"aws.amazon.com/neuron": str(topo.devices),
                                   "aws.amazon.com/neuroncore": str(topo.cores), "cpu": str(topo.vcpu)}},
    }


def pod(name: str, cores: int, node_name: str | None = None, devices: bool = False,
        selector: dict[str, str] | None = None, phase: str = "Running") -> dict[str, Any]:
    res = {"aws.amazon.com/neuron": str(cores // 2)} if devices else {"aws.amazon.com/neuroncore": str(cores)}
    spec: dict[str, Any] = {"containers": [{"name": "kserve-container", "resources": {"requests": res, "limits": res}}]}
    if node_name:
        spec["nodeName"] = node_name
    if selector:
        spec["nodeSelector"] = selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ml"}, "spec": spec,
            "status": {"phase": phase if node_name else "Pending"}}
