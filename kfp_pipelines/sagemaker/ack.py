"""Training through the ACK SageMaker controller: a TrainingJob custom resource, watched by its status."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kfp_pipelines.errors import StepFailed
from kfp_pipelines.sagemaker.config import ack_training_job
from kfp_pipelines.sagemaker.waiter import Backoff, WaitRecord, wait

log = logging.getLogger("kanari.pipeline")

GROUP = "sagemaker.services.k8s.aws"
VERSION = "v1alpha1"
PLURAL = "trainingjobs"


def describe_from_status(obj: dict[str, Any]) -> dict[str, Any]:
    """An ACK TrainingJob read as DescribeTrainingJob: the same waiter judges both."""
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    terminal = conditions.get("ACK.Terminal")
    if terminal and terminal.get("status") == "True":
        # The controller gave up (SageMaker rejected the spec, or it is unrecoverable).
        return {"TrainingJobStatus": "Failed", "SecondaryStatus": "ACK.Terminal",
                "FailureReason": f"ACK.Terminal: {terminal.get('message') or terminal.get('reason') or 'no message'}"}
    desc: dict[str, Any] = {
        # Until the controller has reconciled once, the CR has no SageMaker status yet.
        "TrainingJobStatus": status.get("trainingJobStatus") or "Pending",
        "SecondaryStatus": status.get("secondaryStatus") or "Pending",
    }
    recoverable = conditions.get("ACK.Recoverable")
    if recoverable and recoverable.get("status") == "True":
        desc["SecondaryStatus"] += f" (ACK.Recoverable: {recoverable.get('message', '')})"
    if status.get("failureReason"):
        desc["FailureReason"] = status["failureReason"]
    if (status.get("modelArtifacts") or {}).get("s3ModelArtifacts"):
        desc["ModelArtifacts"] = {"S3ModelArtifacts": status["modelArtifacts"]["s3ModelArtifacts"]}
    if (status.get("ackResourceMetadata") or {}).get("arn"):
        desc["TrainingJobArn"] = status["ackResourceMetadata"]["arn"]
    return desc


def find(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The TrainingJob read as DescribeTrainingJob, or None when there is none of that name."""
    from kubernetes.client.exceptions import ApiException

    try:
        return describe_from_status(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise StepFailed(f"cannot read TrainingJob {namespace}/{name}: {exc.status} {exc.reason}") from exc


def submit_and_wait(
    api: Any, request: dict[str, Any], namespace: str, backoff: Backoff, timeout: float | None,
    on_poll: Callable[[], Any] | None = None,
) -> tuple[dict[str, Any], WaitRecord, bool]:
    """Create the TrainingJob (or find the one a previous attempt created) and wait for it."""
    from kubernetes.client.exceptions import ApiException

    body = ack_training_job(request, namespace)
    name = body["metadata"]["name"]
    reattached = False
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        log.info("created TrainingJob %s/%s (ACK)", namespace, name)
    except ApiException as exc:
        if exc.status != 409:
            raise StepFailed(f"cannot create TrainingJob {namespace}/{name}: {exc.status} {exc.reason}") from exc
        existing = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        if existing.get("spec", {}).get("trainingJobName") != request["TrainingJobName"]:
            raise StepFailed(f"TrainingJob {namespace}/{name} exists but is for another job") from None
        reattached = True
        log.info("re-attached to TrainingJob %s/%s (ACK)", namespace, name)

    def describe() -> dict[str, Any]:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            raise StepFailed(f"cannot read TrainingJob {namespace}/{name}: {exc.status} {exc.reason}") from exc
        return describe_from_status(obj)

    desc, record = wait(name, describe, backoff, timeout, on_poll=on_poll)
    return desc, record, reattached
