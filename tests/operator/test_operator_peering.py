"""Two replicas as the chart runs them (replicas: 2, one kopf peering object per watched namespace): one
serves, the other stands by. kopf freezes every operator of equal priority, so equal ones would serve none."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.harness import ISVC, Cluster, KServe


@pytest.mark.timeout(60)
def test_one_of_two_replicas_serves(cluster: Cluster, replicas: Any) -> None:
    kube = replicas.kube
    peering = kube.wait(
        ("kopf.dev", "v1", "kopfpeerings"), replicas.peering, lambda p: len(p.get("status") or {}) == 2,
        "both replicas in the peering object",
    )
    priorities = [peer["priority"] for peer in peering["status"].values()]
    assert len(set(priorities)) == 2, f"equal priorities freeze both replicas: {priorities}"

    name = "served-by-one-replica"
    kube.create_md(name, {"model": {"storageUri": "s3://models/fraud/v1/model.tar.gz", "format": "sklearn"},
                          "serving": {"accelerator": "cpu"}})
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    KServe(kube).reconcile(name)
    kube.wait_md(name, lambda m: m.get("status", {}).get("phase") == "Succeeded", "Succeeded")
    creates = [c for c in cluster.calls() if c.by_operator and c.on(ISVC, name) and c.verb == "create"]
    assert len(creates) == 1
    serving = [op for op in replicas.operators if f"InferenceService {name} created" in op.log.read_text()]
    assert len(serving) == 1, [op.tail(3000) for op in replicas.operators]
    assert all(op.alive and op.healthy() for op in replicas.operators)
