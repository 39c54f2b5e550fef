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

from kanari import registry_metadata as keys

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed

log = logging.getLogger("kanari.pipeline")

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
SERVING_IMAGE_REPOSITORY = "pytorch-inference"
SERVING_IMAGE_TAG = "2.3.0-cpu-py311"
META_VALUE_MAX = 256
# Looked at before registering: a restarted register step finds the package its first attempt made.
RECENT_PACKAGES = 5
LINEAGE_MAX_ATTEMPTS = 2


def default_serving_image(region: str) -> str:
    return f"763104351884.dkr.ecr.{region}.amazonaws.com/{SERVING_IMAGE_REPOSITORY}:{SERVING_IMAGE_TAG}"


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
            keys.GIT_SHA: self.git_sha,
            keys.DATASET_URI: self.dataset_uri,
            keys.DATASET_VERSION: self.dataset_version,
            keys.PIPELINE_RUN: self.pipeline_run,
            keys.TRAINING_JOB: self.training_job_arn,
            keys.TRAINING_IMAGE: self.image_uri,
            keys.IMAGE_DIGEST: self.image_digest,
            keys.SOURCE_DIGEST: self.source_digest,
        }


META_ALLOWED = r"[\w\s.:/=+\-@]*"  # SageMaker's pattern for CustomerMetadataProperties values


def customer_metadata(lineage: ReleaseLineage, scores: dict[str, float], model_name: str, reason: str,
                      gate_reason: str, baseline_uri: str) -> dict[str, str]:
    # Values that come straight from a pipeline parameter are checked and blamed on it; the rest is ours.
    from_parameters = {
        keys.DATASET_URI: ("dataset_uri", lineage.dataset_uri),
        keys.REASON: ("reason", reason),
        keys.GIT_SHA: ("git_sha", lineage.git_sha),
        keys.MODEL_NAME: ("model_name", model_name),
    }
    for parameter, value in from_parameters.values():
        if len(value) > META_VALUE_MAX:
            raise InputError(parameter, f"{len(value)} characters; the registry keeps at most {META_VALUE_MAX}")
        if not re.fullmatch(META_ALLOWED, value):
            raise InputError(parameter, f"{value!r} has characters the registry's metadata does not accept")
    ours = {
        **lineage.properties(),
        keys.GATE: gate_reason,
        keys.BASELINE_URI: baseline_uri,
        **{f"{keys.METRIC_PREFIX}{k}": f"{v:.6f}" for k, v in sorted(scores.items())},
    }
    props = {k: re.sub(r"[^\w\s.:/=+\-@]", " ", v)[:META_VALUE_MAX] for k, v in ours.items()}
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
            "Containers": [{"Image": serving_image, "ModelDataUrl": model_uri}],
            "SupportedContentTypes": ["application/json", "text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "ModelApprovalStatus": status,
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}}},
        "DriftCheckBaselines": {
            "ModelDataQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": f"{baseline_uri}/statistics.json"},
                "Constraints": {"ContentType": "application/json", "S3Uri": f"{baseline_uri}/constraints.json"},
            }
        },
        "MetadataProperties": {"CommitId": lineage.git_sha[:1024], "GeneratedBy": lineage.training_job_arn[:1024]},
        "CustomerMetadataProperties": metadata,
        # SageMaker deduplicates retried calls on this token: one package per training job and group.
        "ClientToken": hashlib.sha256(f"{group}\n{lineage.training_job_arn}".encode()).hexdigest()[:36],
    }
    return req


def find_registered(sm: Any, group: str, training_job_arn: str) -> dict[str, Any] | None:
    page = sm.list_model_packages(ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending",
                                  MaxResults=RECENT_PACKAGES)
    for summary in page.get("ModelPackageSummaryList") or []:
        desc = sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        if (desc.get("CustomerMetadataProperties") or {}).get(keys.TRAINING_JOB) == training_job_arn:
            return dict(desc)
    return None


def record_lineage(dataset_uri: str, dataset_version: str, model_package_arn: str) -> None:
    """SageMaker lineage entities for dataset -> model package, where the lineage API exists."""
    sm = aws.client("sagemaker", max_attempts=LINEAGE_MAX_ATTEMPTS)
    try:
        dataset = sm.create_artifact(
            ArtifactType="DataSet",
            Source={"SourceUri": dataset_uri[:2048], "SourceTypes": [{"SourceIdType": "Custom", "Value": dataset_version}]},
        )["ArtifactArn"]
        model = sm.create_artifact(ArtifactType="Model", Source={"SourceUri": model_package_arn})["ArtifactArn"]
        sm.add_association(SourceArn=dataset, DestinationArn=model, AssociationType="ContributedTo")
        log.info("lineage recorded: %s -> %s", dataset, model)
    except aws.ClientError as exc:
        # The registry entry already carries the lineage; the lineage API is an extra view of it.
        log.warning("SageMaker lineage API unavailable (%s); lineage kept in CustomerMetadataProperties",
                    aws.error_code(exc) or exc)


def register(sm: Any, request: dict[str, Any]) -> tuple[str, str, bool]:
    """(ARN, approval status, whether it already existed)."""
    group = request["ModelPackageGroupName"]
    job_arn = request["CustomerMetadataProperties"][keys.TRAINING_JOB]
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


# ------------------------------------------------------------------------------------------ CLI side
@dataclass(frozen=True)
class PackageRow:
    arn: str
    version: int
    status: str
    created: str
    metrics: dict[str, str]
    git_sha: str
    training_job: str
    description: str


def resolve_arn(sm: Any, ref: str) -> str:
    """A model package ARN, or GROUP/VERSION."""
    if ref.startswith("arn:"):
        return ref
    group, _, version = ref.rpartition("/")
    if not group or not version.isdigit():
        raise InputError("model", f"{ref!r} is neither a model package ARN nor GROUP/VERSION")
    for row in list_packages(sm, group):
        if row.version == int(version):
            return row.arn
    raise InputError("model", f"no version {version} in model package group {group!r}")


def list_packages(sm: Any, group: str) -> list[PackageRow]:
    rows = []
    for page in sm.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending"
    ):
        for summary in page.get("ModelPackageSummaryList") or []:
            desc = sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
            meta = desc.get("CustomerMetadataProperties") or {}
            rows.append(PackageRow(
                arn=summary["ModelPackageArn"],
                version=int(summary.get("ModelPackageVersion") or 0),
                status=str(summary.get("ModelApprovalStatus", "")),
                created=str(summary.get("CreationTime", ""))[:19],
                metrics={k.removeprefix(keys.METRIC_PREFIX): v for k, v in meta.items()
                         if k.startswith(keys.METRIC_PREFIX)},
                git_sha=meta.get(keys.GIT_SHA, ""),
                training_job=meta.get(keys.TRAINING_JOB, "").rsplit("/", 1)[-1],
                description=str(desc.get("ApprovalDescription") or desc.get("ModelPackageDescription") or ""),
            ))
    return rows


def set_status(sm: Any, arn: str, status: str, reason: str) -> str:
    """Approve or reject: a status change on the registered package itself."""
    if status not in APPROVAL_STATUSES:
        raise InputError("status", f"{status!r} is not one of {', '.join(APPROVAL_STATUSES)}")
    try:
        current = sm.describe_model_package(ModelPackageName=arn)
    except aws.ClientError as exc:
        raise InputError("model", f"{arn}: {aws.error_message(exc)}") from None
    kwargs: dict[str, Any] = {"ModelPackageArn": arn, "ModelApprovalStatus": status}
    if current.get("CustomerMetadataProperties"):
        # Re-sent unchanged (a no-op for SageMaker, which merges): some emulators replace the map on update,
        # and the lineage must survive an approval.
        kwargs["CustomerMetadataProperties"] = current["CustomerMetadataProperties"]
    if reason:
        kwargs["ApprovalDescription"] = reason[:1024]
    sm.update_model_package(**kwargs)
    after = sm.describe_model_package(ModelPackageName=arn).get("ModelApprovalStatus", "")
    if after != status:
        raise StepFailed(f"{arn} is {after} after asking for {status}")
    log.info("%s: %s -> %s", arn, current.get("ModelApprovalStatus"), status)
    return str(after)
