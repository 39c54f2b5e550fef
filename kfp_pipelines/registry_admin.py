"""The registry as a person uses it (`kanari models list|approve|reject`): list versions, move one between
approval states. Apart from kfp_pipelines.registry (what the pipeline does) so that the pipeline's IAM role,
generated from the calls its modules make (`kanari iam policy --role pipeline`), cannot approve models.
Approval is a status change on the registered package (UpdateModelPackage), never a copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.registry import APPROVAL_STATUSES, META_PREFIX

log = logging.getLogger("kanari.pipeline")


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
                metrics={k.removeprefix(f"{META_PREFIX}metric."): v for k, v in meta.items()
                         if k.startswith(f"{META_PREFIX}metric.")},
                git_sha=meta.get(f"{META_PREFIX}git-sha", ""),
                training_job=meta.get(f"{META_PREFIX}training-job-arn", "").rsplit("/", 1)[-1],
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
