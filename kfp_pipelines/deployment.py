"""The ModelDeployment for a newly registered version: written to a GitOps path, or applied.

Only the model, its drift baseline and the lineage change: an existing manifest keeps everything the
platform team set (serving, rollout, monitoring thresholds). The object is parsed through
kanari.api.v1alpha1 before it is written, so the pipeline never emits what the controller rejects.

Path convention: <manifest_dir>/<namespace>/<name>.yaml, one file per ModelDeployment, so a new
version is a diff of that file.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from kanari.api import v1alpha1

from kfp_pipelines.errors import InputError, StepFailed

log = logging.getLogger("kanari.pipeline")

LINEAGE_PREFIX = f"{v1alpha1.GROUP}/lineage-"
PIPELINE_NAME = "kanari-training"
NEW_MODEL_FORMAT = "pytorch"
NEW_MODEL_ACCELERATOR = "cpu"


# Lineage field -> annotation suffix: one table for writing and reading back.
ANNOTATION_FIELDS = {
    "modelPackageArn": "model-package-arn",
    "trainingJob": "training-job",
    "pipelineRun": "pipeline-run",
    "datasetUri": "dataset-uri",
    "datasetVersion": "dataset-version",
    "gitSha": "git-sha",
    "imageDigest": "image-digest",
    "driftAlert": "drift-alert",
    "driftAlertFingerprint": "drift-alert-fingerprint",
    "driftAlertStartsAt": "drift-alert-starts-at",
}


def lineage_annotations(lineage: v1alpha1.Lineage, dataset_version: str = "") -> dict[str, str]:
    values = lineage.model_dump()
    if dataset_version and not values.get("datasetVersion"):
        values["datasetVersion"] = dataset_version
    return {f"{LINEAGE_PREFIX}{suffix}": str(values[f]) for f, suffix in ANNOTATION_FIELDS.items() if values.get(f)}


def lineage_from_annotations(annotations: dict[str, str]) -> v1alpha1.Lineage:
    """The reverse, for whoever reads the lineage back off the object (controller, CLI)."""
    return v1alpha1.Lineage(**{f: annotations.get(f"{LINEAGE_PREFIX}{suffix}")
                               for f, suffix in ANNOTATION_FIELDS.items()})


def manifest_path(manifest_dir: str | Path, namespace: str, name: str) -> Path:
    return Path(manifest_dir) / namespace / f"{name}.yaml"


def check_names(name: str, namespace: str) -> None:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 45:
        raise InputError("model_name", f"{name!r} is not a valid ModelDeployment name "
                                       "(lower-case letters, digits, '-', at most 45 characters)")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace) or len(namespace) > 63:
        raise InputError("namespace", f"{namespace!r} is not a valid namespace name")


def build(
    existing: dict[str, Any] | None,
    *,
    name: str,
    namespace: str,
    model_package_arn: str,
    baseline_uri: str,
    lineage: v1alpha1.Lineage,
    dataset_version: str,
    model_format: str = NEW_MODEL_FORMAT,
    accelerator: str = NEW_MODEL_ACCELERATOR,
) -> dict[str, Any]:
    """The manifest for the new version (pure). `existing` is the manifest currently at the path.

    The model's format and accelerator follow what the registered package targets (its serving image
    and instance types): a package built for Inferentia gets `accelerator: inferentia2`, so the
    controller picks the Neuron runtime; everything else the platform team set is kept.
    """
    check_names(name, namespace)
    if existing:
        obj = copy.deepcopy(existing)
        obj.pop("status", None)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != name or meta.get("namespace", "default") != namespace:
            raise StepFailed(f"the manifest at the path is for {meta.get('namespace')}/{meta.get('name')}, "
                             f"not {namespace}/{name}")
    else:
        obj = {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "model": {"format": model_format, "requireApproval": True},
                "serving": {"accelerator": accelerator},
                "monitoring": {"retrain": {"pipeline": PIPELINE_NAME}},
            },
        }
    spec = obj.setdefault("spec", {})
    model = spec.setdefault("model", {})
    # One source of truth for what is served: the registry package (its version label comes from it).
    for stale in ("storageUri", "version"):
        model.pop(stale, None)
    model["modelPackageArn"] = model_package_arn
    serving = spec.setdefault("serving", {})
    current = serving.get("accelerator", "inferentia2")  # the CRD's default
    if existing and current != accelerator:
        raise StepFailed(f"the manifest serves on accelerator {current}, but the registered package targets "
                         f"{accelerator} (format {model_format}): change spec.serving in the manifest, or register "
                         f"a model built for {current}")
    model["format"] = model_format
    serving["accelerator"] = accelerator
    spec.setdefault("monitoring", {})["baselineUri"] = baseline_uri
    annotations = {k: v for k, v in (obj["metadata"].get("annotations") or {}).items()
                   if not k.startswith(LINEAGE_PREFIX)}
    annotations.update(lineage_annotations(lineage, dataset_version))
    obj["metadata"]["annotations"] = annotations
    try:
        v1alpha1.parse_model_deployment(obj)
    except v1alpha1.SpecError as exc:
        raise StepFailed(f"the ModelDeployment would be invalid: {exc}") from None
    return obj


def read_existing(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise StepFailed(f"{path} does not hold a ModelDeployment")
    return doc


def write(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Replace atomically: a GitOps agent polling the directory never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(obj, fh, sort_keys=False)
    os.replace(tmp, path)


def merge_patch(current: Any, desired: Any) -> Any:
    """The RFC 7386 merge patch that turns `current` into `desired` (removed keys become null)."""
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return desired
    patch: dict[str, Any] = {k: None for k in current if k not in desired}
    for key, value in desired.items():
        if key not in current:
            patch[key] = value
        elif current[key] != value:
            patch[key] = merge_patch(current[key], value)
    return patch


def apply(api: Any, obj: dict[str, Any]) -> str:
    """Create the ModelDeployment, or patch the one there to exactly this spec, labels and annotations.

    The patch carries the resourceVersion read just before: a concurrent writer makes it fail (409)
    instead of being overwritten.
    """
    from kubernetes.client.exceptions import ApiException

    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    args = (v1alpha1.GROUP, v1alpha1.VERSION, ns, v1alpha1.PLURAL)
    try:
        api.create_namespaced_custom_object(*args, obj)
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise StepFailed(f"cannot create ModelDeployment {ns}/{name}: {exc.status} {exc.reason}") from exc
    try:
        current = api.get_namespaced_custom_object(*args, name)
        meta = current.get("metadata") or {}
        patch = {
            "metadata": {
                "resourceVersion": meta.get("resourceVersion"),
                **{k: merge_patch(meta.get(k) or {}, obj["metadata"].get(k) or {}) for k in ("labels", "annotations")},
            },
            "spec": merge_patch(current.get("spec") or {}, obj["spec"]),
        }
        api.patch_namespaced_custom_object(*args, name, patch)
    except ApiException as exc:
        raise StepFailed(f"cannot update ModelDeployment {ns}/{name}: {exc.status} {exc.reason}") from exc
    return "updated"
