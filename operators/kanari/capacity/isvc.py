"""Size the InferenceService's predictors by the rollout's capacity plan (status.capacity).

RawDeployment: the canary predictor runs exactly the planned replicas (it follows the canary weight, as
Argo Rollouts' setCanaryScale does), and with capacityPolicy Replace the stable predictor runs exactly the
replicas the plan leaves it. A plan that admits no canary pod yet keeps the canary out of the
InferenceService altogether, so no pod is created that could only sit Pending on a full cluster.
"""

from __future__ import annotations

import copy
from typing import Any

from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus
from kanari.capacity.cost import NEURONCORE_SERIES, PROCESS_TAG_ENV, runtime_tag
from kanari.capacity.spec import replica_cores

REVISION_LABEL = "kanari.dev/revision"  # the predictor label kanari.controller.inferenceservice sets


def _plan(status: ModelDeploymentStatus) -> Any:
    cap = status.capacity
    if cap is None or status.canaryModel is None or cap.revision != status.canaryModel.revision:
        return None  # no rollout, or a plan made for another revision: nothing to size
    return cap


def hold_canary(status: ModelDeploymentStatus) -> bool:
    """True while no canary pod has room yet: the InferenceService is built without the canary."""
    cap = _plan(status)
    return cap is not None and cap.canaryReplicas == 0


def size(isvc: dict[str, Any] | None, spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> dict[str, Any] | None:
    cap = _plan(status)
    if isvc is None or cap is None or spec.serving.deploymentMode != "RawDeployment":
        return isvc
    out = copy.deepcopy(isvc)
    for canary in out["spec"].get("canary") or []:
        pred = canary.get("predictor") or {}
        pred["minReplicas"] = pred["maxReplicas"] = max(1, cap.canaryReplicas)
    if cap.stableReplicas is not None and spec.serving.capacityPolicy == "Replace" and out["spec"].get("canary"):
        pred = out["spec"]["predictor"]
        pred["minReplicas"] = pred["maxReplicas"] = max(1, cap.stableReplicas)
    return out


AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"


def utilisation_query(tag: str, cores_per_replica: int) -> str:
    """Replicas' worth of busy NeuronCores: KEDA divides it by the target to get the replicas wanted."""
    return f'sum({NEURONCORE_SERIES}{{runtime_tag="{tag}"}}) / {cores_per_replica}'


def autoscale(isvc: dict[str, Any] | None, spec: ModelDeploymentSpec, default_prometheus: str | None) -> dict[str, Any] | None:
    """KServe's `autoScaling` (External Prometheus metric on NeuronCore utilisation) on each predictor."""
    auto = spec.serving.autoscaling
    if isvc is None or auto is None:
        return isvc
    url = auto.prometheusUrl or default_prometheus
    if not url:
        from kanari.api.v1alpha1 import SpecError

        raise SpecError("spec.serving.autoscaling.prometheusUrl", "not set, and the operator has no Prometheus URL")
    out = copy.deepcopy(isvc)
    meta = out["metadata"]
    meta.setdefault("annotations", {})[AUTOSCALER_CLASS] = "keda"
    cores = replica_cores(spec.serving)
    target = f"{round(auto.neuronCoreUtilization * 1000)}m"
    preds = [out["spec"]["predictor"], *(c.get("predictor") or {} for c in out["spec"].get("canary") or [])]
    for pred in preds:
        revision = (pred.get("labels") or {}).get(REVISION_LABEL)
        if not revision:
            continue
        tag = runtime_tag(meta["namespace"], meta["name"], revision)
        pred["autoScaling"] = {"metrics": [{
            "type": "External",
            "external": {
                "metric": {"backend": "prometheus", "serverAddress": url, "query": utilisation_query(tag, cores)},
                "target": {"type": "AverageValue", "averageValue": target},
            },
        }]}
    return out


def tag_neuron_runtimes(isvc: dict[str, Any] | None, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """NEURON_PROCESS_TAG on each Neuron predictor: neuron-monitor labels the cores it holds `runtime_tag`,
    which is how cost per 1,000 inferences finds a revision's NeuronCores (kanari.capacity.cost)."""
    if isvc is None or spec.serving.accelerator != "inferentia2":
        return isvc
    out = copy.deepcopy(isvc)
    meta = out["metadata"]
    preds = [out["spec"]["predictor"], *(c.get("predictor") or {} for c in out["spec"].get("canary") or [])]
    for pred in preds:
        revision = (pred.get("labels") or {}).get(REVISION_LABEL)
        model = pred.get("model")
        if not revision or not isinstance(model, dict):
            continue
        env = [e for e in model.get("env") or [] if e.get("name") != PROCESS_TAG_ENV]
        env.append({"name": PROCESS_TAG_ENV, "value": runtime_tag(meta["namespace"], meta["name"], revision)})
        model["env"] = env
    return out
