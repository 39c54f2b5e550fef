"""Cost per 1,000 inferences and cold start against a real Prometheus scraping the neuron-monitor stand-in,
KServe-shaped model-server pods and the operator's own metrics (kanari_cold_start_seconds, from the warm-up
gate); and a canary whose cost per 1,000 regresses is rolled back naming the figure."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kanari.api.v1alpha1 import ModelDeploymentStatus, parse_spec
from kanari.capacity.cost import COLD_START_SERIES, runtime_tag
from kanari.capacity.topology import INSTANCES
from kanari.rollout import analysis
from kanari.rollout.engine import RolloutObservation, decide, due_metrics
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig
from kanari.scrape import DEFAULT_CONTROLLER_JOB, DEFAULT_MONITOR_JOB
from kserve import metrics as kserve_metrics
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from devstack.neuron_monitor import NeuronMonitorStandIn
from devstack.stack import ScrapeTarget, free_port, start_prometheus
from tests.rollout.rollout_testlib import ref

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]
NS, NAME = "ml", "llm"
STABLE, CANARY = "rev-stable", "rev-canary"
UNWARMED = "rev-never-warmed"
RPS = {STABLE: 40.0, CANARY: 20.0}  # same cores, half the requests: the canary costs twice as much per 1,000


class ModelServerPod:
    """One KServe model-server pod's own metrics (kserve.metrics names), labelled as discovery would."""

    def __init__(self, revision: str, pod: str):
        self.registry = CollectorRegistry()
        labels = list(kserve_metrics.PROM_LABELS)
        self.pre, self.post = (Histogram(h._name, h._documentation, labels, registry=self.registry)
                               for h in (kserve_metrics.PRE_HIST_TIME, kserve_metrics.POST_HIST_TIME))
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.target = ScrapeTarget(job=f"pod-{pod}", targets=[f"127.0.0.1:{self.port}"],
                                   labels={"namespace": NS, "kanari_dev_revision": revision, "pod": pod})

    def serve(self) -> None:
        self.pre.labels(NAME).observe(0.001)
        self.post.labels(NAME).observe(0.001)


def record_cold_start(revision: str, scheduled: datetime, first_answer: datetime) -> float:
    """The warm-up gate's record of a revision's pods, exported as the operator exports it."""
    from kanari import observability
    from kanari.api.v1alpha1 import WarmupSpec
    from kanari.rollout.warmup import PodObservation, WarmupObservation, gate

    obs = WarmupObservation(revision=revision, pods=(
        PodObservation(name=f"{revision}-0", scheduled_at=scheduled, answered=1, first_success_at=first_answer),
        PodObservation(name=f"{revision}-1", scheduled_at=scheduled, answered=1,
                       first_success_at=scheduled + (first_answer - scheduled) / 2),
    ))
    result = gate(WarmupSpec(requests=1), revision, None, obs, first_answer)
    assert result.state == "warm" and result.status.coldStartSeconds is not None
    observability.observe(NS, NAME, ModelDeploymentStatus(warmup=result.status))
    return result.status.coldStartSeconds


class Load(threading.Thread):
    def __init__(self, pods: dict[str, ModelServerPod], start_after: dict[str, float]):
        super().__init__(daemon=True)
        self.pods, self.start_after = pods, start_after
        self.stop_event = threading.Event()
        self.first_served: dict[str, float] = {}

    def run(self) -> None:
        t0 = time.monotonic()
        owed = dict.fromkeys(self.pods, 0.0)
        while not self.stop_event.wait(0.05):
            for rev, pod in self.pods.items():
                if time.monotonic() - t0 < self.start_after.get(rev, 0):
                    continue
                owed[rev] += RPS[rev] * 0.05
                while owed[rev] >= 1:
                    self.first_served.setdefault(rev, time.time())
                    pod.serve()
                    owed[rev] -= 1


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    monitor = NeuronMonitorStandIn("inf2.xlarge")
    monitor.set_runtime(runtime_tag(NS, NAME, STABLE), cores=2, first_core=0)
    other = NeuronMonitorStandIn("inf2.xlarge", instance_id="i-0standin000000001")
    other.set_runtime(runtime_tag(NS, NAME, CANARY), cores=2, first_core=0)
    unpriced = NeuronMonitorStandIn("inf9.xlarge", instance_id="i-0standin000000002")
    unpriced.set_runtime(runtime_tag(NS, "mystery", "rev-x"), cores=2)
    pods = {STABLE: ModelServerPod(STABLE, "llm-stable-0"), CANARY: ModelServerPod(CANARY, "llm-canary-0")}
    # The canary's own model container claims a 1 s cold start for a revision the operator never warmed up, under
    # the operator's metric name and labels: the template reads the operator's job only, so it stays without data.
    spoof = Gauge(COLD_START_SERIES, "spoof", ["namespace", "model", "revision"], registry=pods[CANARY].registry)
    spoof.labels(NS, NAME, UNWARMED).set(1.0)
    from kanari import observability

    operator_port = free_port()
    operator_metrics, _ = start_http_server(operator_port, addr="127.0.0.1", registry=observability.REGISTRY)
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    cold = {STABLE: record_cold_start(STABLE, t0, t0 + timedelta(seconds=95)),  # the worst pod of each
            CANARY: record_cold_start(CANARY, t0, t0 + timedelta(seconds=250))}
    targets = [monitor.target("nm-0"), other.target("nm-1"), unpriced.target("nm-2"),
               ScrapeTarget(job=DEFAULT_CONTROLLER_JOB, targets=[f"127.0.0.1:{operator_port}"], labels={}),
               *(p.target for p in pods.values())]
    prom = start_prometheus(tmp_path_factory.mktemp("prom"), targets=targets)
    # Scraping must be under way before the canary is "scheduled": a target's first scrape comes a few
    # seconds after Prometheus starts, and a cold start can only be seen at the scrape interval.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{prom.url}/api/v1/query?query=count(up%3D%3D1)", timeout=5) as resp:
            result = json.load(resp)["data"]["result"]
        if result and int(float(result[0]["value"][1])) == len(targets):
            break
        time.sleep(0.5)
    load = Load(pods, {})
    load.start()
    time.sleep(16)  # the 10 s window filled with both revisions' traffic
    yield prom, load, cold
    load.stop_event.set()
    load.join()
    prom.stop()
    for s in (monitor, other, unpriced, *pods.values()):
        s.server.shutdown()
    operator_metrics.shutdown()
    observability.forget(NS, NAME)


def spec_with(metrics: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None, version: str = "v2") -> Any:
    return parse_spec({
        "model": {"storageUri": f"s3://models/llm/{version}"},
        "serving": {"neuronCores": 2, "deploymentMode": "RawDeployment"},
        "rollout": {"steps": steps or [{"setWeight": 50}, {"analysis": {}}],
                    "analysis": {"interval": "10s", "minSampleCount": 50, "metrics": metrics}},
    })


def variables(stable: str = STABLE, canary: str = CANARY, name: str = NAME) -> dict[str, str]:
    return {"namespace": NS, "name": name, "canaryRevision": canary, "stableRevision": stable,
            "canaryTag": runtime_tag(NS, name, canary), "stableTag": runtime_tag(NS, name, stable),
            "monitorJob": DEFAULT_MONITOR_JOB, "controllerJob": DEFAULT_CONTROLLER_JOB}


def measure(world: Any, metrics: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    async def run() -> Any:
        client = PrometheusClient(PrometheusConfig(url=world[0].url))
        try:
            return await analysis.measure(spec_with(metrics), variables(**kw), client, datetime.now(UTC))
        finally:
            await client.close()
    return {r.name: r for r in asyncio.run(run())}


def test_cost_per_1k_inferences_is_held_core_seconds_times_price_over_requests(world: Any) -> None:
    got = measure(world, [{"name": "cost", "template": "cost-per-1k-inferences", "thresholdRange": {"max": 1}}])
    r = got["cost"]
    per_core_second = INSTANCES["inf2.xlarge"].on_demand_usd_hour / 3600 / 2
    expected_canary = 1000 * 2 * per_core_second / RPS[CANARY]
    assert r.verdict == "Successful", r.message
    assert r.value == pytest.approx(expected_canary, rel=0.25)
    assert "stable: " in r.message
    stable = float(r.message.split("stable: ")[1].rstrip(")"))
    assert stable == pytest.approx(1000 * 2 * per_core_second / RPS[STABLE], rel=0.25)


def test_a_regressed_cost_fails_the_canary_naming_the_figure(world: Any) -> None:
    got = measure(world, [{"name": "cost-regression", "template": "cost-per-1k-regression",
                           "thresholdRange": {"max": 10}}])
    r = got["cost-regression"]
    assert r.verdict == "Failed" and r.value is not None and 60 < r.value < 140, r.message  # ~ +100 %
    assert "breaches <= 10" in r.message


def test_an_instance_type_without_a_price_is_inconclusive_not_free(world: Any) -> None:
    got = measure(world, [{"name": "cost", "template": "cost-per-1k-inferences", "thresholdRange": {"max": 1}}],
                  canary="rev-x", name="mystery")
    assert got["cost"].verdict == "Inconclusive", got["cost"].message


def test_cold_start_template_reads_the_operators_figure_per_revision(world: Any) -> None:
    _, _, cold = world
    assert cold == {STABLE: 95.0, CANARY: 250.0}
    got = measure(world, [{"name": "cold-start", "template": "cold-start-seconds", "thresholdRange": {"max": 120}}])
    r = got["cold-start"]
    # The canary's slowest pod, with the stable's figure beside it: 250 s breaches a 120 s ceiling.
    assert r.verdict == "Failed" and r.value == pytest.approx(250) and r.stableValue == pytest.approx(95), r.message
    assert "kanari_cold_start_seconds" in r.query and f'revision="{CANARY}"' in r.query
    ok = measure(world, [{"name": "cold-start", "template": "cold-start-seconds", "thresholdRange": {"max": 300}}])
    assert ok["cold-start"].verdict == "Successful"


def test_a_revision_without_a_cold_start_figure_is_never_a_pass(world: Any) -> None:
    # Prometheus holds the spoofed figure (another job's), so only the job matcher keeps it out of the verdict.
    with urllib.request.urlopen(f"{world[0].url}/api/v1/query?query=" + urllib.parse.quote(
            f'{COLD_START_SERIES}{{revision="{UNWARMED}"}}'), timeout=5) as resp:
        assert [r["metric"]["job"] for r in json.load(resp)["data"]["result"]] == ["pod-llm-canary-0"]
    got = measure(world, [{"name": "cold-start", "template": "cold-start-seconds", "thresholdRange": {"max": 300}}],
                  canary=UNWARMED)
    assert got["cold-start"].verdict == "Inconclusive" and got["cold-start"].value is None, got["cold-start"].message
    assert f'job="{DEFAULT_CONTROLLER_JOB}"' in got["cold-start"].query


def test_rollout_rolls_back_a_canary_whose_cost_regresses(world: Any) -> None:
    metric = {"name": "cost-per-1k", "template": "cost-per-1k-regression", "thresholdRange": {"max": 10}}
    v2 = spec_with([metric])
    stable_ref = ref(spec_with([metric], version="v1"))
    status = ModelDeploymentStatus(phase="Succeeded", stableModel=stable_ref)

    async def run() -> Any:
        nonlocal status
        client = PrometheusClient(PrometheusConfig(url=world[0].url))
        try:
            for _ in range(60):
                now = datetime.now(UTC)
                due = due_metrics(v2, status, now)
                measurement = await analysis.measure(v2, variables(), client, now, due) if due else None
                d = decide(v2, status, RolloutObservation(now=now, desired=ref(v2), stable_ready=True,
                                                          canary_ready=True, measurement=measurement), 1)
                status = d.status
                if status.phase == "RolledBack":
                    return d
                await asyncio.sleep(0.5)
            raise AssertionError(status.message)
        finally:
            await client.close()

    d = asyncio.run(run())
    assert "cost-per-1k" in d.status.message and "breached threshold <= 10" in d.status.message
    assert any(e.reason == "RolledBack" for e in d.events)


def test_controller_cost_records_and_the_exported_gauge(world: Any) -> None:
    from kanari import observability
    from kanari.api.v1alpha1 import ModelRef
    from kanari.capacity.cost import measure_revision_costs
    from prometheus_client import generate_latest

    spec = spec_with([{"name": "cost", "template": "cost-per-1k-inferences", "thresholdRange": {"max": 1}}])
    status = ModelDeploymentStatus(stableModel=ModelRef(revision=STABLE), canaryModel=ModelRef(revision=CANARY))

    async def run() -> Any:
        client = PrometheusClient(PrometheusConfig(url=world[0].url))
        try:
            return await measure_revision_costs(client, spec, status, variables(), datetime.now(UTC), 10)
        finally:
            await client.close()

    records = {r.role: r for r in asyncio.run(run())}
    per_core_second = INSTANCES["inf2.xlarge"].on_demand_usd_hour / 3600 / 2
    for role, rev in (("stable", STABLE), ("canary", CANARY)):
        r = records[role]
        assert r.revision == rev and r.costPer1kInferences is not None, r.message
        assert r.costPer1kInferences == pytest.approx(1000 * 2 * per_core_second / RPS[rev], rel=0.25)
        assert r.neuronCoreSeconds == pytest.approx(20, rel=0.25)  # 2 cores held for the 10 s window
    observability.observe(NS, NAME, status.model_copy(update={"cost": list(records.values())}))
    text = generate_latest(observability.REGISTRY).decode()
    assert f'kanari_cost_per_1k_inferences{{name="{NAME}",namespace="{NS}",revision="{CANARY}",role="canary"}}' in text
    observability.forget(NS, NAME)
    assert "kanari_cost_per_1k_inferences{" not in generate_latest(observability.REGISTRY).decode()

    unreachable = PrometheusConfig(url=f"http://127.0.0.1:{free_port()}", attempts=1)

    async def down() -> Any:
        client = PrometheusClient(unreachable)
        try:
            return await measure_revision_costs(client, spec, status, variables(), datetime.now(UTC), 10)
        finally:
            await client.close()

    for r in asyncio.run(down()):
        assert r.costPer1kInferences is None and "not measured" in r.message
