"""What each pipeline step does, as plain functions; the KFP components only adapt their I/O.

Each step checks its inputs before its first side effect. The release record (a dict) is the
pipeline's output: the register-and-deploy branch and the rejection branch both produce one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kanari.api import v1alpha1

from kfp_pipelines import aws, data, deployment, evaluation, gate, registry
from kfp_pipelines.errors import InputError, StepFailed

log = logging.getLogger("kanari.pipeline")

TRAIN, VALIDATION, TEST = "train", "validation", "test"


@dataclass(frozen=True)
class PreparedData:
    channels: dict[str, str]
    test_uri: str
    training_output_uri: str
    dataset_version: str
    rows: dict[str, int]
    positives: dict[str, int]
    duplicates_dropped: int


def run_prefix(bucket: str, s3_prefix: str, group: str) -> aws.S3Uri:
    return aws.S3Uri(bucket, "").join(s3_prefix, group)


def validate(
    *, dataset_uri: str, target: str, bucket: str, s3_prefix: str, model_package_group: str, model_name: str,
    namespace: str, git_sha: str, seed: int, run_id: str,
) -> PreparedData:
    """Parameters, registry group, data schema and leakage guard; then the split, written to S3."""
    deployment.check_names(model_name, namespace)
    if not git_sha.strip():
        raise InputError("git_sha", "required: the commit of the training code, recorded in the model's lineage")
    s3, sm = aws.client("s3"), aws.client("sagemaker")
    aws.check_bucket(s3, bucket)
    gate.check_group(sm, model_package_group)
    ds = data.load(dataset_uri, s3)
    features = data.validate(ds.frame, target)
    parts = data.split(ds.frame[[*features, target]], target, seed)
    if parts.duplicates_dropped:
        log.info("dropped %d duplicate feature rows before splitting", parts.duplicates_dropped)
    base = run_prefix(bucket, s3_prefix, model_package_group)
    prefix = base.join("runs", run_id, "data")
    frames = {TRAIN: parts.train, VALIDATION: parts.validation, TEST: parts.test}
    for name, frame in frames.items():
        aws.put_bytes(s3, prefix.join(name, f"{name}.csv"), data.to_csv(frame), "text/csv")
    rows = {k: len(v) for k, v in frames.items()}
    positives = {k: int(v[target].sum()) for k, v in frames.items()}
    log.info("dataset %s (%s): %s rows, positives %s", dataset_uri, ds.version, rows, positives)
    return PreparedData(
        channels={TRAIN: f"{prefix.join(TRAIN)}/", VALIDATION: f"{prefix.join(VALIDATION)}/"},
        test_uri=f"{prefix.join(TEST)}/",
        training_output_uri=str(base.join("training")),
        dataset_version=ds.version,
        rows=rows,
        positives=positives,
        duplicates_dropped=parts.duplicates_dropped,
    )


def evaluate(*, model_uri: str, test_uri: str) -> tuple[dict[str, float], str, evaluation.Evaluation]:
    s3 = aws.client("s3")
    ev, _ = evaluation.evaluate(s3, model_uri, test_uri)
    report = evaluation.model_dir(model_uri).join("evaluation.json")
    aws.put_json(s3, report, evaluation.quality_document(ev))
    return ev.scores, str(report), ev


def judge(*, model_package_group: str, scores: dict[str, float], gate_metric: str,
          gate_tolerance: float) -> gate.GateVerdict:
    gate.check_gate_parameters(gate_metric, gate_tolerance)
    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    gate.check_group(sm, model_package_group)
    champion = gate.find_champion(sm, s3, model_package_group)
    verdict = gate.decide(scores, champion, gate_metric, gate_tolerance)
    log.info("quality gate %s: %s", "PASSED" if verdict.passed else "REJECTED", verdict.reason)
    return verdict


def write_baseline(*, train_uri: str, target: str, model_uri: str) -> str:
    """The drift baseline (SageMaker Model Monitor statistics.json/constraints.json) beside the model."""
    from kanari.drift.model_monitor import CONSTRAINTS, STATISTICS, baseline_documents

    s3 = aws.client("s3")
    frame = evaluation.read_csv_prefix(s3, train_uri, "train_data")
    if target not in frame.columns:
        raise InputError("target", f"no column {target!r} in the train split")
    statistics, constraints = baseline_documents(frame, target=target)
    where = evaluation.model_dir(model_uri).join("baseline")
    aws.put_json(s3, where.join(STATISTICS), statistics)
    aws.put_json(s3, where.join(CONSTRAINTS), constraints)
    log.info("drift baseline written to %s (%d rows profiled)", where, len(frame))
    return str(where)


def register(
    *, model_uri: str, model_metadata: dict[str, Any], model_package_group: str, scores: dict[str, float],
    evaluation_uri: str, baseline_uri: str, dataset_uri: str, dataset_version: str, git_sha: str, run_id: str,
    auto_approve: bool, reason: str, model_name: str, serving_image: str, gate_reason: str,
) -> tuple[str, str]:
    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    gate.check_group(sm, model_package_group)
    # Every document the package points at must exist before the one call that creates it.
    for uri in (model_uri, evaluation_uri, f"{baseline_uri}/statistics.json", f"{baseline_uri}/constraints.json"):
        if not aws.exists(s3, aws.S3Uri.parse(uri, "model")):
            raise StepFailed(f"{uri} does not exist; nothing was registered")
    lineage = registry.ReleaseLineage(
        git_sha=git_sha,
        dataset_uri=dataset_uri,
        dataset_version=dataset_version,
        pipeline_run=run_id,
        training_job_arn=str(model_metadata.get("training_job_arn", "")),
        image_uri=str(model_metadata.get("image_uri", "")),
        image_digest=str(model_metadata.get("image_digest", "")),
        source_digest=str(model_metadata.get("source_digest", "")),
    )
    if not lineage.training_job_arn:
        raise StepFailed("the model artifact carries no training_job_arn; its lineage would be incomplete")
    metadata = registry.customer_metadata(lineage, {k: v for k, v in scores.items() if k in evaluation.METRICS},
                                          model_name, reason, gate_reason, baseline_uri)
    request = registry.package_request(
        group=model_package_group,
        model_uri=model_uri,
        serving_image=serving_image or registry.default_serving_image(sm.meta.region_name),
        evaluation_uri=evaluation_uri,
        baseline_uri=baseline_uri,
        lineage=lineage,
        metadata=metadata,
        auto_approve=auto_approve,
        reason=reason,
    )
    arn, status, existed = registry.register(sm, request)
    if not existed:
        registry.record_lineage(dataset_uri, dataset_version, arn)
    return arn, status


@dataclass(frozen=True)
class Release:
    """The pipeline's result, whichever branch of the gate ran."""

    pipeline_run_id: str
    gate_passed: bool
    gate_reason: str
    scores: dict[str, float]
    training_job_name: str
    training_job_arn: str
    model_uri: str
    model_package_arn: str = ""
    approval_status: str = ""
    baseline_uri: str = ""
    manifest_path: str = ""
    applied: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy(
    *, model_package_arn: str, baseline_uri: str, model_metadata: dict[str, Any], dataset_uri: str,
    dataset_version: str, git_sha: str, run_id: str, model_name: str, namespace: str, manifest_dir: str,
    apply_manifest: bool, artifact_path: str,
) -> tuple[dict[str, Any], str, str]:
    """Render the ModelDeployment; write it to the GitOps path and/or apply it. (object, path, applied)."""
    lineage = v1alpha1.Lineage(
        modelPackageArn=model_package_arn,
        trainingJob=str(model_metadata.get("training_job_arn", "")),
        pipelineRun=run_id,
        datasetUri=dataset_uri,
        gitSha=git_sha,
        imageDigest=str(model_metadata.get("image_digest", "")),
    )
    path = deployment.manifest_path(manifest_dir, namespace, model_name) if manifest_dir else Path(artifact_path)
    existing = deployment.read_existing(path) if manifest_dir else None
    obj = deployment.build(existing, name=model_name, namespace=namespace, model_package_arn=model_package_arn,
                           baseline_uri=baseline_uri, lineage=lineage, dataset_version=dataset_version)
    deployment.write(obj, path)
    if Path(artifact_path) != path:
        deployment.write(obj, Path(artifact_path))
    applied = ""
    if apply_manifest:
        from kfp_pipelines import kube

        applied = deployment.apply(kube.custom_objects_api(), obj)
        log.info("ModelDeployment %s/%s %s in the cluster", namespace, model_name, applied)
    log.info("ModelDeployment for %s written to %s", model_package_arn, path)
    return obj, str(path), applied
