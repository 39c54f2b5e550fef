"""Run a training job to completion through one of three backends, idempotently.

  sagemaker  CreateTrainingJob through boto3, then DescribeTrainingJob with backoff
  ack        an ACK TrainingJob custom resource, then its status with backoff
  local      the job recorded through the SageMaker API, the program run here under the
             container contract (local_runner), artifacts uploaded where SageMaker puts them

The job name is derived from (pipeline run, task, inputs): a restarted step finds the job its
previous attempt created and waits for it instead of failing or starting a second one.
Everything that can be checked is checked before the first side effect.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.sagemaker import ack, local_runner
from kfp_pipelines.sagemaker.config import (
    TrainingJobConfig,
    build_request,
    inputs_hash,
    job_name,
    tags,
)
from kfp_pipelines.sagemaker.waiter import Backoff, wait

log = logging.getLogger("kanari.pipeline")

BACKENDS = ("sagemaker", "ack", "local")
PENDING_MARGIN_SECONDS = 3600
UNRESOLVED_DIGEST = "unresolved"
ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)(?::([^@]+))?(?:@(sha256:[0-9a-f]{64}))?$")


def default_source_dir() -> Path:
    from kfp_pipelines import training

    return Path(training.__file__).parent


@dataclass(frozen=True)
class TrainingResult:
    job_name: str
    job_arn: str
    model_uri: str
    output_uri: str
    image_uri: str
    image_digest: str
    instance_type: str
    instance_count: int
    source_digest: str
    backend: str
    reattached: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    polls: int = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "training_job_name": self.job_name,
            "training_job_arn": self.job_arn,
            "image_uri": self.image_uri,
            "image_digest": self.image_digest,
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "source_digest": self.source_digest,
            "output_uri": self.output_uri,
            "backend": self.backend,
            "reattached": self.reattached,
            "metrics": self.metrics,
        }


def package_source(source_dir: Path, entry_point: str) -> tuple[bytes, str]:
    """sourcedir.tar.gz with stable bytes (no mtimes), and a digest of its contents."""
    if not source_dir.is_dir():
        raise InputError("source_dir", f"{source_dir} is not a directory")
    if not (source_dir / entry_point).is_file():
        raise InputError("entry_point", f"{entry_point} is not in {source_dir}")
    files = sorted(
        p for p in source_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    digest = hashlib.sha256()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for path in files:
            rel = str(path.relative_to(source_dir))
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue(), digest.hexdigest()[:16]


def find_job(sm: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(sm.describe_training_job(TrainingJobName=name))
    except aws.ClientError as exc:
        msg = aws.error_message(exc).lower()
        if aws.error_code(exc) in ("ResourceNotFound", "ValidationException") and (
            "not found" in msg or "could not find" in msg or "does not exist" in msg
        ):
            return None
        raise


def create_or_attach(sm: Any, request: dict[str, Any]) -> bool:
    """Returns True when the job already existed (a restarted step)."""
    name = request["TrainingJobName"]
    if find_job(sm, name) is not None:
        log.info("re-attached to training job %s", name)
        return True
    try:
        sm.create_training_job(**request)
    except aws.ClientError as exc:
        if aws.error_code(exc) == "ResourceInUse":
            log.info("re-attached to training job %s (created concurrently)", name)
            return True
        raise StepFailed(f"CreateTrainingJob {name}: {aws.error_code(exc)}: {aws.error_message(exc)}") from exc
    log.info("created training job %s (%s x%d)", name, request["ResourceConfig"]["InstanceType"],
             request["ResourceConfig"]["InstanceCount"])
    return False


def resolve_image_digest(image_uri: str) -> str:
    """The image digest for lineage: pinned in the URI, or looked up in ECR."""
    m = ECR_IMAGE.match(image_uri)
    if "@sha256:" in image_uri:
        return image_uri.rsplit("@", 1)[1]
    if not m:
        log.warning("image %s is not an ECR image; its digest is recorded as %s", image_uri, UNRESOLVED_DIGEST)
        return UNRESOLVED_DIGEST
    account, region, repo, tag = m.group(1), m.group(2), m.group(3), m.group(4) or "latest"
    try:
        ecr = aws.client("ecr", region=region)
        images = ecr.describe_images(registryId=account, repositoryName=repo, imageIds=[{"imageTag": tag}])
        return str(images["imageDetails"][0]["imageDigest"])
    except (aws.ClientError, IndexError, KeyError) as exc:
        log.warning("cannot resolve the digest of %s (%s); recorded as %s", image_uri, exc, UNRESOLVED_DIGEST)
        return UNRESOLVED_DIGEST


def read_metrics(s3: Any, output_uri: aws.S3Uri) -> dict[str, Any]:
    """metrics.json from the job's output.tar.gz (what the script wrote to SM_OUTPUT_DATA_DIR)."""
    if not aws.exists(s3, output_uri):
        log.warning("no %s: the job reported no metrics", output_uri)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        aws.extract_tar_gz(aws.get_bytes(s3, output_uri), Path(tmp))
        path = Path(tmp) / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}


def preflight(cfg: TrainingJobConfig, backend: str, ack_namespace: str, s3: Any, sm: Any) -> None:
    """Checks that need AWS but change nothing."""
    if backend not in BACKENDS:
        raise InputError("training_backend", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "ack" and not ack_namespace:
        raise InputError("ack_namespace", "the ack backend needs the namespace to create the TrainingJob in")
    if backend == "local" and ".amazonaws.com" in str(sm.meta.endpoint_url):
        # Recording the job through real SageMaker would also start it there.
        raise InputError(
            "training_backend",
            f"the local backend records its job through an emulated SageMaker endpoint (AWS_ENDPOINT_URL); "
            f"{sm.meta.endpoint_url} is AWS itself",
        )
    aws.check_bucket(s3, aws.S3Uri.parse(cfg.output_s3_uri, "output_s3_uri").bucket, "output_s3_uri")
    for name, uri in sorted(cfg.channels.items()):
        if not aws.list_keys(s3, aws.S3Uri.parse(uri, f"channels.{name}")):
            raise InputError(f"channels.{name}", f"no objects under {uri}")


def run_training(
    cfg: TrainingJobConfig,
    *,
    backend: str,
    run_id: str,
    task: str,
    base_job_name: str,
    source_dir: Path,
    ack_namespace: str = "",
    backoff: Backoff | None = None,
    workdir: Path | None = None,
) -> TrainingResult:
    sm = aws.client("sagemaker")
    s3 = aws.client("s3")
    preflight(cfg, backend, ack_namespace, s3, sm)
    source, source_digest = package_source(source_dir, cfg.entry_point)
    output = aws.S3Uri.parse(cfg.output_s3_uri, "output_s3_uri")
    source_uri = output.join("source", source_digest, "sourcedir.tar.gz")
    request = build_request(cfg, source_uri=str(source_uri), region=sm.meta.region_name)
    request_hash = inputs_hash(request)
    name = job_name(base_job_name, run_id, task, request_hash)
    request = {"TrainingJobName": name, **request, "Tags": tags(run_id, task, request_hash, backend)}

    # First side effect: the code, stored once per content digest.
    if not aws.exists(s3, source_uri):
        aws.put_bytes(s3, source_uri, source, "application/x-tar")
    backoff = backoff or Backoff()
    timeout = cfg.max_runtime_seconds + cfg.max_wait_seconds + PENDING_MARGIN_SECONDS
    where = local_runner.artifact_locations(request)
    polls = 0
    if backend == "sagemaker":
        reattached = create_or_attach(sm, request)
        desc, record = wait(name, lambda: sm.describe_training_job(TrainingJobName=name), backoff, timeout)
        polls = record.polls
    elif backend == "ack":
        from kfp_pipelines import kube

        desc, record, reattached = ack.submit_and_wait(kube.custom_objects_api(), request, ack_namespace, backoff,
                                                       timeout)
        polls = record.polls
    else:
        reattached = create_or_attach(sm, request)
        if reattached and aws.exists(s3, where.model):
            log.info("training job %s already produced %s", name, where.model)
        else:
            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                local_runner.run(request, s3, Path(tmp))
        desc = sm.describe_training_job(TrainingJobName=name)

    model_uri = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or str(where.model)
    if not aws.exists(s3, aws.S3Uri.parse(model_uri, "model")):
        raise StepFailed(f"training job {name} completed but its model artifact {model_uri} does not exist")
    job_arn = desc.get("TrainingJobArn") or (sm.describe_training_job(TrainingJobName=name)["TrainingJobArn"])
    metrics = read_metrics(s3, where.output)
    return TrainingResult(
        job_name=name,
        job_arn=str(job_arn),
        model_uri=model_uri,
        output_uri=str(where.output),
        image_uri=cfg.image_uri,
        image_digest=resolve_image_digest(cfg.image_uri),
        instance_type=cfg.instance_type,
        instance_count=cfg.instance_count,
        source_digest=source_digest,
        backend=backend,
        reattached=reattached,
        metrics=metrics,
        polls=polls,
    )
