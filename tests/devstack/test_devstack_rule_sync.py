"""The prometheus-operator stand-in: a PrometheusRule the operator creates ends up loaded in real Prometheus."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from kanari.api.v1alpha1 import ModelDeployment
from kanari.controller.drift_rules import build_prometheus_rule
from kanari.scrape import ScrapeJobs

from devstack.cluster import start_cluster
from devstack.kubeapi import KubeApi
from devstack.rule_sync import PROMETHEUS_RULE, RuleSync
from devstack.stack import free_port, start_prometheus


def _loaded_groups(prom_url: str) -> list[str]:
    with urllib.request.urlopen(f"{prom_url}/api/v1/rules", timeout=5) as resp:
        return [g["name"] for g in json.loads(resp.read())["data"]["groups"]]


@pytest.mark.prometheus
@pytest.mark.timeout(60)
async def test_a_prometheus_rule_is_written_and_loaded_then_removed(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    prom = start_prometheus(tmp_path / "prom", rule_files=[rules / "*.yaml"])
    cluster = await start_cluster(tmp_path / "kubeconfig", free_port(), "ml")
    api = KubeApi(cluster.url)
    sync = asyncio.create_task(RuleSync(api, rules, prom.url, "ml").run())
    try:
        md = ModelDeployment.model_validate({
            "metadata": {"name": "fraud", "namespace": "ml"},
            "spec": {"model": {"storageUri": "s3://b/m.tar.gz", "format": "pytorch"}, "serving": {"accelerator": "cpu"},
                     "monitoring": {"drift": {"for": "5s"}, "retrain": {"pipeline": "kanari-training"}}},
        })
        rule = build_prometheus_rule(md, ScrapeJobs())
        assert rule is not None
        await api.create(KubeApi.path(*PROMETHEUS_RULE, "ml"), rule)
        for _ in range(50):
            if "kanari-drift.ml.fraud" in await asyncio.to_thread(_loaded_groups, prom.url):
                break
            await asyncio.sleep(0.1)
        assert "kanari-drift.ml.fraud" in await asyncio.to_thread(_loaded_groups, prom.url)
        assert (rules / "ml-fraud-drift.yaml").exists()

        async with api.session.delete(cluster.url + KubeApi.path(*PROMETHEUS_RULE, "ml", "fraud-drift")) as resp:
            assert resp.status == 200
        for _ in range(50):
            if not await asyncio.to_thread(_loaded_groups, prom.url):
                break
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_loaded_groups, prom.url) == []
        assert not (rules / "ml-fraud-drift.yaml").exists()
    finally:
        sync.cancel()
        await asyncio.gather(sync, return_exceptions=True)
        await api.close()
        await cluster.stop()
        prom.stop()
