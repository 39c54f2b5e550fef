"""The quality gate: a candidate must not be worse than the model currently Approved in the registry.

`decide` is pure. The champion is the newest Approved package of the group; its scores are the
evaluation document its ModelMetrics point at. Missing data never passes: a candidate or champion
without the gated metric fails the gate (the first model of a group, with no champion, passes).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.evaluation import HIGHER_IS_BETTER, METRICS, scores_from_document

log = logging.getLogger("kanari.pipeline")


@dataclass(frozen=True)
class Champion:
    arn: str
    scores: dict[str, float]
    model_uri: str = ""


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    metric: str
    candidate: float | None
    champion: float | None
    champion_arn: str


def check_gate_parameters(metric: str, tolerance: float) -> None:
    if metric not in METRICS:
        raise InputError("gate_metric", f"{metric!r} is not one of {', '.join(METRICS)}")
    if not 0.0 <= tolerance < 1.0:
        raise InputError("gate_tolerance", f"{tolerance} must be in [0, 1)")


def decide(candidate: dict[str, float], champion: Champion | None, metric: str, tolerance: float) -> GateVerdict:
    check_gate_parameters(metric, tolerance)
    value = candidate.get(metric)
    if value is None or math.isnan(value):
        return GateVerdict(False, f"the candidate has no {metric}: nothing to judge, not promoted", metric, None,
                           None, champion.arn if champion else "")
    if champion is None:
        return GateVerdict(True, f"no Approved model in the group yet: the first model passes ({metric}={value:.4f})",
                           metric, value, None, "")
    best = champion.scores.get(metric)
    if best is None or math.isnan(best):
        return GateVerdict(False, f"the Approved model {champion.arn} has no recorded {metric}; cannot compare",
                           metric, value, None, champion.arn)
    sign = 1.0 if metric in HIGHER_IS_BETTER else -1.0
    floor = best - sign * tolerance
    if sign * (value - floor) < 0:
        return GateVerdict(
            False,
            f"{metric} {value:.4f} is worse than the Approved model's {best:.4f} beyond the tolerance {tolerance}",
            metric, value, best, champion.arn,
        )
    return GateVerdict(True, f"{metric} {value:.4f} vs Approved {best:.4f} (tolerance {tolerance}): no regression",
                       metric, value, best, champion.arn)


def check_group(sm: Any, group: str) -> str:
    """The group's ARN; a missing group is bad input, not something to create on the fly."""
    try:
        return str(sm.describe_model_package_group(ModelPackageGroupName=group)["ModelPackageGroupArn"])
    except aws.ClientError as exc:
        msg = aws.error_message(exc)
        if aws.error_code(exc) in ("ValidationException", "ResourceNotFound") and (
            "does not exist" in msg or "not found" in msg.lower()
        ):
            raise InputError(
                "model_package_group",
                f"model package group {group!r} does not exist in {sm.meta.region_name} "
                f"(create it with `aws sagemaker create-model-package-group --model-package-group-name {group}`)",
            ) from None
        raise StepFailed(f"DescribeModelPackageGroup {group}: {msg}") from exc


def find_champion(sm: Any, s3: Any, group: str) -> Champion | None:
    page = sm.list_model_packages(
        ModelPackageGroupName=group, ModelApprovalStatus="Approved", SortBy="CreationTime",
        SortOrder="Descending", MaxResults=1,
    )
    summaries = page.get("ModelPackageSummaryList") or []
    if not summaries:
        return None
    arn = summaries[0]["ModelPackageArn"]
    desc = sm.describe_model_package(ModelPackageName=arn)
    containers = (desc.get("InferenceSpecification") or {}).get("Containers") or [{}]
    model_uri = str(containers[0].get("ModelDataUrl") or "")
    uri = (((desc.get("ModelMetrics") or {}).get("ModelQuality") or {}).get("Statistics") or {}).get("S3Uri")
    if not uri:
        log.warning("Approved model %s has no ModelMetrics.ModelQuality", arn)
        return Champion(arn, {}, model_uri)
    recorded = scores_from_document(aws.get_json(s3, aws.S3Uri.parse(uri, "champion metrics")))
    return Champion(arn, recorded, model_uri)
