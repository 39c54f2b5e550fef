"""The SageMaker Model Registry: register a version with its lineage, list, approve, reject.

Registration is one CreateModelPackage call made after every check has passed, so a failure leaves
nothing half-registered. Lineage lives in the package's CustomerMetadataProperties (readable with
the registry alone); SageMaker's lineage API is also called where it exists, best effort.
Approval and promotion are status changes on the same package (UpdateModelPackage), never copies.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from kanari.retrain.training_run import DriftAlert

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed

log = logging.getLogger("kanari.pipeline")

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
# The controller reads these keys back (kanari.controller.model_source.LINEAGE_KEYS / BASELINE_KEYS).
META_PREFIX = "kanari:"
META_VALUE_MAX = 256
# Looked at before registering: a restarted register step finds the package its first attempt made.
RECENT_PACKAGES = 5
LINEAGE_MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class ServingTarget:
    """What a registered version can be served on: the inference image, the instance types it runs on,
    and the ModelDeployment's model format and accelerator (the controller picks the runtime from them)."""

    accelerator: str
    model_format: str
    image_repository: str
    image_tag: str
    framework_version: str
    instance_types: tuple[str, ...]


SERVING_TARGETS = {
    "cpu": ServingTarget("cpu", "pytorch", "pytorch-inference", "2.3.0-cpu-py311", "2.3",
                         ("ml.m5.large", "ml.m5.xlarge", "ml.m5.2xlarge", "ml.c5.xlarge", "ml.c5.2xlarge")),
    # The Neuron runtime the controller chooses for accelerator inferentia2 (manifests/serving: kanari-neuron,
    # format pytorch-neuronx) runs the same DLC family.
    "inferentia2": ServingTarget("inferentia2", "pytorch-neuronx", "pytorch-inference-neuronx",
                                 "2.1.2-neuronx-py310-sdk2.20.0-ubuntu20.04", "2.1",
                                 ("ml.inf2.xlarge", "ml.inf2.8xlarge", "ml.inf2.24xlarge", "ml.inf2.48xlarge")),
}
TASK = "CLASSIFICATION"  # a binary classifier (SageMaker's Task values)
DOMAIN = "MACHINE_LEARNING"
FRAMEWORK = "PYTORCH"


def serving_target(accelerator: str) -> ServingTarget:
    if accelerator not in SERVING_TARGETS:
        raise InputError("serving_accelerator", f"{accelerator!r} is not one of {', '.join(SERVING_TARGETS)}")
    return SERVING_TARGETS[accelerator]


def default_serving_image(region: str, accelerator: str = "cpu") -> str:
    from kfp_pipelines.sagemaker.config import dlc_image

    target = serving_target(accelerator)
    return dlc_image(region, target.image_repository, target.image_tag)


@dataclass(frozen=True)
class ReleaseLineage:
    git_sha: str
    dataset_uri: str
    dataset_version: str
    pipeline_run: str
    training_job_arn: str
    image_uri: str
    image_digest: str
    source_digest: str

    def properties(self) -> dict[str, str]:
        return {
            f"{META_PREFIX}git-sha": self.git_sha,
            f"{META_PREFIX}dataset-uri": self.dataset_uri,
            f"{META_PREFIX}dataset-version": self.dataset_version,
            f"{META_PREFIX}pipeline-run-id": self.pipeline_run,
            f"{META_PREFIX}training-job-arn": self.training_job_arn,
            f"{META_PREFIX}training-image": self.image_uri,
            f"{META_PREFIX}image-digest": self.image_digest,
            f"{META_PREFIX}source-digest": self.source_digest,
        }


META_ALLOWED = r"[\w\s.:/=+\-@]*"  # SageMaker's pattern for CustomerMetadataProperties values


def check_metadata_value(parameter: str, value: str) -> None:
    """What the registry's CustomerMetadataProperties accept, checked when the parameter arrives (before
    any data is written or any instance billed), not at the register step after training."""
    if len(value) > META_VALUE_MAX:
        raise InputError(parameter, f"{len(value)} characters; the registry keeps at most {META_VALUE_MAX}")
    if not re.fullmatch(META_ALLOWED, value):
        bad = sorted({ch for ch in value if not re.fullmatch(META_ALLOWED, ch)})
        raise InputError(parameter, f"{value!r} has characters the registry's metadata does not accept "
                                    f"({' '.join(repr(ch) for ch in bad[:5])}; allowed: letters, digits, spaces "
                                    "and . : / = + - @ _)")


def _clean(value: str) -> str:
    return re.sub(r"[^\w\s.:/=+\-@]", " ", value)[:META_VALUE_MAX]


def alert_properties(alert: DriftAlert | None) -> dict[str, str]:
    """The alert that started the run, as separate registry fields (not a sentence to parse back)."""
    if alert is None:
        return {}
    fields = {
        "drift-alert": alert.alertname,
        "drift-alert-fingerprint": alert.fingerprint,
        "drift-alert-starts-at": alert.startsAt,
        "drift-alert-feature": alert.labels.get("feature", ""),
        "drift-alert-severity": alert.labels.get("severity", ""),
    }
    return {f"{META_PREFIX}{k}": _clean(v) for k, v in fields.items() if v}


def customer_metadata(lineage: ReleaseLineage, scores: dict[str, float], model_name: str, reason: str,
                      gate_reason: str, baseline_uri: str, alert: DriftAlert | None = None) -> dict[str, str]:
    # Values that come straight from a pipeline parameter are checked and blamed on it; the rest is ours.
    from_parameters = {
        f"{META_PREFIX}dataset-uri": ("dataset_uri", lineage.dataset_uri),
        f"{META_PREFIX}reason": ("reason", reason),
        f"{META_PREFIX}git-sha": ("git_sha", lineage.git_sha),
        f"{META_PREFIX}model-name": ("model_name", model_name),
    }
    for parameter, value in from_parameters.values():
        check_metadata_value(parameter, value)
    ours = {
        **lineage.properties(),
        f"{META_PREFIX}gate": gate_reason,
        f"{META_PREFIX}baseline-uri": baseline_uri,
        **{f"{META_PREFIX}metric.{k}": f"{v:.6f}" for k, v in sorted(scores.items())},
    }
    props = {k: _clean(v) for k, v in ours.items()}
    props.update(alert_properties(alert))
    props.update({k: v for k, (_, v) in from_parameters.items() if v})
    return props


def package_request(
    *,
    group: str,
    model_uri: str,
    serving_image: str,
    evaluation_uri: str,
    baseline_uri: str,
    lineage: ReleaseLineage,
    metadata: dict[str, str],
    auto_approve: bool,
    reason: str,
    target: ServingTarget = SERVING_TARGETS["cpu"],
    model_name: str = "",
) -> dict[str, Any]:
    """The CreateModelPackage request (pure)."""
    status = "Approved" if auto_approve else "PendingManualApproval"
    req: dict[str, Any] = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": (
            (reason or f"trained by pipeline run {lineage.pipeline_run}")
            + ("; auto-approved by the pipeline's policy" if auto_approve else "")
        )[:1024],
        "InferenceSpecification": {
            "Containers": [{"Image": serving_image, "ModelDataUrl": model_uri, "Framework": FRAMEWORK,
                            "FrameworkVersion": target.framework_version}],
            "SupportedContentTypes": ["application/json", "text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": list(target.instance_types),
        },
        "Task": TASK,
        "Domain": DOMAIN,
        "ModelApprovalStatus": status,
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}}},
        "DriftCheckBaselines": {
            "ModelDataQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": f"{baseline_uri}/statistics.json"},
                "Constraints": {"ContentType": "application/json", "S3Uri": f"{baseline_uri}/constraints.json"},
            }
        },
        "MetadataProperties": {"CommitId": lineage.git_sha[:1024], "GeneratedBy": lineage.training_job_arn[:1024]},
        "CustomerMetadataProperties": {**metadata, f"{META_PREFIX}serving-accelerator": target.accelerator},
        "Tags": [
            {"Key": "kanari.dev/pipeline-run", "Value": lineage.pipeline_run[:256]},
            {"Key": "kanari.dev/serving-accelerator", "Value": target.accelerator},
            *([{"Key": "kanari.dev/model", "Value": model_name[:256]}] if model_name else []),
        ],
        # SageMaker deduplicates retried calls on this token: one package per training job and group.
        "ClientToken": hashlib.sha256(f"{group}\n{lineage.training_job_arn}".encode()).hexdigest()[:36],
    }
    return req


def find_registered(sm: Any, group: str, training_job_arn: str) -> dict[str, Any] | None:
    page = sm.list_model_packages(ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending",
                                  MaxResults=RECENT_PACKAGES)
    for summary in page.get("ModelPackageSummaryList") or []:
        desc = sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        if (desc.get("CustomerMetadataProperties") or {}).get(f"{META_PREFIX}training-job-arn") == training_job_arn:
            return dict(desc)
    return None


def _find_or_create_artifact(sm: Any, source_uri: str, **create: Any) -> str:
    """An artifact per source URI: a re-run of the step reuses the one its first attempt created."""
    found = sm.list_artifacts(SourceUri=source_uri, MaxResults=1).get("ArtifactSummaries") or []
    if found:
        return str(found[0]["ArtifactArn"])
    return str(sm.create_artifact(Source={"SourceUri": source_uri, **create.pop("Source", {})}, **create)["ArtifactArn"])


def _associate(sm: Any, source: str, destination: str, kind: str) -> None:
    try:
        sm.add_association(SourceArn=source, DestinationArn=destination, AssociationType=kind)
    except aws.ClientError as exc:
        # Re-running the step: the association from the first attempt is already there.
        if "already exists" not in aws.error_message(exc).lower():
            raise


def trial_component_arn(training_job_arn: str) -> str:
    """SageMaker creates a trial component `<job>-aws-training-job` for every training job (its lineage entity)."""
    head, _, name = training_job_arn.rpartition(":training-job/")
    return f"{head}:experiment-trial-component/{name}-aws-training-job"


def record_lineage(sm: Any, *, dataset_uri: str, dataset_version: str, model_package_arn: str,
                   training_job_arn: str, alert: DriftAlert | None = None) -> list[tuple[str, str, str]]:
    """SageMaker ML lineage: dataset -> training job -> model package, and the drift alert that started
    the run. Returns the associations (source, destination, type) made.

    The registry entry already carries the lineage (CustomerMetadataProperties); the lineage API is the
    view SageMaker Studio and `QueryLineage` use. Where the API is unavailable (an emulator, a partition
    without it) the step logs it and carries on; a malformed request still fails loudly (botocore
    validates it before sending).
    """
    made: list[tuple[str, str, str]] = []
    try:
        dataset = _find_or_create_artifact(
            sm, dataset_uri[:2048], ArtifactType="DataSet", ArtifactName="training-data",
            Source={"SourceTypes": [{"SourceIdType": "Custom", "Value": dataset_version[:256] or "unversioned"}]},
            Properties={"DatasetVersion": dataset_version[:256] or "unversioned"},
        )
        model = _find_or_create_artifact(sm, model_package_arn, ArtifactType="ModelPackage",
                                         ArtifactName="model-package")
        try:
            job = str(sm.describe_trial_component(
                TrialComponentName=trial_component_arn(training_job_arn).rsplit("/", 1)[1])["TrialComponentArn"])
        except aws.ClientError as exc:
            if aws.error_code(exc) not in ("ResourceNotFound", "ValidationException"):
                raise
            job = ""
        links = [(dataset, job, "ContributedTo"), (job, model, "Produced")] if job else [
            (dataset, model, "ContributedTo")]
        if alert is not None:
            trigger = _find_or_create_artifact(
                sm, f"alertmanager:fingerprint/{alert.fingerprint}/startsAt/{alert.startsAt}"[:2048],
                ArtifactType="DriftAlert", ArtifactName=re.sub(r"[^a-zA-Z0-9-]", "-", alert.alertname)[:120] or "alert",
                Properties={k: _clean(v)[:256] or "-" for k, v in (
                    ("alertname", alert.alertname), ("fingerprint", alert.fingerprint), ("startsAt", alert.startsAt),
                    ("feature", alert.labels.get("feature", "")), ("severity", alert.labels.get("severity", "")))},
            )
            links.append((trigger, job or model, "AssociatedWith"))
        for source, destination, kind in links:
            _associate(sm, source, destination, kind)
            made.append((source, destination, kind))
        log.info("lineage recorded: %s", "; ".join(f"{s} -{k}-> {d}" for s, d, k in made))
    except aws.ClientError as exc:
        log.warning("SageMaker lineage API unavailable (%s); lineage kept in CustomerMetadataProperties",
                    aws.error_code(exc) or exc)
    return made


def register(sm: Any, request: dict[str, Any]) -> tuple[str, str, bool]:
    """(ARN, approval status, whether it already existed)."""
    group = request["ModelPackageGroupName"]
    job_arn = request["CustomerMetadataProperties"][f"{META_PREFIX}training-job-arn"]
    existing = find_registered(sm, group, job_arn)
    if existing is not None:
        log.info("already registered: %s (%s)", existing["ModelPackageArn"], existing.get("ModelApprovalStatus"))
        return str(existing["ModelPackageArn"]), str(existing.get("ModelApprovalStatus", "")), True
    try:
        arn = str(sm.create_model_package(**request)["ModelPackageArn"])
    except aws.ClientError as exc:
        raise StepFailed(f"CreateModelPackage in {group}: {aws.error_code(exc)}: {aws.error_message(exc)}") from exc
    log.info("registered %s as %s", arn, request["ModelApprovalStatus"])
    return arn, str(request["ModelApprovalStatus"]), False
