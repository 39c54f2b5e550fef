"""Analysis and engine against a real Prometheus scraping an exporter these tests control."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from kanari.api.conditions import get_condition
from kanari.rollout import analysis
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig
from kanari.scrape import DEFAULT_CONTROLLER_JOB, DEFAULT_MONITOR_JOB
from rollout_promlib import RawPod, ServerlessExporter, Traffic, drive, last, monitor_target, serving_status
from rollout_testlib import make_spec, ref

from devstack.stack import start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(90)]

STABLE, CANARY = "fraud-predictor-00001", "fraud-predictor-00002"


def rollout(metrics, steps=None, **analysis_extra):
    return {
        "steps": steps or [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}}],
        "analysis": {"interval": "2s", "minSampleCount": 20, "inconclusiveLimit": 2, "metrics": metrics,
                     **analysis_extra},
    }


SUCCESS = {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.99}}
P99 = {"name": "p99", "template": "request-latency-p99", "thresholdRange": {"max": 0.25}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sl = {ns: ServerlessExporter(ns) for ns in ("sl-ok", "sl-slow", "sl-dead", "sl-idle", "sl-down", "ml")}
    raw = {rev: RawPod("raw-err", rev, "fraud") for rev in ("rev-stable", "rev-canary")}
    targets = [t for e in sl.values() for t in e.targets()] + [p.target for p in raw.values()] + [monitor_target(sl.values())]
    prom = start_prometheus(tmp_path_factory.mktemp("prom"), targets=targets)
    yield prom, sl, raw
    prom.stop()
    for e in [*sl.values(), *raw.values()]:
        e.close()


def variables(ns, stable=STABLE, canary=CANARY):
    return {"namespace": ns, "name": "fraud", "stableRevision": stable, "canaryRevision": canary,
            "monitorJob": DEFAULT_MONITOR_JOB, "controllerJob": DEFAULT_CONTROLLER_JOB}


def client(prom, **kw) -> PrometheusClient:
    return PrometheusClient(PrometheusConfig(url=prom.url, **kw))


def start_traffic(sinks, stable=STABLE, canary=CANARY, **canary_behaviour) -> Traffic:
    t = Traffic(sinks, stable, canary)
    for k, v in canary_behaviour.items():
        setattr(t.behaviour[canary], k, v)
    t.start()
    return t


async def wait_for_series(prom: PrometheusClient, promql: str, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await prom.query(promql):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"Prometheus never scraped {promql}")


def test_healthy_canary_is_promoted_step_by_step_with_one_query_per_metric(world):
    prom_proc, sl, _ = world
    exp = sl["sl-ok"]
    spec_v1 = make_spec("v1", rollout([SUCCESS, P99]))
    spec = make_spec("v2", rollout([SUCCESS, P99]))
    traffic = start_traffic({STABLE: exp, CANARY: exp})

    async def go():
        async with client(prom_proc) as prom:
            await wait_for_series(prom, 'revision_app_request_count{namespace_name="sl-ok"}')
            before = prom.queries
            status, decisions = await drive(spec, serving_status(spec_v1), prom, variables("sl-ok"), traffic,
                                            lambda d: d.status.phase in ("Succeeded", "RolledBack"), 40)
            return status, decisions, prom.queries - before

    try:
        status, decisions, queries = asyncio.run(go())
    finally:
        traffic.stop()
    assert status.phase == "Succeeded", status.message
    assert status.stableModel == ref(spec)
    weights = [d.canary_weight for d in decisions]
    assert 20 in weights and 50 in weights and weights.index(20) < weights.index(50)
    passed = [r for r in status.analysisRuns if r.phase == "Successful"]
    assert {r.step for r in passed} == {1, 3}
    measured = len({(m.startedAt, mr.name) for r in status.analysisRuns for mr in r.metrics for m in mr.measurements})
    assert queries == measured, "one Prometheus query per metric per measurement"
    sr = last(status, "success-rate")
    assert sr.value == pytest.approx(1.0) and sr.sampleCount >= 20 and "stable" in sr.message
    assert sr.stableValue == pytest.approx(1.0) and "revision_app_request_count" in sr.query


@pytest.mark.parametrize("case", ["raw-error-rate", "serverless-latency", "serverless-all-errors"])
def test_breaching_canary_is_rolled_back_naming_the_metric(world, case):
    prom_proc, sl, raw = world
    if case == "raw-error-rate":
        ns, stable, canary, metric = "raw-err", "rev-stable", "rev-canary", SUCCESS
        sinks = dict(raw)
        extra = {"serving": {"accelerator": "cpu", "deploymentMode": "RawDeployment"}}
        behaviour = {"error_ratio": 0.3}
        series = 'request_preprocess_seconds_count{namespace="raw-err"}'
    elif case == "serverless-all-errors":
        # No non-5xx series exists for the canary at all: a success rate of 0, not "no data".
        ns, stable, canary, metric = "sl-dead", STABLE, CANARY, SUCCESS
        sinks = {STABLE: sl[ns], CANARY: sl[ns]}
        extra = {}
        behaviour = {"error_ratio": 1.0}
        series = 'revision_app_request_count{namespace_name="sl-dead"}'
    else:
        ns, stable, canary, metric = "sl-slow", STABLE, CANARY, P99
        sinks = {STABLE: sl[ns], CANARY: sl[ns]}
        extra = {}
        behaviour = {"latency": 0.8}
        series = 'revision_app_request_count{namespace_name="sl-slow"}'
    spec_v1 = make_spec("v1", rollout([SUCCESS, P99]))
    spec = make_spec("v2", rollout([SUCCESS, P99]))
    if extra:
        spec_v1 = make_spec("v1", rollout([SUCCESS, P99]), **extra)
        spec = make_spec("v2", rollout([SUCCESS, P99]), **extra)
    traffic = start_traffic(sinks, stable, canary, **behaviour)

    async def go():
        async with client(prom_proc) as prom:
            await wait_for_series(prom, series)
            return await drive(spec, serving_status(spec_v1), prom, variables(ns, stable, canary), traffic,
                               lambda d: d.status.phase in ("Succeeded", "RolledBack"), 40)

    try:
        status, decisions = asyncio.run(go())
    finally:
        traffic.stop()
    assert status.phase == "RolledBack", status.message
    assert decisions[-1].canary_weight == 0 and decisions[-1].canary is None
    assert status.stableModel == ref(spec_v1)
    failed = last(status, metric["name"])
    assert failed.phase == "Failed"
    assert metric["name"] in status.message and failed.threshold in status.message
    assert f"{failed.value:.6g}" in status.message
    if case == "raw-error-rate":
        assert failed.value == pytest.approx(0.7, abs=0.12)
    elif case == "serverless-all-errors":
        assert failed.value == 0.0
    else:
        assert failed.value > 0.5
    assert any(e.reason == "RolledBack" and e.type == "Warning" for e in decisions[-1].events)


def test_no_traffic_stays_inconclusive_and_pauses_with_the_reason(world):
    prom_proc, sl, _ = world
    spec_v1 = make_spec("v1", rollout([SUCCESS], inconclusiveLimit=1))
    spec = make_spec("v2", rollout([SUCCESS], inconclusiveLimit=1))

    async def go():
        async with client(prom_proc) as prom:
            return await drive(spec, serving_status(spec_v1), prom, variables("sl-idle"), None,
                               lambda d: d.status.phase == "Paused", 30)

    status, decisions = asyncio.run(go())
    assert [p.reason for p in status.pauseConditions] == ["AnalysisInconclusive"]
    assert status.canaryWeight == 0 and status.currentStep == 1, "paused inconclusive: the canary serves nothing"
    assert all(d.status.phase != "Succeeded" for d in decisions)
    assert "fewer than minSampleCount 20" in last(status, "success-rate").message
    cond = get_condition(status.conditions, "Paused")
    assert cond.status == "True" and cond.reason == "AnalysisInconclusive"


def test_prometheus_stopped_mid_analysis_is_not_a_pass(world, tmp_path):
    _, sl, _ = world
    exp = sl["sl-down"]
    own = start_prometheus(tmp_path / "prom", targets=exp.targets())
    spec_v1 = make_spec("v1", rollout([SUCCESS]))
    spec = make_spec("v2", rollout([SUCCESS]))
    traffic = start_traffic({STABLE: exp, CANARY: exp})

    async def go():
        async with client(own, attempts=2, backoff=0.1, timeout=2) as prom:
            status, _ = await drive(spec, serving_status(spec_v1), prom, variables("sl-down"), traffic,
                                    lambda d: d.canary_weight == 20, 10)
            own.stop()
            return await drive(spec, status, prom, variables("sl-down"), traffic,
                               lambda d: d.status.phase != "Progressing", 20)

    try:
        status, decisions = asyncio.run(go())
    finally:
        traffic.stop()
        own.stop()
    assert status.phase == "Paused" and [p.reason for p in status.pauseConditions] == ["PrometheusUnavailable"]
    assert status.canaryWeight == 20 and status.currentStep == 1
    down = last(status, "success-rate")
    assert down.phase == "Error" and "Prometheus unavailable" in down.message
    assert get_condition(status.conditions, "AnalysisPassing").reason == "PrometheusUnavailable"


def test_rejected_promql_is_an_error_with_prometheus_message(world):
    prom_proc, _, _ = world
    bad = {"name": "custom", "query": 'sum(rate(revision_app_request_count{namespace_name="{{namespace}}"}[{{interval}}]',
           "thresholdRange": {"min": 1}, "minSampleCount": 0}
    spec = make_spec("v2", rollout([SUCCESS, bad]))

    async def go():
        async with client(prom_proc) as prom:
            return await analysis.measure(spec, variables("sl-ok"), prom, datetime.now(UTC))

    results = asyncio.run(go())
    custom = results[1]
    assert custom.verdict == "Error" and "bad_data" in custom.message and "parse error" in custom.message


def test_drift_templates_read_the_drift_monitor_gauges(world):
    prom_proc, sl, _ = world
    exp = sl["ml"]
    exp.divergence.labels("ml", "fraud", "psi").set(0.31)
    exp.window.labels("ml", "fraud", "default").set(500)
    exp.window.labels("ml", "fraud", "canary").set(400)
    psi = {"name": "psi", "template": "canary-vs-stable-psi", "thresholdRange": {"max": 0.2}}
    spec = make_spec("v2", rollout([psi]))

    async def go():
        async with client(prom_proc) as prom:
            await wait_for_series(prom, 'kanari_canary_divergence{namespace="ml"}')
            return await analysis.measure(spec, variables("ml"), prom, datetime.now(UTC))

    (result,) = asyncio.run(go())
    assert result.verdict == "Failed" and result.value == pytest.approx(0.31) and result.sampleCount == 400
