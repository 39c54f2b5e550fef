"""The drift baseline as a SageMaker Processing job, for training sets too big for the step's pod.

The job runs Kanari's Spark baseline image (the Dockerfile's `spark-baseline` target: the SageMaker PySpark
processing container with Kanari installed) as SageMaker Model Monitor runs its own baselines: smspark-submit
starts Spark across the job's instances and runs `kanari drift baseline --engine spark` (kanari/drift/
spark_job.py) over the training data in S3; statistics.json and constraints.json are written to the job's
output directory, which SageMaker uploads at the end of the job to <model dir>/baseline/, where the local
engine writes them, so registration, lineage and the monitor read them unchanged.

The job runs as the training job's execution role, inside the same VPC, with the same KMS keys,
inter-container encryption and network isolation. An isolated container cannot read S3 itself: its data is
then a Processing input copied onto its one instance (more than one instance is refused).

Like the training step: the job name is derived from (run, task, request), so a restarted step re-attaches to
its job; a job that ended Failed/Stopped is followed by a new attempt; the step fails with the job's
FailureReason, and a Completed job is only success once both files are in S3.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.sagemaker.config import (
    MAX_RUNTIME_LIMIT,
    ROLE_ARN,
    RUN_TAG,
    inputs_hash,
    job_name,
    parse_parameters,
    tags,
)
from kfp_pipelines.sagemaker.waiter import Backoff, wait

log = logging.getLogger("kanari.pipeline")

ENGINES = ("local", "spark", "auto")
# `auto`: a training split past this size (CSV in S3) is profiled on Spark; below it the step's own pod is
# faster (no cluster to start) and its memory (1 GiB limit) holds the frame.
AUTO_SPARK_BYTES = 512 * 2**20
DEFAULT_INSTANCE_TYPE = "ml.m5.4xlarge"
SPARK_JOB_SCRIPT = "/opt/kanari/spark_job.py"  # where the spark-baseline image puts kanari/drift/spark_job.py
OUTPUT_PATH = "/opt/ml/processing/output"
INPUT_PATH = "/opt/ml/processing/input/train"
OUTPUT_NAME = "baseline"
FILES = ("statistics.json", "constraints.json")
STATUS = "ProcessingJobStatus"
ENDED_UNSUCCESSFULLY = ("Failed", "Stopped")
MAX_ATTEMPTS = 5
PENDING_MARGIN_SECONDS = 3600


@functools.cache
def instance_types() -> tuple[str, ...]:
    """The instance types CreateProcessingJob accepts, from botocore's own SageMaker service model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return tuple(model.shape_for("ProcessingInstanceType").enum)


class BaselineJobConfig(BaseModel):
    """The baseline step's Processing parameters, checked as one object (field names = parameter names)."""

    model_config = ConfigDict(extra="forbid")

    train_uri: str
    output_uri: str
    target: str
    role_arn: str
    image_uri: str
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = Field(default=2, ge=1, le=100)
    volume_size_gb: int = Field(default=100, ge=1, le=16384)
    max_runtime_seconds: int = Field(default=24 * 3600, ge=1, le=MAX_RUNTIME_LIMIT)
    subnets: list[str] = Field(default_factory=list, max_length=16)
    security_group_ids: list[str] = Field(default_factory=list, max_length=5)
    volume_kms_key_id: str = ""
    output_kms_key_id: str = ""
    enable_network_isolation: bool = False
    enable_inter_container_traffic_encryption: bool = False

    @model_validator(mode="after")
    def _checks(self) -> BaselineJobConfig:
        for name in ("train_uri", "output_uri"):
            if not getattr(self, name).startswith("s3://"):
                raise ValueError(f"{name}: expected an s3:// URI, got {getattr(self, name)!r}")
        if not self.image_uri:
            raise ValueError("baseline_image_uri: the Spark baseline image (the Dockerfile's spark-baseline target, "
                             "pushed to ECR) is required for the spark engine")
        if not re.fullmatch(ROLE_ARN, self.role_arn):
            raise ValueError(f"role_arn: {self.role_arn!r} is not an IAM role ARN")
        if self.instance_type not in instance_types():
            raise ValueError(f"baseline_instance_type: {self.instance_type!r} is not a SageMaker Processing "
                             f"instance type (e.g. {DEFAULT_INSTANCE_TYPE})")
        if self.enable_network_isolation and self.instance_count > 1:
            raise ValueError("baseline_instance_count: an isolated job cannot read S3 from Spark; its data is "
                             "copied onto one instance, so it runs on 1 instance")
        if bool(self.subnets) != bool(self.security_group_ids):
            missing = "security_group_ids" if self.subnets else "subnets"
            raise ValueError(f"{missing}: a VPC config needs both subnets and security_group_ids")
        return self


# The config's fields as the pipeline's parameters are named (the rest are named alike).
PIPELINE_PARAMETERS = {"image_uri": "baseline_image_uri", "instance_type": "baseline_instance_type",
                       "instance_count": "baseline_instance_count"}


def parse_config(**params: Any) -> BaselineJobConfig:
    return parse_parameters(BaselineJobConfig, params, PIPELINE_PARAMETERS)


def build_request(cfg: BaselineJobConfig) -> dict[str, Any]:
    """The CreateProcessingJob request, without ProcessingJobName and Tags (those come from its hash)."""
    data = INPUT_PATH if cfg.enable_network_isolation else cfg.train_uri
    req: dict[str, Any] = {
        "AppSpecification": {
            "ImageUri": cfg.image_uri,
            "ContainerEntrypoint": ["smspark-submit", SPARK_JOB_SCRIPT],
            # The validate step writes the train split as CSV under a prefix.
            "ContainerArguments": ["--data", data, "--format", "csv", "--out", OUTPUT_PATH, "--target", cfg.target],
        },
        "ProcessingOutputConfig": {"Outputs": [{
            "OutputName": OUTPUT_NAME,
            "S3Output": {"S3Uri": cfg.output_uri.rstrip("/"), "LocalPath": OUTPUT_PATH, "S3UploadMode": "EndOfJob"},
        }]},
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": cfg.instance_count,
            "InstanceType": cfg.instance_type,
            "VolumeSizeInGB": cfg.volume_size_gb,
        }},
        "StoppingCondition": {"MaxRuntimeInSeconds": cfg.max_runtime_seconds},
        "RoleArn": cfg.role_arn,
        "NetworkConfig": {
            "EnableNetworkIsolation": cfg.enable_network_isolation,
            "EnableInterContainerTrafficEncryption": cfg.enable_inter_container_traffic_encryption,
        },
    }
    if cfg.enable_network_isolation:
        req["ProcessingInputs"] = [{
            "InputName": "train",
            "S3Input": {"S3Uri": cfg.train_uri, "LocalPath": INPUT_PATH, "S3DataType": "S3Prefix",
                        "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"},
        }]
    if cfg.output_kms_key_id:
        req["ProcessingOutputConfig"]["KmsKeyId"] = cfg.output_kms_key_id
    if cfg.volume_kms_key_id:
        req["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] = cfg.volume_kms_key_id
    if cfg.subnets:
        req["NetworkConfig"]["VpcConfig"] = {"Subnets": list(cfg.subnets), "SecurityGroupIds": list(cfg.security_group_ids)}
    return req


def choose_engine(engine: str, s3: Any, train_uri: str) -> str:
    """`local` or `spark`; `auto` by the train split's size in S3 (AUTO_SPARK_BYTES)."""
    if engine not in ENGINES:
        raise InputError("baseline_engine", f"{engine!r} is not one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    loc = aws.S3Uri.parse(train_uri, "train_data")
    size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix()):
        size += sum(int(o.get("Size", 0)) for o in page.get("Contents", []))
    chosen = "spark" if size > AUTO_SPARK_BYTES else "local"
    log.info("baseline engine auto: the train split is %d bytes, the %s engine profiles it", size, chosen)
    return chosen


def find_job(sm: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(sm.describe_processing_job(ProcessingJobName=name))
    except aws.ClientError as exc:
        if aws.is_not_found(exc):
            return None
        raise


def stop_job(sm: Any, name: str) -> None:
    try:
        if (find_job(sm, name) or {}).get(STATUS) == "InProgress":
            sm.stop_processing_job(ProcessingJobName=name)
            log.info("asked SageMaker to stop processing job %s", name)
    except aws.ClientError as exc:
        log.warning("cannot stop processing job %s: %s: %s", name, aws.error_code(exc), aws.error_message(exc))


def stop_run_jobs(sm: Any, run_id: str) -> list[str]:
    """Stop the run's baseline jobs still running (the exit handler's work, with the training jobs). SageMaker
    Search does not index processing jobs, so the running ones are listed and matched by the run's tag."""
    stopped = []
    for page in sm.get_paginator("list_processing_jobs").paginate(StatusEquals="InProgress"):
        for job in page.get("ProcessingJobSummaries") or []:
            found = sm.list_tags(ResourceArn=job["ProcessingJobArn"]).get("Tags") or []
            # Checked on the tag's value: a run must never stop another run's jobs.
            if {"Key": RUN_TAG, "Value": run_id[:256]} in found:
                stop_job(sm, job["ProcessingJobName"])
                stopped.append(job["ProcessingJobName"])
    return stopped


@dataclass(frozen=True)
class BaselineJobResult:
    job_name: str
    job_arn: str
    baseline_uri: str
    reattached: bool


def run_baseline_job(
    cfg: BaselineJobConfig, *, run_id: str, task: str, base_job_name: str, backoff: Backoff | None = None
) -> BaselineJobResult:
    from kfp_pipelines.sagemaker.training import choose_attempt, stop_on_sigterm

    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    request = build_request(cfg)
    request_hash = inputs_hash(request)

    def names(attempt: int) -> str:
        return job_name(f"{base_job_name}-baseline", run_id, task, request_hash, attempt)

    name, existed = choose_attempt(lambda n: find_job(sm, n), names, status_field=STATUS, kind="processing job",
                                   attempts=MAX_ATTEMPTS)
    request = {"ProcessingJobName": name, **request, "Tags": tags(run_id, task, request_hash, "sagemaker-processing")}
    reattached = existed
    if not existed:
        try:
            sm.create_processing_job(**request)
            log.info("created processing job %s (%s x%d)", name, cfg.instance_type, cfg.instance_count)
        except aws.ClientError as exc:
            if aws.error_code(exc) != "ResourceInUse":
                raise StepFailed(f"CreateProcessingJob {name}: {aws.error_code(exc)}: {aws.error_message(exc)}") from exc
            reattached = True
    timeout = cfg.max_runtime_seconds + PENDING_MARGIN_SECONDS
    with stop_on_sigterm(lambda: stop_job(sm, name)):
        desc, _ = wait(name, lambda: sm.describe_processing_job(ProcessingJobName=name), backoff or Backoff(), timeout,
                       kind="processing job", status_field=STATUS)
    where = aws.S3Uri.parse(cfg.output_uri, "output_uri")
    missing = [f for f in FILES if not aws.exists(s3, where.join(f))]
    if missing:
        raise StepFailed(f"processing job {name} completed without writing {', '.join(missing)} to {where}")
    return BaselineJobResult(name, str(desc.get("ProcessingJobArn", "")), str(where), reattached)
