"""The KServe InferenceService (serving.kserve.io/v1beta1) a ModelDeployment becomes.

Traffic is set through KServe itself: `canaryTrafficPercent` in Serverless mode (the stable part is the
last rolled-out Knative revision), `spec.canary[]` in RawDeployment mode (the stable part is the predictor).
"""

from __future__ import annotations

from typing import Any

from kanari.api.v1alpha1 import API_VERSION, KIND, ModelDeployment, ModelRef
from kanari.controller.config import OperatorConfig
from kanari.controller.serving_runtime import RuntimeChoice

ISVC_API_VERSION = "serving.kserve.io/v1beta1"
ISVC_KIND = "InferenceService"
NEURON_TAINT = "aws.amazon.com/neuron"
MANAGED_BY = "kanari"
# InferenceService annotations KServe's payload logger forwards to the drift monitor with each event.
BASELINE_ANNOTATION = "kanari.dev/baseline-uri"
VERSION_ANNOTATION = "kanari.dev/model-version"
REVISION_ANNOTATION = "kanari.dev/revision"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": md.metadata.name,
        "uid": md.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(md: ModelDeployment) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": md.metadata.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "kanari.dev/model-deployment": md.metadata.name,
    }


def _resources(md: ModelDeployment) -> dict[str, Any]:
    s = md.spec.serving
    requests: dict[str, Any] = {"cpu": s.cpu, "memory": s.memory}
    limits: dict[str, Any] = {"memory": s.memory}
    if s.accelerator == "inferentia2":
        # Neuron cores are the unit the Neuron device plugin schedules by; default to one core.
        if s.neuronDevices:
            requests["aws.amazon.com/neuron"] = limits["aws.amazon.com/neuron"] = s.neuronDevices
        else:
            cores = s.neuronCores or 1
            requests["aws.amazon.com/neuroncore"] = limits["aws.amazon.com/neuroncore"] = cores
    elif s.accelerator == "gpu":
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = s.gpus or 1
    return {"requests": requests, "limits": limits}


def predictor(
    md: ModelDeployment,
    model: ModelRef,
    runtime: RuntimeChoice,
    config: OperatorConfig,
    baseline_uri: str | None,
) -> dict[str, Any]:
    s = md.spec.serving
    model_spec: dict[str, Any] = {
        # KServe's container name; spec.canary[].predictor.model requires it to be explicit.
        "name": "kserve-container",
        "modelFormat": {"name": runtime.model_format},
        "runtime": runtime.runtime,
        "storageUri": model.storageUri,
        "resources": _resources(md),
    }
    if model.image:
        model_spec["image"] = model.image
    pred: dict[str, Any] = {
        "minReplicas": s.minReplicas,
        "maxReplicas": s.maxReplicas,
        # RawDeployment analysis tells canary from stable pods by this label (Knative names revisions itself).
        "labels": {
            REVISION_ANNOTATION: model.revision,
            "app.kubernetes.io/managed-by": MANAGED_BY,
        },
        "model": model_spec,
    }
    node_selector = dict(s.nodeSelector)
    if s.accelerator == "inferentia2":
        if s.instanceType:
            node_selector["node.kubernetes.io/instance-type"] = s.instanceType
        else:
            node_selector[config.inf2_selector_key] = "inf2"
        pred["tolerations"] = [{"key": NEURON_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    elif s.accelerator == "gpu":
        if s.instanceType:
            node_selector["node.kubernetes.io/instance-type"] = s.instanceType
        pred["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    elif s.instanceType:
        node_selector["node.kubernetes.io/instance-type"] = s.instanceType
    if node_selector:
        pred["nodeSelector"] = node_selector
    if s.schedulerName:
        pred["schedulerName"] = s.schedulerName
    if s.serviceAccountName:
        pred["serviceAccountName"] = s.serviceAccountName
    mon = md.spec.monitoring
    logger_url = (mon.loggerUrl or config.drift_monitor_url) if mon and mon.enabled else None
    if mon and mon.enabled and logger_url:
        logger: dict[str, Any] = {"mode": mon.logMode, "url": logger_url}
        logger["metadataAnnotations"] = [VERSION_ANNOTATION, REVISION_ANNOTATION]
        if baseline_uri:
            logger["metadataAnnotations"].insert(0, BASELINE_ANNOTATION)
        pred["logger"] = logger
    return pred


def build(
    md: ModelDeployment,
    *,
    stable: ModelRef | None,
    canary: ModelRef | None,
    canary_weight: int,
    runtime: RuntimeChoice,
    config: OperatorConfig,
    current: dict[str, Any] | None = None,
    baseline_uris: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The desired InferenceService, or None when there is nothing to serve yet.

    `current` is the InferenceService as it stands (Serverless needs it, see `_pin`).
    """
    baseline_uris = baseline_uris or {}
    mode = md.spec.serving.deploymentMode
    if mode != "RawDeployment" and canary is not None and stable is not None and not _rolled_out(current):
        # Serverless: KServe splits canaryTrafficPercent only against a last rolled-out revision. An
        # InferenceService without one (deleted and re-created mid-rollout, or not yet observed) would send
        # the canary template all traffic; so the stable template is written first and the canary after it.
        canary = None
    serving_model = canary or stable
    if serving_model is None:
        return None
    annotations = {
        "serving.kserve.io/deploymentMode": mode,
        VERSION_ANNOTATION: serving_model.version,
        REVISION_ANNOTATION: serving_model.revision,
    }
    baseline = baseline_uris.get(serving_model.revision)
    if baseline:
        annotations[BASELINE_ANNOTATION] = baseline
    spec: dict[str, Any]
    if mode == "RawDeployment":
        base = stable or canary
        assert base is not None
        spec = {"predictor": predictor(md, base, runtime, config, baseline_uris.get(base.revision))}
        if canary is not None and stable is not None and canary.revision != stable.revision:
            spec["canary"] = [
                {
                    "trafficPercent": int(canary_weight),
                    "predictor": predictor(md, canary, runtime, config, baseline_uris.get(canary.revision)),
                }
            ]
    else:
        # Tag routing gives the canary (a BlueGreen preview at 0% included) its own URL, latest-<name>-...
        annotations[TAG_ROUTING_ANNOTATION] = "true"
        spec = {"predictor": predictor(md, serving_model, runtime, config, baseline)}
        if canary is not None and stable is not None and canary.revision != stable.revision:
            spec["predictor"]["canaryTrafficPercent"] = int(canary_weight)
        else:
            pinned = _pin(current, serving_model)
            if pinned is not None:
                spec["predictor"]["canaryTrafficPercent"] = pinned
    return {
        "apiVersion": ISVC_API_VERSION,
        "kind": ISVC_KIND,
        "metadata": {
            "name": md.metadata.name,
            "namespace": md.metadata.namespace,
            "labels": labels(md),
            "annotations": annotations,
            "ownerReferences": [owner_reference(md)],
        },
        "spec": spec,
    }


def _pin(current: dict[str, Any] | None, stable: ModelRef) -> int | None:
    """Serverless, no canary: the canaryTrafficPercent to keep on the stable template, or None for none.

    Without canaryTrafficPercent Knative routes all traffic to the latest *ready* revision. After a rollback
    (or a superseded canary) that is the other model's revision until the stable template written now has a
    Ready revision of its own: so the stable template goes in pinned at 0% (KServe keeps the last rolled-out
    revision, the stable one, at 100%), and the pin is dropped once its own revision is Ready. Scaling edits
    reach the template either way; the other model's revision, no longer routed, is scaled away by Knative.
    """
    if not current:
        return None
    pred = (current.get("spec") or {}).get("predictor") or {}
    carries = ((current.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    if carries != stable.revision:
        return 0
    if "canaryTrafficPercent" not in pred:
        return None
    if latest_revision_ready(current):
        return None
    return int(pred["canaryTrafficPercent"])


def served_model(isvc: dict[str, Any] | None) -> ModelRef | None:
    """The model an existing InferenceService's stable template runs, read back from what `build` wrote (the
    predictor's revision label, its storageUri and image); None without one or when it is not Kanari's.

    The rollout engine asks for it only when the status has lost its stable model (wiped, hand-edited,
    unreadable): the InferenceService is then the only record of what serves, and a new model in the spec
    must roll out against it as a canary, not replace it outright. See `split_template` for the one case
    where the template does not name the model serving."""
    if not isvc:
        return None
    pred = (isvc.get("spec") or {}).get("predictor") or {}
    model = pred.get("model") or {}
    revision = (pred.get("labels") or {}).get(REVISION_ANNOTATION)
    storage = model.get("storageUri")
    if not isinstance(revision, str) or not revision or not isinstance(storage, str) or not storage:
        return None
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    # The version annotation names the template's model, which in RawDeployment mid-rollout is the canary's.
    version = annotations.get(VERSION_ANNOTATION) if annotations.get(REVISION_ANNOTATION) == revision else None
    image = model.get("image")
    return ModelRef(revision=revision, version=str(version or ""), storageUri=storage,
                    image=image if isinstance(image, str) else None,
                    format=str((model.get("modelFormat") or {}).get("name") or ""))


def split_template(isvc: dict[str, Any] | None) -> bool:
    """Serverless with canaryTrafficPercent: the template is a canary, a preview or a pinned stable, and the
    traffic's remainder goes to the last rolled-out Knative revision, whose model the InferenceService no
    longer names. A status that lost its stable model cannot tell which model that is."""
    pred = ((isvc or {}).get("spec") or {}).get("predictor") or {}
    return "canaryTrafficPercent" in pred and not (isvc or {}).get("spec", {}).get("canary")


def _rolled_out(isvc: dict[str, Any] | None) -> bool:
    """KServe reports a last rolled-out revision: the one canaryTrafficPercent's remainder goes to."""
    predictor = (((isvc or {}).get("status") or {}).get("components") or {}).get("predictor") or {}
    return bool(predictor.get("latestRolledoutRevision"))


def latest_revision_ready(isvc: dict[str, Any]) -> bool:
    """KServe has observed the current template and its newest Knative revision is Ready."""
    status = isvc.get("status") or {}
    generation = (isvc.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False
    predictor = (status.get("components") or {}).get("predictor") or {}
    latest = predictor.get("latestCreatedRevision")
    return bool(latest) and predictor.get("latestReadyRevision") == latest
