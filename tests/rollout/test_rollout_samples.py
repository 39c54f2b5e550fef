"""Every shipped sample's analysis, against a real Prometheus: it passes for a healthy canary and fails for a
broken one (the queries are the sample's own, for its deployment mode's real metric names)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kanari import observability
from kanari.api.v1alpha1 import AnalysisSpec, ModelDeploymentSpec, parse_model_deployment
from kanari.capacity.cost import COST_TEMPLATES, runtime_tag
from kanari.judging.labels import QualityMetrics
from kanari.rollout import analysis
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig
from kanari.rollout.templates import CBPE_TEMPLATES
from kanari.scrape import DEFAULT_CONTROLLER_JOB, DEFAULT_MONITOR_JOB
from prometheus_client import start_http_server
from rollout_promlib import RawPod, ServerlessExporter, Traffic, monitor_target

from devstack.neuron_monitor import NeuronMonitorStandIn
from devstack.stack import ScrapeTarget, free_port, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]
SAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "samples").glob("*.yaml"))
STABLE, CANARY = "rev-stable", "rev-canary"


def sample(path: Path) -> tuple[str, ModelDeploymentSpec]:
    md = parse_model_deployment(yaml.safe_load(path.read_text()))
    return md.metadata.namespace, md.spec


def test_every_sample_with_a_rollout_analysis_is_covered():
    analysed = [p.name for p in SAMPLES if sample(p)[1].rollout.analysis]
    assert len(analysed) >= 3, analysed


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Exporters for each sample (healthy and broken variants, in their own namespaces) and one Prometheus."""
    sinks: dict[tuple[str, str], dict[str, Any]] = {}
    closers: list[Any] = []
    targets = []
    exporters: list[ServerlessExporter] = []
    for path in SAMPLES:
        ns, spec = sample(path)
        if spec.rollout.analysis is None:
            continue
        for health in ("healthy", "broken"):
            key = (path.name, health)
            namespace = f"{ns}-{health}"
            if spec.serving.deploymentMode == "RawDeployment":
                pods = {rev: RawPod(namespace, rev, "m") for rev in (STABLE, CANARY)}
                targets += [p.target for p in pods.values()]
                closers += pods.values()
                sinks[key] = {"namespace": namespace, "sinks": pods, "drift": None}
            else:
                exp = ServerlessExporter(namespace)
                targets += exp.targets()
                exporters.append(exp)
                closers.append(exp)
                sinks[key] = {"namespace": namespace, "sinks": {STABLE: exp, CANARY: exp}, "drift": exp}
            if any(m.template in COST_TEMPLATES for m in spec.rollout.analysis.metrics):
                # Cost per 1,000: the NeuronCores each revision holds, as neuron-monitor reports them.
                monitor = NeuronMonitorStandIn("inf2.xlarge")
                for rev in (STABLE, CANARY):
                    monitor.set_runtime(runtime_tag(namespace, path.stem, rev), cores=2)
                targets.append(monitor.target(f"neuron-monitor-{namespace}"))
                closers.append(monitor)
    servers: list[Any] = []
    if any(m.template == "cold-start-seconds" for p in SAMPLES for m in (sample(p)[1].rollout.analysis or
                                                                          AnalysisSpec()).metrics):
        # The operator's own metrics (kanari_cold_start_seconds, from the warm-up gate's records).
        port = free_port()
        server, _ = start_http_server(port, addr="127.0.0.1", registry=observability.REGISTRY)
        targets.append(ScrapeTarget(job=DEFAULT_CONTROLLER_JOB, targets=[f"127.0.0.1:{port}"], labels={}))
        servers.append(server)
    quality = QualityMetrics()
    more: list[str] = []
    if any(m.template in CBPE_TEMPLATES for p in SAMPLES for m in (sample(p)[1].rollout.analysis or
                                                                   AnalysisSpec()).metrics):
        # The drift monitor's CBPE gauges (kanari.judging.labels.QualityMetrics), on a registry of their own.
        port = free_port()
        server, _ = start_http_server(port, addr="127.0.0.1", registry=quality.registry)
        more.append(f"127.0.0.1:{port}")
        servers.append(server)
    targets.append(monitor_target(exporters, more))  # all the drift monitor's gauges, under its one job
    prom = start_prometheus(tmp_path_factory.mktemp("prom"), targets=targets)
    sinks["quality"] = quality
    yield prom, sinks
    prom.stop()
    for c in closers:
        c.close()
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("health", ["healthy", "broken"])
@pytest.mark.parametrize("path", [p for p in SAMPLES if sample(p)[1].rollout.analysis], ids=lambda p: p.name)
def test_sample_analysis_against_real_prometheus(world, path: Path, health: str) -> None:
    prom_proc, sinks = world
    ns, spec = sample(path)
    setup = sinks[(path.name, health)]
    namespace, name = setup["namespace"], path.stem
    traffic = Traffic(setup["sinks"], STABLE, CANARY, rps=300)
    traffic.canary_weight = 50
    if health == "broken":
        traffic.behaviour[CANARY].error_ratio = 0.4
        traffic.behaviour[CANARY].latency = 0.9
    if setup["drift"] is not None:  # the drift monitor's gauges, as it would publish them
        gauges = setup["drift"]
        md_name = yaml.safe_load(path.read_text())["metadata"]["name"]
        gauges.divergence.labels(namespace, md_name, "psi").set(0.6 if health == "broken" else 0.02)
        for endpoint in ("default", "canary"):
            gauges.window.labels(namespace, md_name, endpoint).set(800)
        name = md_name
    if any(m.template == "cold-start-seconds" for m in spec.rollout.analysis.metrics):
        # As the operator exports a revision's cold start once its warm-up succeeded (kanari.observability).
        for revision, seconds in ((STABLE, 60.0), (CANARY, 1500.0 if health == "broken" else 45.0)):
            observability.COLD_START.labels(namespace, name, revision).set(seconds)
    registered = {"f1": 0.81, "roc_auc": 0.93}  # what the canary's model package registered on its test split
    if any(m.template in CBPE_TEMPLATES for m in spec.rollout.analysis.metrics):
        # The canary's label-free estimate, as the monitor exports it: a few points under the registered
        # figures when healthy, far under them when the canary is worse.
        quality: QualityMetrics = sinks["quality"]
        for metric, figure in registered.items():
            quality.estimated.labels(namespace, name, CANARY, metric).set(figure - (0.25 if health == "broken" else 0.01))
        quality.estimated_rows.labels(namespace, name, CANARY).set(800)
    traffic.start()
    variables = {"namespace": namespace, "name": name, "stableRevision": STABLE, "canaryRevision": CANARY,
                 "stableTag": runtime_tag(namespace, name, STABLE), "canaryTag": runtime_tag(namespace, name, CANARY),
                 "canaryMonitorRevision": CANARY, "canaryRegisteredF1": str(registered["f1"]),
                 "canaryRegisteredRocAuc": str(registered["roc_auc"]),
                 "monitorJob": DEFAULT_MONITOR_JOB, "controllerJob": DEFAULT_CONTROLLER_JOB}

    # A cost ratio divides two revisions' request counts, each extrapolated by increase() from its own target's
    # scrapes (Prometheus staggers targets' scrape offsets): with a few seconds of history one scrape more or
    # less is a 20-30% "regression". On a cluster the window is the analysis interval (minutes); here the
    # history is kept long enough that one scrape is a few percent of it.
    settle = 15.0 if any(m.template in COST_TEMPLATES for m in spec.rollout.analysis.metrics) else 0.0

    async def go():
        async with PrometheusClient(PrometheusConfig(url=prom_proc.url)) as prom:
            started = time.monotonic()
            end = started + 40 + settle
            results = []
            while time.monotonic() < end:
                await asyncio.sleep(1.0)
                if time.monotonic() - started < settle:
                    continue
                results = await analysis.measure(spec, variables, prom, datetime.now(UTC))
                # Enough scrapes for rate() and minSampleCount: every metric judged (Successful or Failed).
                if all(r.verdict in ("Successful", "Failed") for r in results):
                    return results
            return results

    try:
        results = asyncio.run(go())
    finally:
        traffic.stop()
    verdicts = {r.name: r.verdict for r in results}
    detail = "; ".join(r.message for r in results)
    if health == "healthy":
        assert set(verdicts.values()) == {"Successful"}, detail
    else:
        assert "Failed" in verdicts.values(), detail
        assert "Inconclusive" not in verdicts.values() and "Error" not in verdicts.values(), detail
