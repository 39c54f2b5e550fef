"""Autoscaling on NeuronCore utilisation renders KServe's own autoScaling (External Prometheus metric, KEDA),
valid against the upstream InferenceService CRD; Serverless is refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from kanari.api.v1alpha1 import SpecError, parse_spec
from kanari.controller.config import OperatorConfig
from kanari.controller.reconcile import ClusterObservation, reconcile

from tests.controller.test_reconcile import T0, body, cond
from tests.support.schemas import validate_custom

CONFIG = OperatorConfig(prometheus_url="http://prometheus-operated.monitoring:9090")


def spec(**serving: Any) -> dict[str, Any]:
    return {"model": {"storageUri": "s3://models/llm/v1"},
            "serving": {"neuronCores": 2, "deploymentMode": "RawDeployment", "minReplicas": 1, "maxReplicas": 8,
                        "autoscaling": {"neuronCoreUtilization": 0.7}, **serving}}


def test_renders_an_external_prometheus_metric_on_the_revision_neuroncores() -> None:
    d = reconcile(body(spec()), ClusterObservation(now=T0), CONFIG)
    assert d.isvc is not None
    validate_custom(d.isvc)
    assert d.isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    pred = d.isvc["spec"]["predictor"]
    revision = pred["labels"]["kanari.dev/revision"]
    (metric,) = pred["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "backend": "prometheus", "serverAddress": "http://prometheus-operated.monitoring:9090",
        "query": f'sum(neuroncore_utilization_ratio{{runtime_tag="ml.fraud.{revision}"}}) / 2'}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "700m"}
    assert (pred["minReplicas"], pred["maxReplicas"]) == (1, 8)


def test_the_spec_can_name_its_own_prometheus_and_without_one_it_is_invalid() -> None:
    own = spec(autoscaling={"neuronCoreUtilization": 0.5, "prometheusUrl": "https://aps.example/ws"})
    d = reconcile(body(own), ClusterObservation(now=T0), CONFIG)
    assert d.isvc is not None
    assert d.isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["metric"]["serverAddress"] == \
        "https://aps.example/ws"
    d = reconcile(body(spec()), ClusterObservation(now=T0), OperatorConfig())
    assert cond(d.status, "InvalidSpec")["message"].startswith("spec.serving.autoscaling.prometheusUrl:")


@pytest.mark.parametrize(("serving", "field"), [
    ({"deploymentMode": "Serverless"}, "spec.serving.autoscaling"),
    ({"autoscaling": {"neuronCoreUtilization": 1.5}}, "spec.serving.autoscaling.neuronCoreUtilization"),
    ({"autoscaling": {"neuronCoreUtilization": 0.7, "prometheusUrl": "prometheus:9090"}},
     "spec.serving.autoscaling.prometheusUrl"),
])
def test_bad_autoscaling_names_the_field(serving: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec(**serving))
    assert err.value.field == field


def test_changing_the_autoscaling_target_is_not_a_new_rollout() -> None:
    a = parse_spec(spec())
    b = parse_spec(spec(autoscaling={"neuronCoreUtilization": 0.5}))
    assert a.rollout_revision() == b.rollout_revision()
