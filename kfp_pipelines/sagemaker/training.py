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

import contextlib
import gzip
import hashlib
import io
import json
import logging
import re
import signal
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.sagemaker import ack, local_runner
from kfp_pipelines.sagemaker.config import (
    RUN_TAG,
    TrainingJobConfig,
    build_request,
    checkpoint_uri,
    inputs_hash,
    job_name,
    run_label,
    tags,
)
from kfp_pipelines.sagemaker.logs import LogTail
from kfp_pipelines.sagemaker.waiter import Backoff, wait

log = logging.getLogger("kanari.pipeline")

BACKENDS = ("sagemaker", "ack", "local")
PENDING_MARGIN_SECONDS = 3600
# Jobs that ended without a model: waiting on them again can only fail again, so a new attempt starts.
ENDED_UNSUCCESSFULLY = ("Failed", "Stopped")
MAX_ATTEMPTS = 10
STOPPABLE = ("InProgress",)
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
        if aws.is_not_found(exc):
            return None
        raise


def choose_attempt(
    lookup: Callable[[str], dict[str, Any] | None], names: Callable[[int], str], *,
    status_field: str = "TrainingJobStatus", kind: str = "training job", attempts: int = MAX_ATTEMPTS,
) -> tuple[str, bool]:
    """The job name this step works on, and whether that job already exists (a restarted step).

    The first attempt whose job does not exist or has not ended Failed/Stopped: a restarted step
    re-attaches to a job that is running or Completed, and retries one that ended without a result.
    """
    for attempt in range(attempts):
        name = names(attempt)
        desc = lookup(name)
        if desc is None:
            return name, False
        status = str(desc.get(status_field, ""))
        if status not in ENDED_UNSUCCESSFULLY:
            log.info("re-attached to %s %s (%s)", kind, name, status)
            return name, True
        log.info("%s %s ended %s (%s); starting attempt %d", kind, name, status,
                 desc.get("FailureReason", "no reason given"), attempt + 1)
    raise StepFailed(f"{attempts} {kind}s of this step ended Failed or Stopped; not starting another "
                     f"(the last: {names(attempts - 1)})")


def create_or_attach(sm: Any, request: dict[str, Any], exists: bool = False) -> bool:
    """Returns True when the job already existed (a restarted step)."""
    name = request["TrainingJobName"]
    if exists:
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


class Cancelled(Exception):
    """The step's pod was asked to stop (the run was terminated): stop the job too."""


@contextlib.contextmanager
def stop_on_sigterm(stop: Callable[[], object]) -> Iterator[None]:
    """KFP deletes a terminated run's pods: SIGTERM first, then SIGKILL after the grace period.

    Within the grace period, stop the training job this step started; the pipeline's exit handler
    stops it too (it runs after the run ends, also when this pod was killed outright).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Cancelled()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Cancelled:
        stop()
        raise StepFailed("the step was terminated (the pipeline run was cancelled); its training job was "
                         "asked to stop") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_job(sm: Any, name: str) -> bool:
    """StopTrainingJob if the job is still running; True when a stop was requested."""
    try:
        desc = find_job(sm, name)
        if desc is None or desc.get("TrainingJobStatus") not in STOPPABLE:
            return False
        sm.stop_training_job(TrainingJobName=name)
    except aws.ClientError as exc:
        log.warning("cannot stop training job %s: %s: %s", name, aws.error_code(exc), aws.error_message(exc))
        return False
    log.info("asked SageMaker to stop training job %s", name)
    return True


def stop_run_jobs(sm: Any, run_id: str) -> list[str]:
    """Stop every running training job tagged with this pipeline run (the exit handler's work).

    The job names are derived from each step's inputs, which the exit handler does not see; the run's
    tag finds them (SageMaker Search over TrainingJob tags).
    """
    stopped = []
    kwargs: dict[str, Any] = {
        "Resource": "TrainingJob",
        "SearchExpression": {"Filters": [
            {"Name": f"Tags.{RUN_TAG}", "Operator": "Equals", "Value": run_id[:256]},
            {"Name": "TrainingJobStatus", "Operator": "Equals", "Value": "InProgress"},
        ]},
        "MaxResults": 100,
    }
    while True:
        page = sm.search(**kwargs)
        for result in page.get("Results") or []:
            name = (result.get("TrainingJob") or {}).get("TrainingJobName")
            if name and stop_job(sm, name):
                stopped.append(name)
        if not page.get("NextToken"):
            return stopped
        kwargs["NextToken"] = page["NextToken"]


def stop_run_ack_jobs(api: Any, namespace: str, run_id: str) -> list[str]:
    """Delete the run's ACK TrainingJobs that have not ended: the ACK controller stops the SageMaker job."""
    listed = api.list_namespaced_custom_object(ack.GROUP, ack.VERSION, namespace, ack.PLURAL,
                                               label_selector=f"{RUN_TAG}={run_label(run_id)}")
    stopped = []
    for obj in listed.get("items") or []:
        # Checked here too: a run must never delete another run's jobs, whatever the server did with the selector.
        if ((obj.get("metadata") or {}).get("labels") or {}).get(RUN_TAG) != run_label(run_id):
            continue
        if ack.describe_from_status(obj).get("TrainingJobStatus") in ("Completed", *ENDED_UNSUCCESSFULLY):
            continue
        name = obj["metadata"]["name"]
        api.delete_namespaced_custom_object(ack.GROUP, ack.VERSION, namespace, ack.PLURAL, name)
        log.info("deleted TrainingJob %s/%s (ACK stops the SageMaker job)", namespace, name)
        stopped.append(name)
    return stopped


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

    def names(attempt: int) -> str:
        return job_name(base_job_name, run_id, task, request_hash, attempt)

    if backend == "ack":
        from kfp_pipelines import kube

        api = kube.custom_objects_api()
        name, existed = choose_attempt(lambda n: ack.find(api, ack_namespace, n), names)
    else:
        name, existed = choose_attempt(lambda n: find_job(sm, n), names)
    request = {"TrainingJobName": name, **request, "Tags": tags(run_id, task, request_hash, backend)}
    if "CheckpointConfig" in request:
        request["CheckpointConfig"] = {**request["CheckpointConfig"],
                                       "S3Uri": checkpoint_uri(cfg.checkpoint_s3_uri, name)}

    # First side effect: the code, stored once per content digest.
    if not aws.exists(s3, source_uri):
        aws.put_bytes(s3, source_uri, source, "application/x-tar")
    backoff = backoff or Backoff()
    timeout = cfg.max_runtime_seconds + cfg.max_wait_seconds + PENDING_MARGIN_SECONDS
    where = local_runner.artifact_locations(request)
    polls = 0
    if backend == "sagemaker":
        reattached = create_or_attach(sm, request, existed)
        tail = LogTail(aws.client("logs"), name)
        with stop_on_sigterm(lambda: stop_job(sm, name)):
            desc, record = wait(name, lambda: sm.describe_training_job(TrainingJobName=name), backoff, timeout,
                                on_poll=tail.poll)
        polls = record.polls
    elif backend == "ack":
        tail = LogTail(aws.client("logs"), name)
        with stop_on_sigterm(lambda: stop_job(sm, name)):
            desc, record, reattached = ack.submit_and_wait(api, request, ack_namespace, backoff, timeout,
                                                           on_poll=tail.poll)
        polls = record.polls
    else:
        reattached = create_or_attach(sm, request, existed)
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
