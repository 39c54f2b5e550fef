"""The warm-up sample (manifests/samples/summarizer-inf2-serverless-warmup.yaml) through the controller's own
reconcile: the canary's InferenceService template goes in at 0% and stays there until the warm-up gate has seen
its revision answer; then it takes its first step's weight (KServe's CRD accepts each InferenceService)."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from kanari.api.v1alpha1 import WarmupSpec, parse_model_deployment
from kanari.controller.config import OperatorConfig
from kanari.controller.reconcile import ClusterObservation, reconcile
from kanari.rollout.warmup import PodObservation, WarmupObservation

from tests.controller.test_reconcile import T0, ready
from tests.support.schemas import validate_custom

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "summarizer-inf2-serverless-warmup.yaml"
CONFIG = OperatorConfig()


def test_sample_holds_the_canary_at_zero_until_warm() -> None:
    obj: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    validate_custom(obj)
    md = parse_model_deployment(obj)
    assert isinstance(md.spec.rollout.warmup, WarmupSpec) and md.spec.rollout.warmup.budgetSeconds == 1200
    assert "cold-start-seconds" in {m.template for m in md.spec.rollout.analysis.metrics}
    body = {**obj, "metadata": {**obj["metadata"], "uid": "u1", "generation": 1}, "status": {}}
    d = reconcile(body, ClusterObservation(now=T0), CONFIG)
    live = ready(d.isvc)
    d = reconcile({**body, "status": d.status.model_dump(mode="json")}, ClusterObservation(now=T0, isvc=live), CONFIG)
    assert d.status.phase == "Succeeded"

    v2 = copy.deepcopy(body)
    v2["spec"]["model"]["storageUri"] = v2["spec"]["model"]["storageUri"].replace("2024-09-01", "2024-10-01")
    v2["spec"]["model"]["version"] = "2024-10-01"
    v2["metadata"]["generation"] = 2
    status = d.status.model_dump(mode="json")
    now = T0 + timedelta(minutes=1)
    d = reconcile({**v2, "status": status}, ClusterObservation(now=now, isvc=live), CONFIG)
    validate_custom(d.isvc)
    assert d.isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert [p.reason for p in d.status.pauseConditions] == ["WarmingUp"] and d.status.phase == "Paused"
    revision = d.status.canaryModel.revision
    live = ready(d.isvc)  # KServe has the canary's revision up (its pods are still warming)
    live["status"]["components"]["predictor"] = {
        "latestCreatedRevision": "summarizer-predictor-00002", "latestReadyRevision": "summarizer-predictor-00002",
        "latestRolledoutRevision": "summarizer-predictor-00001",
        "traffic": [{"revisionName": "summarizer-predictor-00001", "percent": 100, "tag": "prev"},
                    {"revisionName": "summarizer-predictor-00002", "percent": 0, "tag": "latest",
                     "url": "http://latest-summarizer-predictor.ml-llm.example.com"}]}
    # The tag route answers 2 of 3 requests: still 0%.
    for answered, weight in ((2, 0), (3, 20)):
        now += timedelta(seconds=30)
        warm = WarmupObservation(revision=revision, serving_revision="summarizer-predictor-00002", pods=(
            PodObservation(name="summarizer-predictor-00002", scheduled_at=T0 + timedelta(minutes=1),
                           answered=answered, first_success_at=now - timedelta(seconds=5), latency_seconds=2.5),))
        d = reconcile({**v2, "status": d.status.model_dump(mode="json")},
                      ClusterObservation(now=now, isvc=live, warmup=warm), CONFIG)
        validate_custom(d.isvc)
        assert d.isvc["spec"]["predictor"]["canaryTrafficPercent"] == weight, d.status.message
    w = d.status.warmup
    assert w.succeededAt and w.coldStartSeconds == 25.0  # the first successful answer, seen on the first look and w.servingRevision == "summarizer-predictor-00002"
