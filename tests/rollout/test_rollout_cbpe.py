"""The CBPE analysis templates (estimated-f1-drop, estimated-roc-auc-drop) against a real Prometheus scraping the
drift monitor's own gauges (kanari.judging.labels.QualityMetrics): the canary's label-free estimate is judged
against the test metric its model package registered, with a tolerated drop. A canary as good as its test split
passes, a worse one fails, and missing data never passes (no calibration: Inconclusive; too few scored rows:
Inconclusive; no registered figure: Error). All of it with another scrape target (a tenant's model container)
exporting flattering estimates under the same names and labels, which the judge must not read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.api.v1alpha1 import MetricResult, ModelDeploymentStatus, ModelRef, parse_spec
from kanari.judging.cbpe import estimate
from kanari.judging.labels import QualityMetrics
from kanari.rollout import analysis
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig, label_value
from kanari.rollout.templates import TemplateError, builtin_parts, metric_query
from kanari.scrape import DEFAULT_MONITOR_JOB, ScrapeJobs
from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import f1_score, roc_auc_score

from devstack.stack import ScrapeTarget, free_port, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]

NS = "ml-prod"
THRESHOLD = 0.5
METRICS = [
    {"name": "estimated-f1", "template": "estimated-f1-drop", "thresholdRange": {"max": 0.05}},
    {"name": "estimated-auc", "template": "estimated-roc-auc-drop", "thresholdRange": {"max": 0.05}},
]
SPEC = parse_spec({
    "model": {"storageUri": "s3://models/fraud/8/", "format": "sklearn"},
    "serving": {"accelerator": "cpu", "deploymentMode": "RawDeployment"},
    "rollout": {"steps": [{"setWeight": 20}, {"analysis": {}}],
                "analysis": {"interval": "1m", "minSampleCount": 100, "metrics": METRICS}},
})


def scored_split(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A calibrated model's scores and the labels they come true with."""
    p = rng.beta(0.6, 1.6, rows)
    return p, (rng.random(rows) < p).astype(int)


def registered_on(rng: np.random.Generator) -> dict[str, float]:
    """What the pipeline's evaluation registers: F1 at the decision threshold and ROC-AUC on the test split."""
    p, y = scored_split(rng, 20_000)
    return {"f1": float(f1_score(y, p >= THRESHOLD)), "roc_auc": float(roc_auc_score(y, p))}


SPOOF_JOB = "tenant-model"
JOBS = ScrapeJobs()
SPOOFED = ("good", "worse", "uncalibrated", "few", "absent", "unregistered")


def spoof_registry() -> CollectorRegistry:
    """Another target's /metrics claiming a near-perfect canary for every model, with the monitor's own label set
    and even its `job` label (which Prometheus renames exported_job: the target's labels win)."""
    registry = CollectorRegistry()
    labels = ["job", "namespace", "model", "revision"]
    quality = Gauge("kanari_estimated_quality", "spoof", [*labels, "metric"], registry=registry)
    rows = Gauge("kanari_estimated_quality_rows", "spoof", labels, registry=registry)
    available = Gauge("kanari_estimated_quality_available", "spoof", labels, registry=registry)
    for model in SPOOFED:
        for metric in ("precision", "recall", "f1", "roc_auc"):
            quality.labels(DEFAULT_MONITOR_JOB, NS, model, "8", metric).set(0.999)
        rows.labels(DEFAULT_MONITOR_JOB, NS, model, "8").set(1_000_000)
        available.labels(DEFAULT_MONITOR_JOB, NS, model, "8").set(1)
    return registry


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, QualityMetrics, dict[str, float]]]:
    rng = np.random.default_rng(7)
    registered = registered_on(rng)
    gauges = QualityMetrics()
    served, _ = scored_split(rng, 5_000)
    gauges.set_estimate(NS, "good", "8", estimate(served, None, THRESHOLD))
    # Worse: its scores carry a third of the signal (and are calibrated as such): lower F1 and ROC-AUC.
    gauges.set_estimate(NS, "worse", "8", estimate(0.5 + (served - 0.5) / 3, None, THRESHOLD))
    gauges.set_estimate(NS, "uncalibrated", "8", None)
    gauges.set_estimate(NS, "few", "8", estimate(served[:60], None, THRESHOLD))
    gauges.set_estimate(NS, "unregistered", "8", estimate(served, None, THRESHOLD))
    port, spoof_port = free_port(), free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=gauges.registry)
    spoofer, _ = start_http_server(spoof_port, addr="127.0.0.1", registry=spoof_registry())
    prom = start_prometheus(tmp_path_factory.mktemp("prom"), targets=[
        ScrapeTarget(DEFAULT_MONITOR_JOB, [f"127.0.0.1:{port}"]), ScrapeTarget(SPOOF_JOB, [f"127.0.0.1:{spoof_port}"])])
    deadline = time.monotonic() + 30
    # Each target's own series: the spoofer's alone must not satisfy the wait for the monitor's.
    for q in (f'count(kanari_estimated_quality_rows{{namespace="ml-prod",job="{DEFAULT_MONITOR_JOB}"}}) >= 4',
              f'count(kanari_estimated_quality_rows{{job="{SPOOF_JOB}"}}) >= {len(SPOOFED)}'):
        while not httpx.get(f"{prom.url}/api/v1/query", params={"query": q}).json()["data"]["result"]:
            assert time.monotonic() < deadline, f"Prometheus never scraped {q}"
            time.sleep(0.2)
    yield prom.url, gauges, registered
    prom.stop()
    server.shutdown()
    spoofer.shutdown()


def status(registered: dict[str, float]) -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        stableModel=ModelRef(revision="rev-7", version="7", registeredMetrics={"f1": 0.99, "roc_auc": 0.99}),
        canaryModel=ModelRef(revision="rev-8", version="8", registeredMetrics=registered),
    )


def measure(url: str, model: str, registered: dict[str, float], jobs: ScrapeJobs = JOBS) -> dict[str, MetricResult]:
    async def go() -> list[MetricResult]:
        prom = PrometheusClient(PrometheusConfig(url=url))
        try:
            variables = analysis.variables(NS, model, SPEC, status(registered), jobs=jobs)
            return await analysis.measure(SPEC, variables, prom, datetime.now(UTC))
        finally:
            await prom.close()

    return {r.name: r for r in asyncio.run(go())}


def test_a_canary_as_good_as_its_test_split_passes(world: tuple[str, QualityMetrics, dict[str, float]]) -> None:
    url, _, registered = world
    out = measure(url, "good", registered)
    for name in ("estimated-f1", "estimated-auc"):
        assert out[name].verdict == "Successful", out[name].message
        assert out[name].sampleCount == 5000
        value = out[name].value
        assert value is not None and abs(value) < 0.05


def test_a_canary_worse_than_its_registered_metrics_fails(world: tuple[str, QualityMetrics, dict[str, float]]) -> None:
    url, _, registered = world
    out = measure(url, "worse", registered)
    for name in ("estimated-f1", "estimated-auc"):
        assert out[name].verdict == "Failed", out[name].message
        value = out[name].value
        assert value is not None and value > 0.05
        assert "breaches <= 0.05" in out[name].message


def test_missing_data_never_passes(world: tuple[str, QualityMetrics, dict[str, float]]) -> None:
    url, _, registered = world
    for model in ("uncalibrated", "few", "absent"):
        for r in measure(url, model, registered).values():
            assert r.verdict == "Inconclusive", (model, r.message)
    few = measure(url, "few", registered)["estimated-f1"]
    assert "60 samples in the window, fewer than minSampleCount 100" in few.message
    for r in measure(url, "unregistered", {}).values():
        assert r.verdict == "Error" and "canaryRegistered" in r.message, r.message


def test_the_value_is_the_registered_figure_less_the_estimate(world: tuple[str, QualityMetrics, dict[str, float]]) -> None:
    url, gauges, registered = world
    got = measure(url, "worse", registered)
    text = generate_latest(gauges.registry).decode()
    estimated = {s.labels["metric"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                 if s.name == "kanari_estimated_quality" and s.labels["model"] == "worse"}
    assert got["estimated-f1"].value == pytest.approx(registered["f1"] - estimated["f1"])
    assert got["estimated-auc"].value == pytest.approx(registered["roc_auc"] - estimated["roc_auc"])


def test_another_targets_estimates_are_never_read(world: tuple[str, QualityMetrics, dict[str, float]]) -> None:
    """The spoofing target is scraped (its series are in Prometheus with the monitor's labels) and the same query
    without the job matcher would pass the worse canary on its figure; the judge's own query does not."""
    url, _, registered = world
    jobs = ScrapeJobs()
    variables = analysis.variables(NS, "worse", SPEC, status(registered), jobs=jobs)
    spec_metric = next(m for m in SPEC.rollout.analysis.metrics if m.name == "estimated-f1")  # type: ignore[union-attr]
    promql = metric_query(SPEC, spec_metric, variables).promql
    unpinned = promql.replace(f'job="{jobs.monitor}", ', "")
    assert unpinned != promql
    result = httpx.get(f"{url}/api/v1/query", params={"query": unpinned}).json()["data"]["result"]
    value = {r["metric"]["kanari_part"]: float(r["value"][1]) for r in result}["value"]
    assert value < 0.05, "without the job, the spoofed 0.999 would pass the worse canary (the test has teeth)"
    assert measure(url, "worse", registered)["estimated-f1"].verdict == "Failed"
    # Models only the spoofer claims, or claims with a calibration the monitor does not have, stay without data.
    for model in ("absent", "uncalibrated"):
        for r in measure(url, model, registered).values():
            assert r.verdict == "Inconclusive" and r.value is None, (model, r.message)


def test_a_job_nothing_scrapes_is_inconclusive_never_a_pass(world: tuple[str, QualityMetrics, dict[str, float]]) -> None:
    """A misconfigured KANARI_MONITOR_JOB reads no series: the good canary is not passed on missing data."""
    url, _, registered = world
    for r in measure(url, "good", registered, ScrapeJobs(monitor="kanari-drift-monitor-typo")).values():
        assert r.verdict == "Inconclusive" and r.value is None, r.message


# The variables are the only way the registered figure reaches PromQL: any finite figure round-trips exactly, and
# a canary without one (or without a canary) gets no query at all, never one with a made-up number.
@settings(max_examples=60, deadline=None)
@given(f1=st.one_of(st.none(), st.floats(-2, 2)), auc=st.one_of(st.none(), st.floats(-2, 2)),
       version=st.sampled_from(["", "8", "fraud/8", 'v8"} or vector(0) or x{a="']), canary=st.booleans())
def test_the_registered_figure_reaches_the_query_exactly_or_not_at_all(
    f1: float | None, auc: float | None, version: str, canary: bool,
) -> None:
    metrics = {k: v for k, v in (("f1", f1), ("roc_auc", auc)) if v is not None}
    st_ = ModelDeploymentStatus(stableModel=ModelRef(revision="rev-7", registeredMetrics={"f1": 0.5}),
                                canaryModel=ModelRef(revision="rev-8", version=version, registeredMetrics=metrics)
                                if canary else None)
    variables = analysis.variables(NS, "fraud", SPEC, st_, jobs=ScrapeJobs())
    for metric, key, figure in ((METRICS[0], "f1", f1), (METRICS[1], "roc_auc", auc)):
        spec_metric = next(m for m in SPEC.rollout.analysis.metrics if m.name == metric["name"])  # type: ignore[union-attr]
        if not canary or figure is None or not 0 <= figure <= 1:  # out of range: not a registered proportion
            with pytest.raises(TemplateError):
                metric_query(SPEC, spec_metric, variables)
            continue
        promql = metric_query(SPEC, spec_metric, variables).promql
        value_part = promql.split(" or ")[0]
        assert float(value_part.split("label_replace(", 1)[1].split(" - ", 1)[0]) == figure
        assert f'revision="{label_value(version or "rev-8")}"' in promql and f'metric="{key}"' in promql
        assert "or vector(0)" not in promql.replace('\\"} or vector(0)', ""), "a version cannot inject PromQL"
        assert set(builtin_parts(SPEC, spec_metric)) == {"value", "samples"}



def test_the_readme_example_is_a_valid_cbpe_gate() -> None:
    """The README's "CBPE as a canary gate" block, parsed as a rollout's analysis, builds the templates' queries."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**CBPE as a canary gate**"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):section.index("```\n", section.index("```yaml\n") + 8)]
    doc = yaml.safe_load(block)
    spec = parse_spec({**SPEC.model_dump(mode="json", exclude_none=True),
                       "rollout": {"steps": [{"setWeight": 20}, {"analysis": {}}], **doc}})
    assert spec.rollout.analysis is not None
    variables = analysis.variables(NS, "fraud", spec, status({"f1": 0.57, "roc_auc": 0.85}), jobs=ScrapeJobs())
    queries = [metric_query(spec, m, variables).promql for m in spec.rollout.analysis.metrics]
    assert [m.template for m in spec.rollout.analysis.metrics] == ["estimated-f1-drop", "estimated-roc-auc-drop"]
    assert "0.57 - max(kanari_estimated_quality" in queries[0] and "0.85 - max(" in queries[1]
