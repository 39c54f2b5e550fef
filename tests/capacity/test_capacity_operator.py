"""The real operator against the API emulator: an Inferentia rollout on a full NodePool waits in
CapacityPending (no canary pod, no rollback past the progress deadline) and goes on by itself once the
NodePool's limit is raised and a node joins."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.capacity.capacity_fixtures import node, nodepool, pod
from tests.operator.harness import (
    CRD_FILES,
    UPSTREAM,
    Cluster,
    KServe,
    Kube,
    Operator,
    condition,
    operator_env,
)
from tests.support.schemas import validate_custom

NAMESPACE = "ml-neuron"
NODEPOOLS = ("karpenter.sh", "v1", "nodepools")
V1 = "s3://models/llm/v1"
V2 = "s3://models/llm/v2"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Kube, Operator]]:
    crds = (*CRD_FILES, UPSTREAM / "crds" / "karpenter.sh_nodepools.yaml", UPSTREAM / "crds" / "karpenter.sh_nodeclaims.yaml")
    with Cluster(tmp_path_factory.mktemp("apiserver"), crds) as cluster:
        log = tmp_path_factory.mktemp("operator") / "operator.log"
        op = Operator(operator_env(cluster, [NAMESPACE]), log)
        op.start()
        try:
            yield cluster, Kube(cluster, NAMESPACE), op
        finally:
            op.stop()


def _create(kube: Kube, obj: dict[str, Any]) -> None:
    if obj["kind"] == "NodePool":
        validate_custom(obj)
        kube.custom.create_cluster_custom_object(*NODEPOOLS, obj)
    elif obj["kind"] == "Node":
        kube.core.create_node(obj)
    else:
        kube.core.create_namespaced_pod(NAMESPACE, obj)


def _ready_pod(name: str, node_name: str, revision: str) -> dict[str, Any]:
    p = pod(name, 2, node_name)
    p["metadata"]["labels"] = {"kanari.dev/revision": revision}
    p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return p


@pytest.mark.timeout(90)
def test_rollout_waits_for_neuroncores_and_resumes_when_the_nodepool_limit_is_raised(stack: Any) -> None:
    cluster, kube, op = stack
    kserve = KServe(kube)
    name = "llm"
    _create(kube, nodepool("inf2", {"aws.amazon.com/neuroncore": "2"}, None, sizes=["xlarge"]))
    _create(kube, node("n0", "inf2.xlarge", "inf2"))
    spec = {"model": {"storageUri": V1, "format": "pytorch-neuronx"},
            "serving": {"neuronCores": 2, "minReplicas": 1, "maxReplicas": 1},
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}], "progressDeadline": "6s"}}
    uid = kube.create_md(name, spec)["metadata"]["uid"]
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: m.get("status", {}).get("phase") == "Succeeded", "V1 deployed")
    _create(kube, _ready_pod("llm-v1-0", "n0", md["status"]["stableModel"]["revision"]))  # the pool is now full

    kube.patch_md(name, {"spec": {"model": {"storageUri": V2}}})
    md = kube.wait_md(name, lambda m: (condition(m, "Paused") or {}).get("reason") == "CapacityPending",
                      "the rollout to wait for NeuronCores")
    time.sleep(7)  # past progressDeadline (6s): waiting for capacity is not a lack of progress
    md = kube.md(name)
    assert md is not None
    assert md["status"]["phase"] == "Paused", md["status"]["message"]
    cap = md["status"]["capacity"]
    assert cap["pending"] and cap["neededCores"] == 2 and cap["freeCores"] == 0 and cap["limitCores"] == 2
    assert "needs 2 more NeuronCores" in condition(md, "CapacityAvailable")["message"]
    isvc = kube.isvc(name)
    assert isvc is not None and isvc["spec"]["predictor"]["model"]["storageUri"] == V1  # no canary pod was made
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    reasons = kube.wait_reasons(uid, "CapacityPending")
    assert "RolledBack" not in reasons

    # An operator raises the limit: room for one more inf2.xlarge. The canary is created; Karpenter launches
    # the node for its pod, which becomes Ready there.
    kube.custom.patch_cluster_custom_object(*NODEPOOLS, "inf2", {"spec": {"limits": {"aws.amazon.com/neuroncore": "4"}}})
    kube.wait_isvc(name, lambda i: i["spec"]["predictor"]["model"]["storageUri"] == V2,
                   "the canary in the InferenceService", timeout=20)
    md = kube.md(name)
    assert md is not None
    _create(kube, node("n1", "inf2.xlarge", "inf2"))
    _create(kube, _ready_pod("llm-v2-0", "n1", md["status"]["canaryModel"]["revision"]))
    for _ in range(3):
        kserve.reconcile(name)
        time.sleep(1)
    kube.wait_isvc(name, lambda i: "canaryTrafficPercent" not in i["spec"]["predictor"], "the promotion", timeout=20)
    kserve.reconcile(name)
    md = kube.wait_md(name, lambda m: m["status"]["phase"] == "Succeeded", "V2 promoted")
    assert md["status"]["stableModel"]["storageUri"] == V2
    reasons = kube.wait_reasons(uid, "CapacityAvailable")
    assert "RolledBack" not in reasons
    metrics = op.env["KANARI_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
    assert f'kanari_capacity_pending{{name="{name}",namespace="{NAMESPACE}"}} 0.0' in text
    log = op.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
