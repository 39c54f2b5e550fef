"""The parameters of a retraining run started by a drift alert, typed, from the ModelDeployment.

A Kubeflow Pipelines run takes typed parameters; the ModelDeployment's retraining policy only holds
strings (`spec.monitoring.retrain.parameters`). This module is the one place that turns the two into
the training pipeline's arguments:

  model_name, namespace        the ModelDeployment itself
  model_package_group          the group of the package it serves (status.stableModel / spec.model ARN)
  git_sha, dataset_uri         the lineage of the model it serves (status.lineage), i.e. retrain the same
                               code on the data at the same location, which now holds newer rows
  bucket                       the bucket of its drift baseline (spec.monitoring.baselineUri)
  role_arn and the rest        the policy's parameters, parsed to the pipeline's types
  drift_alert                  the alert, as structured fields the pipeline records in the model's lineage

Any of the derived values can be overridden by a policy parameter of the same name. A value that is
neither derivable nor given is an error naming where to set it, raised before anything is submitted.
The pipeline (kfp_pipelines.pipeline) declares every name here; a test holds the two together.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

POLICY_FIELD = "spec.monitoring.retrain.parameters"
# model-package/<group>/<version>: the ARN form of a versioned package in the registry.
PACKAGE_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:model-package/([^/]+)/\d+$")
S3_BUCKET = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/|$)")
REASON_MAX = 256


class DriftAlert(BaseModel):
    """The Alertmanager alert that started a run (what kanari.retrain.policy.Alert.summary() gives)."""

    model_config = ConfigDict(extra="ignore")
    alertname: str = Field(min_length=1, max_length=256)
    fingerprint: str = Field(min_length=1, max_length=64)
    startsAt: str = Field(min_length=1, max_length=64)
    status: str = "firing"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TrainingRunParameters(BaseModel):
    """The training pipeline's parameters for one retraining run (names and types as the pipeline declares)."""

    model_config = ConfigDict(extra="forbid")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    model_package_group: str = Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-/]+$")
    git_sha: str = Field(min_length=1, max_length=256)
    model_name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=45)
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    dataset_uri: str | None = Field(default=None, pattern=r"^(s3://.+\.(csv|parquet)|sklearn://.+)$")
    target: str | None = None
    reason: str = Field(default="", max_length=REASON_MAX)
    drift_alert: DriftAlert | None = None
    # The policy may set any of these; the pipeline's defaults apply otherwise.
    s3_prefix: str | None = None
    instance_type: str | None = None
    instance_count: int | None = Field(default=None, ge=1, le=64)
    hyperparameters: dict[str, Any] | None = None
    max_runtime_seconds: int | None = Field(default=None, ge=1)
    use_spot: bool | None = None
    max_wait_seconds: int | None = Field(default=None, ge=0)
    checkpoint_s3_uri: str | None = Field(default=None, pattern=r"^s3://.+")
    training_backend: str | None = Field(default=None, pattern=r"^(sagemaker|ack)$")
    ack_namespace: str | None = None
    gate_metric: str | None = None
    gate_tolerance: float | None = Field(default=None, ge=0.0, lt=1.0)
    auto_approve: bool | None = None
    serving_image: str | None = None
    manifest_dir: str | None = None
    apply_manifest: bool | None = None

    def arguments(self) -> dict[str, Any]:
        """The run's parameters as kfp.Client.run_pipeline takes them (unset ones left to the pipeline)."""
        return self.model_dump(mode="json", exclude_none=True)


class ParameterError(ValueError):
    """A retraining run's parameter is missing or wrong; `field` says where to set it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _policy_value(name: str, raw: str) -> Any:
    """A policy parameter is a string; structured ones (numbers, booleans, objects) are JSON in it."""
    kind = TrainingRunParameters.model_fields[name].annotation
    text = str(raw)
    if kind in (str, str | None):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ParameterError(f"{POLICY_FIELD}.{name}", f"{text!r} is not a JSON value") from None


def _reason(alert: DriftAlert) -> str:
    # The registry's metadata accepts letters, digits, spaces and . : / = + - @ _ only.
    text = f"drift alert {alert.alertname} {alert.labels.get('feature', '')}".strip()
    return re.sub(r"[^\w\s.:/=+\-@]", " ", text)[:REASON_MAX]


def derive(deployment: dict[str, Any], alert: DriftAlert, policy_parameters: dict[str, str],
           defaults: dict[str, str] | None = None) -> TrainingRunParameters:
    """The run's parameters (pure). `defaults` are the launcher's own (e.g. a cluster-wide role_arn)."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    lineage = status.get("lineage") or {}
    served = (status.get("stableModel") or {}).get("modelPackageArn") or (spec.get("model") or {}).get(
        "modelPackageArn") or ""
    derived: dict[str, Any] = {
        "model_name": meta.get("name"),
        "namespace": meta.get("namespace", "default"),
        "reason": _reason(alert),
        "drift_alert": alert,
    }
    if m := PACKAGE_ARN.match(served):
        derived["model_package_group"] = m.group(1)
    if lineage.get("gitSha"):
        derived["git_sha"] = lineage["gitSha"]
    if lineage.get("datasetUri"):
        derived["dataset_uri"] = lineage["datasetUri"]
    if m := S3_BUCKET.match((spec.get("monitoring") or {}).get("baselineUri") or ""):
        derived["bucket"] = m.group(1)

    given: dict[str, Any] = {}
    for source, values in (("launcher defaults", defaults or {}), (POLICY_FIELD, policy_parameters)):
        for name, raw in values.items():
            if name not in TrainingRunParameters.model_fields or name in ("drift_alert", "model_name", "namespace"):
                known = ", ".join(sorted(set(TrainingRunParameters.model_fields) - {"drift_alert", "model_name",
                                                                                    "namespace"}))
                raise ParameterError(f"{source}.{name}", f"not a training pipeline parameter (known: {known})")
            given[name] = _policy_value(name, raw)
    where = {
        "bucket": "spec.monitoring.baselineUri (an s3:// URI) or " + POLICY_FIELD + ".bucket",
        "model_package_group": "spec.model.modelPackageArn (a registry package) or " + POLICY_FIELD
                               + ".model_package_group",
        "git_sha": "status.lineage.gitSha (set when a pipeline-trained model is served) or " + POLICY_FIELD
                   + ".git_sha",
        "role_arn": POLICY_FIELD + ".role_arn (the SageMaker execution role)",
    }
    values = {**derived, **given}
    for name, hint in where.items():
        if not values.get(name):
            raise ParameterError(name, f"required for a retraining run; set it in {hint}")
    try:
        return TrainingRunParameters.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        origin = f"{POLICY_FIELD}.{name}" if name.split(".")[0] in given else name
        raise ParameterError(origin, str(err["msg"])) from None
