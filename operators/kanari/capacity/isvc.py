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
