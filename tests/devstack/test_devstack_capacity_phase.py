"""The demo's CapacityPending phase against the real operator process, the cluster stand-in (with the demo's
declared kinds) and the KServe stand-in serving real model-server revisions: the Inferentia rollout waits on the
full NodePool stating needed/free/limit, creates no canary, and completes by itself once the limit is raised."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from devstack import capacity_phase
from devstack.cluster import RunningCluster, start_cluster
from devstack.kserve_standin import KServeStandIn
from devstack.kubeapi import KubeApi
from devstack.operator_harness import Operator, operator_env
from devstack.router import Router
from devstack.stack import free_port
from tests.devstack.devstack_testlib import model_tar_gz
from tests.support.schemas import validate_custom

NAMESPACE = "demo"


def test_the_simulated_objects_are_valid_karpenter_and_kanari_objects() -> None:
    validate_custom(capacity_phase.nodepool(2))
    limits = capacity_phase.nodepool(4)["spec"]["limits"]
    assert limits == {"aws.amazon.com/neuroncore": "4"}  # the only limit: cores are what the phase is about
    from kanari.api import v1alpha1

    md = v1alpha1.parse_model_deployment(capacity_phase.model_deployment("m", NAMESPACE, "s3://b/m.tar.gz"))
    assert md.spec.serving.accelerator == "inferentia2" and md.spec.serving.neuronCores == 2


@pytest.fixture()
async def stack(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    cluster: RunningCluster = await start_cluster(tmp_path / "kubeconfig", free_port(), NAMESPACE)
    router = Router(seed=1)
    runner = web.AppRunner(router.app(), shutdown_timeout=0.5)
    await runner.setup()
    router_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", router_port).start()
    api = KubeApi(cluster.url)
    standin = KServeStandIn(api, router, tmp_path / "kserve", f"http://127.0.0.1:{router_port}", NAMESPACE,
                            idle_grace=30.0)
    task = asyncio.create_task(standin.run())
    op = Operator(operator_env(cluster, [NAMESPACE]), tmp_path / "operator.log")  # type: ignore[arg-type]
    try:
        await asyncio.to_thread(op.start)
        yield {"api": api, "tmp": tmp_path, "operator": op}
    finally:
        op.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()
        await runner.cleanup()
        await cluster.stop()


@pytest.mark.timeout(150)
async def test_the_rollout_waits_in_capacity_pending_then_resumes_when_the_limit_is_raised(stack: dict[str, Any]) -> None:
    api, tmp = stack["api"], stack["tmp"]
    v1 = model_tar_gz(tmp / "v1.tar.gz")
    v2 = model_tar_gz(tmp / "v2.tar.gz", threshold=0.4)
    said: list[tuple[str, str]] = []
    outcome = await capacity_phase.run(api, NAMESPACE, "scorer-inf2", f"file://{v1}", f"file://{v2}",
                                       lambda kind, text: said.append((kind, text)), timeout=60)

    # The pause as the operator stated it: the canary's 2 NeuronCores, none free, the pool's limit of 2.
    assert (outcome.needed, outcome.free, outcome.limit) == (2, 0, 2)
    assert "needs 2 more NeuronCores" in outcome.message and outcome.event  # the condition and the Event
    assert outcome.promoted
    capacity = [text for kind, text in said if kind == "capacity"]
    assert len(capacity) == 2, said
    assert "paused: CapacityPending, needed 2 NeuronCores, free 0, limit 2" in capacity[0]
    assert "resumed by itself" in capacity[1] and "promoted v2" in capacity[1]
    assert any("still waiting" in text for _, text in said)  # it held: no canary while the pool was full

    md = await api.get(KubeApi.path("kanari.dev", "v1alpha1", "modeldeployments", NAMESPACE, "scorer-inf2"))
    assert md is not None and md["status"]["phase"] == "Succeeded"
    assert md["status"]["stableModel"]["storageUri"] == f"file://{v2}"
    events = (await api.get(KubeApi.path("", "v1", "events", NAMESPACE)) or {}).get("items") or []
    reasons = [e.get("reason") for e in events if (e.get("involvedObject") or {}).get("name") == "scorer-inf2"]
    assert "CapacityPending" in reasons and "CapacityAvailable" in reasons and "RolledBack" not in reasons
    log = stack["operator"].log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
