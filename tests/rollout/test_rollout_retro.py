"""The retro-verdict wired into the engine, against a real Prometheus scraping the drift monitor's ground-truth
gauges: a promoted version whose realised recall drops is rolled back to the previous stable version inside
spec.rollout.rollbackWindow; not with too few labels, not outside the window. The figure it is judged against is
the one recorded with the version (status.stableModel.registeredMetrics), never the registry's current one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, ModelRef, parse_spec
from kanari.controller.model_source import PackageInfo, model_ref
from kanari.monitor.groundtruth import GroundTruth, GroundTruthConfig
from kanari.rollout.engine import RealisedQuality, RolloutDecision, RolloutObservation, decide, retro_due
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig
from kanari.rollout.quality import observe_realised
from kanari.scrape import DEFAULT_MONITOR_JOB, ScrapeJobs
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from devstack.stack import ScrapeTarget, free_port, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]

NS, NAME = "ml-prod", "fraud"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/{}"
WINDOW = {"duration": "2h", "metric": "recall", "tolerance": 0.05, "minLabels": 50, "interval": "1m"}


def spec_for(version: str) -> ModelDeploymentSpec:
    return parse_spec({
        "model": {"modelPackageArn": ARN.format(version), "format": "sklearn"},
        "serving": {"accelerator": "cpu"},
        "rollout": {"strategy": "AllAtOnce", "rollbackWindow": WINDOW},
    })


def package(version: str, recall: str | None) -> PackageInfo:
    meta = {"kanari:metric.recall": recall} if recall is not None else {}
    return PackageInfo(ARN.format(version), f"s3://models/fraud/{version}/", None, "Approved", meta)


def ref(spec: ModelDeploymentSpec, version: str, recall: str | None = "0.900000") -> ModelRef:
    """The version as the controller resolves it from its package (with what the package registers now), named by
    the `revision` label the monitor's gauges carry here."""
    return model_ref(spec, package(version, recall)).model_copy(update={"version": version})


def promoted(now: datetime, recall: str | None = "0.900000") -> tuple[ModelDeploymentStatus, ModelRef]:
    """v1 serving, then v2 (its package registering `recall`) rolled out and promoted at `now` (AllAtOnce: one
    step)."""
    v1, v2 = spec_for("1"), spec_for("2")
    st = decide(v1, ModelDeploymentStatus(), RolloutObservation(now=now, desired=ref(v1, "1"), stable_ready=True,
                                                                canary_ready=False), 1).status
    st = decide(v2, st, RolloutObservation(now=now, desired=ref(v2, "2", recall), stable_ready=True,
                                           canary_ready=True), 2).status
    assert st.stableModel is not None and st.stableModel.version == "2" and st.retro is not None
    assert st.retro.previousStable is not None and st.retro.previousStable.version == "1"
    return st, ref(v1, "1")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, GroundTruth]]:
    registry = CollectorRegistry()
    truth = GroundTruth(registry, max_pending=100_000, window_size=1000, min_samples=20)
    # Another target (a tenant's model container) claiming version 2 of "fraud" has a near-perfect realised recall
    # over many labels, under the monitor's names and labels: it must not keep a bad promotion in place.
    spoof = CollectorRegistry()
    labels = ["namespace", "model", "revision", "metric"]
    Gauge("kanari_realised_quality", "spoof", labels, registry=spoof).labels(NS, "fraud", "2", "recall").set(0.99)
    Gauge("kanari_realised_quality_denominator", "spoof", labels, registry=spoof).labels(
        NS, "fraud", "2", "recall").set(100_000)
    port, spoof_port = free_port(), free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    spoofer, _ = start_http_server(spoof_port, addr="127.0.0.1", registry=spoof)
    prom = start_prometheus(tmp_path_factory.mktemp("prom"), targets=[
        ScrapeTarget(DEFAULT_MONITOR_JOB, [f"127.0.0.1:{port}"]), ScrapeTarget("tenant-model", [f"127.0.0.1:{spoof_port}"])])
    deadline = time.monotonic() + 30
    while not httpx.get(f"{prom.url}/api/v1/query", params={"query": "count(up == 1) == 2"}).json()["data"]["result"]:
        assert time.monotonic() < deadline, "Prometheus never scraped the monitor's gauges and the spoofer's"
        time.sleep(0.2)
    yield prom.url, truth
    prom.stop()
    server.shutdown()
    spoofer.shutdown()


def label(truth: GroundTruth, model: str, revision: str, positives: int, caught: int, negatives: int = 30) -> None:
    """Served predictions with their delayed labels: `caught` of `positives` positives scored >= 0.5."""
    config = GroundTruthConfig("binary", 0.5, 86400.0)
    pairs = []
    for i in range(positives):
        data = {"predictions": [0.9 if i < caught else 0.2]}
        truth.predictions(NS, model, revision, f"{model}-p{i}", data, config, None, 10)
        pairs.append((f"{model}-p{i}", 1.0))
    for i in range(negatives):
        truth.predictions(NS, model, revision, f"{model}-n{i}", {"predictions": [0.1]}, config, None, 10)
        pairs.append((f"{model}-n{i}", 0.0))
    truth.labels(NS, model, config, pairs)


def scraped(url: str, model: str) -> None:
    q = f'kanari_realised_quality_denominator{{job="{DEFAULT_MONITOR_JOB}", model="{model}", metric="recall"}}'
    deadline = time.monotonic() + 20
    while not httpx.get(f"{url}/api/v1/query", params={"query": q}).json()["data"]["result"]:
        assert time.monotonic() < deadline, f"Prometheus never scraped {model}'s realised quality"
        time.sleep(0.2)


def check(url: str, model: str, status: ModelDeploymentStatus, registered: str | None,
          now: datetime) -> tuple[RolloutDecision, RealisedQuality | None]:
    """One reconcile's read and decision, the v2 package now registering `registered`."""
    spec = spec_for("2")

    async def read() -> RealisedQuality | None:
        prom = PrometheusClient(PrometheusConfig(url=url))
        try:
            return await observe_realised(prom, NS, model, spec, status, datetime.now(UTC), ScrapeJobs())
        finally:
            await prom.close()

    realised = asyncio.run(read())
    obs = RolloutObservation(now=now, desired=ref(spec, "2", registered), stable_ready=True, canary_ready=False,
                             realised=realised)
    decision = decide(spec, status, obs, 2)
    again = decide(spec, ModelDeploymentStatus.model_validate(decision.status.model_dump(mode="json")), obs, 2)
    assert again.status == decision.status and again.events == [], "the retro-verdict is not idempotent"
    return decision, realised


def test_a_promoted_version_whose_realised_recall_drops_is_rolled_back(world: tuple[str, GroundTruth]) -> None:
    url, truth = world
    label(truth, "fraud", "2", positives=200, caught=120)  # realised recall 0.60 vs registered 0.90
    scraped(url, "fraud")
    now = datetime.now(UTC)
    status, v1 = promoted(now - timedelta(minutes=30))
    decision, realised = check(url, "fraud", status, "0.900000", now)
    assert realised is not None and realised.value == pytest.approx(0.6) and realised.denominator == 200
    reasons = [e.reason for e in decision.events]
    assert "RealisedQualityDrop" in reasons and "RolledBack" in reasons
    drop = next(e for e in decision.events if e.reason == "RealisedQualityDrop")
    assert "realised recall 0.6000 over 200 labels" in drop.message and "registered 0.9000" in drop.message
    out = decision.status
    assert out.phase == "RolledBack" and out.stableModel == v1 and decision.stable == v1
    assert out.abortedRevision == spec_for("2").rollout_revision()
    # The next pass: the rolled-back version stays rolled back while the spec still names it.
    nxt = decide(spec_for("2"), out, RolloutObservation(now=now + timedelta(minutes=1), desired=ref(spec_for("2"), "2"),
                                                        stable_ready=True, canary_ready=False), 2)
    assert nxt.stable == v1 and nxt.status.phase == "RolledBack" and nxt.canary is None


def test_not_rolled_back_with_too_few_labels(world: tuple[str, GroundTruth]) -> None:
    url, truth = world
    label(truth, "fraud-few", "2", positives=20, caught=6)  # recall 0.30, but over 20 labelled positives only
    scraped(url, "fraud-few")
    now = datetime.now(UTC)
    status, _ = promoted(now - timedelta(minutes=30))
    decision, realised = check(url, "fraud-few", status, "0.900000", now)
    assert realised is not None and realised.denominator == 20
    assert decision.status.stableModel == status.stableModel and decision.status.phase == "Succeeded"
    cond = next(c for c in decision.status.conditions if c.type == "RealisedQualityPassing")
    assert cond.status == "Unknown" and cond.reason == "TooFewLabels"
    assert decision.requeue_after is not None and decision.requeue_after <= 60


def test_within_tolerance_and_without_registered_metric_nothing_happens(world: tuple[str, GroundTruth]) -> None:
    url, truth = world
    label(truth, "fraud-ok", "2", positives=300, caught=264)  # 0.88 vs 0.90 - 0.05
    scraped(url, "fraud-ok")
    now = datetime.now(UTC)
    status, _ = promoted(now - timedelta(minutes=30))
    decision, _ = check(url, "fraud-ok", status, "0.900000", now)
    assert decision.status.stableModel == status.stableModel
    assert next(c for c in decision.status.conditions if c.type == "RealisedQualityPassing").status == "True"
    # A package without kanari:metric.recall (or with one that is no proportion): never a made-up floor.
    for registered in (None, "1.7"):
        bare, _ = promoted(now - timedelta(minutes=30), recall=registered)
        decision, realised = check(url, "fraud", bare, registered, now)  # realised recall 0.60 over 200 labels
        assert realised is not None and realised.value == pytest.approx(0.6)
        assert decision.status.stableModel == bare.stableModel and decision.status.phase == "Succeeded"
        cond = next(c for c in decision.status.conditions if c.type == "RealisedQualityPassing")
        assert (cond.status, cond.reason) == ("Unknown", "NoRegisteredMetric")
        assert "registeredMetrics has no recall" in cond.message


def test_the_figure_recorded_at_promotion_is_judged_not_the_registrys_current_one(
        world: tuple[str, GroundTruth]) -> None:
    """Regression: the retro-verdict read the registry's current kanari:metric.recall, so lowering it after the
    promotion (0.90 -> 0.50) moved the floor under the version and a realised 0.60 was let stand. The version is
    judged by the figure it was promoted with, as the quality alert and the analysis templates are."""
    url, truth = world
    label(truth, "fraud-edit", "2", positives=200, caught=120)  # realised recall 0.60 vs registered 0.90
    scraped(url, "fraud-edit")
    now = datetime.now(UTC)
    status, v1 = promoted(now - timedelta(minutes=30), recall="0.900000")
    for edited in ("0.500000", None):  # lowered, or removed from the registry entry
        decision, _ = check(url, "fraud-edit", status, edited, now)
        assert "RealisedQualityDrop" in [e.reason for e in decision.events]
        assert decision.status.stableModel == v1 and decision.status.phase == "RolledBack"


def test_a_version_recorded_without_its_figure_is_filled_then_judged_in_the_same_reconcile(
        world: tuple[str, GroundTruth]) -> None:
    """A promoted version recorded by a controller that did not keep registered metrics: the reconcile that reads
    its realised quality fills the figure from its own package first (Event RegistryFactsFilled) and judges it in
    that same pass; never 'no registered figure' forever."""
    url, truth = world
    label(truth, "fraud-legacy", "2", positives=200, caught=120)
    scraped(url, "fraud-legacy")
    now = datetime.now(UTC)
    status, v1 = promoted(now - timedelta(minutes=30))
    assert status.stableModel is not None
    legacy = status.model_copy(update={"stableModel": status.stableModel.model_copy(update={"registeredMetrics": {}})})
    decision, _ = check(url, "fraud-legacy", legacy, "0.900000", now)
    reasons = [e.reason for e in decision.events]
    assert reasons.index("RegistryFactsFilled") < reasons.index("RealisedQualityDrop"), reasons
    assert decision.status.stableModel == v1 and decision.status.phase == "RolledBack"


def test_outside_the_window_nothing_is_read_or_decided(world: tuple[str, GroundTruth]) -> None:
    url, _ = world
    now = datetime.now(UTC)
    status, _ = promoted(now - timedelta(hours=3))
    assert not retro_due(spec_for("2"), status, now)
    decision, realised = check(url, "fraud", status, "0.900000", now)
    assert realised is None and decision.status.stableModel == status.stableModel
    assert decision.events == [] and decision.requeue_after is None


def test_an_unreachable_prometheus_decides_nothing() -> None:
    status, _ = promoted(datetime.now(UTC) - timedelta(minutes=5))
    decision, realised = check(f"http://127.0.0.1:{free_port()}", "fraud", status, "0.900000", datetime.now(UTC))
    assert realised is not None and realised.error is not None
    assert decision.status.stableModel == status.stableModel
    cond: Any = next(c for c in decision.status.conditions if c.type == "RealisedQualityPassing")
    assert cond.status == "Unknown" and cond.reason == "RealisedQualityUnavailable"
