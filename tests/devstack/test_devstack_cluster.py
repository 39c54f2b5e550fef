"""The cluster stand-in's API: the API-server promises the operator relies on, through the official client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from devstack.cluster import RunningCluster, start_cluster
from devstack.kubeapi import KubeApi
from devstack.stack import free_port

MD = ("kanari.dev", "v1alpha1", "demo", "modeldeployments")


@pytest.fixture()
async def cluster(tmp_path: Path) -> AsyncIterator[RunningCluster]:
    running = await start_cluster(tmp_path / "kubeconfig", free_port(), "demo")
    yield running
    await running.stop()


def _api(cluster: RunningCluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))


def _md(name: str = "fraud", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "demo"}, "spec": {"model": {"version": "1"}}, **extra}


async def test_create_and_patch_keep_the_bookkeeping_a_controller_relies_on(cluster: RunningCluster) -> None:
    api = _api(cluster)

    def run() -> list[dict[str, Any]]:
        seen = [api.create_namespaced_custom_object(*MD, _md(status={"phase": "Succeeded"}))]
        seen.append(api.patch_namespaced_custom_object(*MD, "fraud", {"metadata": {"annotations": {"a": "b"}}}))
        seen.append(api.patch_namespaced_custom_object(*MD, "fraud", {"spec": {"model": {"version": "2"}},
                                                                      "status": {"phase": "Hacked"}}))
        seen.append(api.patch_namespaced_custom_object_status(*MD, "fraud", {"status": {"phase": "Progressing"},
                                                                             "spec": {"model": {"version": "3"}}}))
        return seen

    created, annotated, respecced, status = await asyncio.to_thread(run)
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert "status" not in created  # the status subresource: a create does not set status
    assert annotated["metadata"]["generation"] == 1  # metadata is not the spec
    assert respecced["metadata"]["generation"] == 2 and "status" not in respecced
    assert status["status"] == {"phase": "Progressing"} and status["spec"]["model"]["version"] == "2"
    assert status["metadata"]["generation"] == 2
    versions = [int(o["metadata"]["resourceVersion"]) for o in (created, annotated, respecced, status)]
    assert versions == sorted(set(versions))


async def test_a_stale_write_is_a_conflict_and_a_noop_changes_nothing(cluster: RunningCluster) -> None:
    api = _api(cluster)

    def run() -> tuple[int, dict[str, Any], dict[str, Any]]:
        first = api.create_namespaced_custom_object(*MD, _md())
        api.patch_namespaced_custom_object(*MD, "fraud", {"spec": {"model": {"version": "2"}}})
        stale = {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}, "spec": {"x": 1}}
        try:
            api.patch_namespaced_custom_object(*MD, "fraud", stale)
        except client.ApiException as exc:
            status = exc.status
        else:
            status = 200
        before = api.get_namespaced_custom_object(*MD, "fraud")
        after = api.patch_namespaced_custom_object(*MD, "fraud", {"spec": {"model": {"version": "2"}}})
        return status, before, after

    status, before, after = await asyncio.to_thread(run)
    assert status == 409
    assert "x" not in before["spec"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_replace_keeps_status_and_checks_the_resource_version(cluster: RunningCluster) -> None:
    """What `kanari pipeline run --apply` does to an existing ModelDeployment."""
    api = _api(cluster)

    def run() -> tuple[dict[str, Any], int]:
        api.create_namespaced_custom_object(*MD, _md())
        api.patch_namespaced_custom_object_status(*MD, "fraud", {"status": {"phase": "Succeeded"}})
        current = api.get_namespaced_custom_object(*MD, "fraud")
        body = {**current, "spec": {"model": {"version": "9"}}}
        replaced = api.replace_namespaced_custom_object(*MD, "fraud", body)
        try:
            api.replace_namespaced_custom_object(*MD, "fraud", body)  # the old resourceVersion again
        except client.ApiException as exc:
            return replaced, exc.status
        return replaced, 200

    replaced, second = await asyncio.to_thread(run)
    assert replaced["spec"] == {"model": {"version": "9"}}
    assert replaced["status"] == {"phase": "Succeeded"}
    assert replaced["metadata"]["generation"] == 2
    assert second == 409


async def test_events_with_generate_name_get_distinct_names(cluster: RunningCluster) -> None:
    core = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    event = {"metadata": {"generateName": "kopf-event-", "namespace": "demo"}, "reason": "Promoted",
             "involvedObject": {"name": "fraud"}, "message": "m", "type": "Normal"}

    def run() -> list[str]:
        for _ in range(3):
            core.api_client.call_api("/api/v1/namespaces/demo/events", "POST", body=event, response_type="object",
                                     header_params={"Content-Type": "application/json"})
        items = core.list_namespaced_event("demo").items
        return [e.metadata.name for e in items]

    names = await asyncio.to_thread(run)
    assert len(set(names)) == 3 and all(n.startswith("kopf-event-") for n in names)


async def test_watchers_see_changes(cluster: RunningCluster) -> None:
    api = KubeApi(cluster.url)
    seen: list[tuple[str, int]] = []

    async def watch() -> None:
        async for kind, obj in api.watch(KubeApi.path("kanari.dev", "v1alpha1", "modeldeployments", "demo")):
            seen.append((kind, obj["metadata"]["generation"]))
            if len(seen) == 2:
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await api.create(KubeApi.path("kanari.dev", "v1alpha1", "modeldeployments", "demo"), _md())
    await api.merge_patch(KubeApi.path(*MD[:2], "modeldeployments", "demo", "fraud"), {"spec": {"v": 2}})
    await asyncio.wait_for(task, 5)
    await api.close()
    assert seen == [("ADDED", 1), ("MODIFIED", 2)]


async def test_a_long_running_api_stays_fast(cluster: RunningCluster) -> None:
    """kmock scans its request log on every request; the stand-in keeps that log short."""
    api = KubeApi(cluster.url)
    path = KubeApi.path(*MD[:2], "modeldeployments", "demo")
    await api.create(path, _md())

    async def timed(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await api.get(path + "/fraud")
        return (time.perf_counter() - started) / n

    early = await timed(50)
    await timed(600)
    late = await timed(50)
    await api.close()
    assert late < early * 3 + 0.005


async def test_kubectl_lists_what_the_operator_sees(cluster: RunningCluster) -> None:
    kubectl = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "kubectl"
    await asyncio.to_thread(_api(cluster).create_namespaced_custom_object, *MD, _md())
    proc = await asyncio.create_subprocess_exec(
        str(kubectl), "--kubeconfig", str(cluster.kubeconfig), "get", "modeldeployments.kanari.dev", "-n", "demo",
        "-o", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    listed = json.loads(stdout)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == ["fraud"]
