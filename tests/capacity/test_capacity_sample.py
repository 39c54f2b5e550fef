"""The Accelerators sample (manifests/samples/llm-inf2-raw-capacity.yaml) through the controller's own reconcile:
a valid InferenceService (upstream CRD) with KEDA autoscaling on NeuronCore utilisation and runtime tags; and
its rollout, on a cluster with one spare inf2.xlarge, finishes under Replace without ever serving the stable
share with fewer replicas than capacityFloor allows."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from kanari.api.v1alpha1 import MetricResult, ModelDeploymentStatus, parse_model_deployment
from kanari.controller.config import OperatorConfig
from kanari.controller.reconcile import ClusterObservation, reconcile

from tests.capacity.test_capacity_rollout import Cluster
from tests.controller.test_reconcile import T0, ready
from tests.support.schemas import validate_custom

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "llm-inf2-raw-capacity.yaml"
CONFIG = OperatorConfig(prometheus_url="http://prometheus-operated.monitoring:9090")


def load() -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    validate_custom(obj)
    parse_model_deployment(obj)
    return obj


def test_sample_renders_a_valid_autoscaled_neuron_inferenceservice() -> None:
    obj = load()
    d = reconcile({**obj, "metadata": {**obj["metadata"], "uid": "u1", "generation": 1}, "status": {}},
                  ClusterObservation(now=T0), CONFIG)
    assert d.isvc is not None
    validate_custom(d.isvc)
    pred = d.isvc["spec"]["predictor"]
    assert pred["autoScaling"]["metrics"][0]["external"]["target"]["averageValue"] == "700m"
    assert pred["model"]["env"][0]["name"] == "NEURON_PROCESS_TAG"
    assert pred["model"]["resources"]["requests"]["aws.amazon.com/neuroncore"] == 2


def test_sample_rollout_replaces_within_one_spare_node() -> None:
    obj = load()
    md = {**obj, "metadata": {**obj["metadata"], "uid": "u1", "generation": 1}, "status": {}}
    d = reconcile(md, ClusterObservation(now=T0), CONFIG)
    assert d.isvc is not None
    live = ready(d.isvc)
    status = reconcile({**md, "status": d.status.model_dump(mode="json")}, ClusterObservation(now=T0, isvc=live),
                       CONFIG).status
    assert status.phase == "Succeeded"

    v2 = copy.deepcopy(md)
    v2["spec"]["model"]["storageUri"] = v2["spec"]["model"]["storageUri"].replace("2024-07-01", "2024-08-01")
    v2["spec"]["model"]["version"] = "2024-08-01"
    v2["metadata"]["generation"] = 2
    cluster = Cluster(limit=10, nodes=5, stable=4)  # one inf2.xlarge to spare: Surge could never start
    spec = parse_model_deployment(v2).spec
    now = T0
    for _ in range(400):
        due = status.canaryModel is not None and status.phase in ("Progressing", "Paused")
        measurement = [MetricResult(name=m.name, value=0.0, verdict="Successful", sampleCount=1000)
                       for m in spec.rollout.analysis.metrics] if due and spec.rollout.analysis else None
        d = reconcile({**v2, "status": status.model_dump(mode="json")},
                      ClusterObservation(now=now, isvc=live, measurement=measurement, capacity=cluster.view()),
                      CONFIG)
        status = ModelDeploymentStatus.model_validate(d.status.model_dump(mode="json"))
        cluster.converge(status, spec)
        if status.canaryModel is not None:
            assert len(cluster.stable) * 100 >= 3 * (100 - status.canaryWeight), "below capacityFloor"
        if d.isvc is not None:
            live = ready(d.isvc)  # KServe brings what was applied up, and reports each canary's readiness
            live["status"]["canaryStatuses"] = [{"ready": True} for _ in d.isvc["spec"].get("canary") or []]
        if d.isvc is not None and d.isvc["spec"].get("canary"):
            validate_custom(d.isvc)
            canary = d.isvc["spec"]["canary"][0]["predictor"]
            assert status.capacity is not None and canary["minReplicas"] == status.capacity.canaryReplicas
        if status.phase == "Succeeded" and status.stableModel and status.stableModel.version == "2024-08-01":
            break
        now += timedelta(minutes=1)
    assert status.phase == "Succeeded" and status.stableModel is not None, status.message
    assert status.stableModel.version == "2024-08-01" and len(cluster.nodes) == 5
