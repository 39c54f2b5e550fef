"""The judge as an analysis metric, against a real Prometheus scraping series these tests set."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from kanari.api.v1alpha1 import JudgeSpec, ModelDeploymentStatus, SpecError, parse_spec
from kanari.judging.analysis import planned_looks, queries
from kanari.rollout import analysis
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig
from kanari.scrape import ScrapeJobs
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from devstack.stack import ScrapeTarget, free_port, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]

BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")


class Series(Collector):
    """Untyped series whose values the test sets (Prometheus' increase() reads them as counters)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.lock = threading.Lock()

    def set(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            self.values[(name, tuple(sorted(labels.items())))] = value

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            items = list(self.values.items())
        by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
        for (name, labels), value in items:
            by_name.setdefault(name, []).append((labels, value))
        for name, entries in by_name.items():  # one family per name, as the exposition format requires
            fam = Metric(name, name, "untyped")
            for labels, value in entries:
                fam.add_sample(name, dict(labels), value)
            yield fam


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Series]]:
    registry = CollectorRegistry()
    series = Series()
    registry.register(series)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    prom = start_prometheus(tmp_path_factory.mktemp("prom"), targets=[ScrapeTarget("judge", [f"127.0.0.1:{port}"])])
    deadline = time.monotonic() + 30
    # A series that first appears already high has no increase: wait until scrapes run before setting any.
    while not httpx.get(f"{prom.url}/api/v1/query", params={"query": 'up{job="judge"} == 1'}).json()["data"]["result"]:
        assert time.monotonic() < deadline, "Prometheus never scraped the test exporter"
        time.sleep(0.2)
    yield prom.url, series
    prom.stop()
    server.shutdown()


def spec(mode: str, judge: dict) -> object:
    return parse_spec({
        "model": {"storageUri": "s3://models/fraud/v2", "format": "sklearn"},
        "serving": {"accelerator": "cpu", "deploymentMode": mode},
        "rollout": {
            "steps": [{"setWeight": 10}, {"analysis": {}}],
            "analysis": {"interval": "2s", "count": 1, "inconclusiveLimit": 9, "minSampleCount": 50,
                         "metrics": [{"name": "quality", "judge": judge}]},
        },
    })


def set_serverless(series: Series, ns: str, revision: str, total: float, errors: float) -> None:
    base = {"namespace_name": ns, "revision_name": revision}
    series.set("revision_app_request_count", total - errors, **base, response_code_class="2xx")
    series.set("revision_app_request_count", errors, **base, response_code_class="5xx")


def set_raw_latency(series: Series, ns: str, revision: str, cumulative: list[float]) -> None:
    for le, count in zip(BUCKETS, cumulative, strict=True):
        series.set("request_predict_seconds_bucket", count, namespace=ns, kanari_dev_revision=revision, le=le)


async def _measure(url: str, sp: object, ns: str, step_started: datetime, looks_done: int = 0) -> object:
    variables = {"namespace": ns, "name": "fraud", "canaryRevision": "canary", "stableRevision": "stable",
                 "stepStartedAt": step_started.isoformat().replace("+00:00", "Z"), "measurements.quality": str(looks_done)}
    async with PrometheusClient(PrometheusConfig(url=url)) as prom:
        [result] = await analysis.measure(sp, variables, prom, datetime.now(UTC))  # type: ignore[arg-type]
        assert prom.queries == 1  # one query per metric, as every analysis metric
        return result


def _settle() -> None:
    time.sleep(3.5)  # three scrapes at 1s


def test_error_rate_judge_fails_a_worse_canary_and_passes_an_equal_one(world: tuple[str, Series]) -> None:
    url, series = world
    started = datetime.now(UTC) - timedelta(seconds=1)
    for ns in ("worse", "equal"):
        for rev in ("canary", "stable"):
            set_serverless(series, ns, rev, 0, 0)
    _settle()
    set_serverless(series, "worse", "canary", 4000, 200)  # 5% errors
    set_serverless(series, "worse", "stable", 36000, 360)  # 1%
    set_serverless(series, "equal", "canary", 20000, 0)
    set_serverless(series, "equal", "stable", 180000, 180)  # 0.1%
    _settle()
    sp = spec("Serverless", {"kind": "errorRate", "maxDegradation": 0.005, "alpha": 0.05})
    worse = asyncio.run(_measure(url, sp, "worse", started))
    assert worse.verdict == "Failed", worse.message
    assert worse.value == pytest.approx(0.04, abs=0.01) and "canary worse than stable" in worse.message
    assert worse.threshold == "errorRate degradation < 0.005 (alpha 0.05)"
    equal = asyncio.run(_measure(url, sp, "equal", started))
    assert equal.verdict == "Successful", equal.message
    # Past the planned looks (count 1 + failureLimit 0 + inconclusiveLimit 9 + 1 = 11) no alpha is left.
    assert planned_looks(sp, sp.rollout.analysis.metrics[0]) == 11  # type: ignore[attr-defined]
    late = asyncio.run(_measure(url, sp, "worse", started, looks_done=11))
    assert late.verdict != "Failed"


def test_latency_judge_on_raw_deployment_histograms(world: tuple[str, Series]) -> None:
    url, series = world
    started = datetime.now(UTC) - timedelta(seconds=1)
    for ns in ("slow", "same"):
        for rev in ("canary", "stable"):
            set_raw_latency(series, ns, rev, [0] * len(BUCKETS))
    _settle()
    stable = [100, 900, 4000, 8000, 9500, 9900, 10000, 10000, 10000]
    set_raw_latency(series, "slow", "stable", stable)
    set_raw_latency(series, "slow", "canary", [5, 40, 200, 500, 800, 950, 1000, 1000, 1000])  # shifted right
    set_raw_latency(series, "same", "stable", stable)
    set_raw_latency(series, "same", "canary", [x / 5 for x in stable])
    _settle()
    sp = spec("RawDeployment", {"kind": "latency", "maxDegradation": 0.1})  # up to 10% slower
    slow = asyncio.run(_measure(url, sp, "slow", started))
    assert slow.verdict == "Failed", slow.message
    same = asyncio.run(_measure(url, sp, "same", started))
    assert same.verdict == "Successful", same.message
    assert same.threshold == "latency slowdown < 0.1 (x1.1, alpha 0.05)"
    assert same.sampleCount == pytest.approx(2000, rel=0.3)  # increase() extrapolates to the window edges


def test_no_canary_traffic_is_inconclusive_never_a_pass(world: tuple[str, Series]) -> None:
    url, series = world
    started = datetime.now(UTC) - timedelta(seconds=1)
    set_serverless(series, "idle", "stable", 0, 0)
    _settle()
    set_serverless(series, "idle", "stable", 5000, 5)
    _settle()
    sp = spec("Serverless", {"kind": "errorRate", "maxDegradation": 0.01})
    idle = asyncio.run(_measure(url, sp, "idle", started))
    assert idle.verdict == "Inconclusive" and "no canary requests" in idle.message


def test_unreachable_prometheus_is_an_error_never_a_verdict() -> None:
    sp = spec("Serverless", {"kind": "errorRate", "maxDegradation": 0.01})
    result = asyncio.run(_measure(f"http://127.0.0.1:{free_port()}", sp, "x", datetime.now(UTC)))
    assert result.verdict == "Error" and "Prometheus unavailable" in result.message


def test_judge_spec_is_checked() -> None:
    with pytest.raises(SpecError, match="maxDegradation"):
        spec("Serverless", {"kind": "latency", "maxDegradation": 1.5})
    with pytest.raises(SpecError, match="judge"):
        parse_spec({
            "model": {"storageUri": "s3://m/v1", "format": "sklearn"}, "serving": {"accelerator": "cpu"},
            "rollout": {"analysis": {"metrics": [{"name": "q", "judge": {"kind": "errorRate", "maxDegradation": 0.01},
                                                  "thresholdRange": {"min": 0.9}}]}},
        })
    raw = spec("RawDeployment", {"kind": "errorRate", "maxDegradation": 0.01})
    promql = queries(raw, JudgeSpec(kind="errorRate", maxDegradation=0.01))  # type: ignore[arg-type]
    assert promql.count("kanari_part") == 4 and "request_postprocess_seconds_count" in promql


def test_status_fields_feed_the_judge() -> None:
    sp = spec("Serverless", {"kind": "errorRate", "maxDegradation": 0.01})
    canary = {"revision": "abc123", "storageUri": "s3://m/v2", "format": "sklearn"}
    status = ModelDeploymentStatus.model_validate({
        "rollout": {"stepStartedAt": "2026-11-30T05:00:00Z"}, "currentStep": 1, "canaryModel": canary,
        "analysisRuns": [
            {"name": "step-1", "revision": "abc123", "step": 1,
             "metrics": [{"name": "quality", "successful": 1, "inconclusive": 2, "error": 4}]},
            {"name": "background", "revision": "abc123", "metrics": [{"name": "quality", "successful": 9}]},
        ]})
    v = analysis.variables("ns", "fraud", sp, status, jobs=ScrapeJobs())  # type: ignore[arg-type]
    assert v["stepStartedAt"] == "2026-11-30T05:00:00Z" and v["measurements.quality"] == "3"
