"""What each pipeline step does, as plain functions; the KFP components only adapt their I/O.

Each step checks its inputs before its first side effect. The release record (a dict) is the
pipeline's output: the register-and-deploy branch and the rejection branch both produce one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kanari import registry_metadata as keys
from kanari.api import v1alpha1
from kanari.retrain.training_run import DriftAlert
from pydantic import ValidationError

from kfp_pipelines import aws, data, deployment, evaluation, gate, neuron, registry
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


def drift_alert_of(raw: dict[str, Any] | None) -> DriftAlert | None:
    """The `drift_alert` parameter, typed; {} when the run was not started by an alert."""
    if not raw:
        return None
    try:
        return DriftAlert.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError("drift_alert." + ".".join(str(p) for p in err["loc"]), str(err["msg"])) from None


def check_parameters(*, model_name: str, namespace: str, git_sha: str, reason: str, dataset_uri: str,
                     drift_alert: dict[str, Any] | None = None, serving_accelerator: str = "cpu") -> None:
    """Everything about the run's parameters that would otherwise fail a later step (after training was billed)."""
    deployment.check_names(model_name, namespace)
    if not git_sha.strip():
        raise InputError("git_sha", "required: the commit of the training code, recorded in the model's lineage")
    for parameter, value in (("reason", reason), ("git_sha", git_sha), ("model_name", model_name),
                             ("dataset_uri", dataset_uri)):
        registry.check_metadata_value(parameter, value)
    drift_alert_of(drift_alert)
    target = registry.serving_target(serving_accelerator)
    if target.accelerator == "inferentia2":
        # The Neuron runtime serves a torch-neuronx compiled model (format pytorch-neuronx); the reference
        # training script writes a CPU state dict. Registering it for Inferentia would deploy a model the
        # runtime cannot load.
        raise InputError("serving_accelerator", "inferentia2 needs a Neuron-compiled model artifact; Kanari's "
                                                "reference training script produces a CPU model (use cpu)")


def validate(
    *, dataset_uri: str, target: str, bucket: str, s3_prefix: str, model_package_group: str, model_name: str,
    namespace: str, git_sha: str, seed: int, run_id: str, reason: str = "", drift_alert: dict[str, Any] | None = None,
    neuron_compile: dict[str, Any] | None = None,
) -> PreparedData:
    """Parameters, registry group, data schema and leakage guard; then the split, written to S3."""
    check_parameters(model_name=model_name, namespace=namespace, git_sha=git_sha, reason=reason,
                     dataset_uri=dataset_uri, drift_alert=drift_alert)
    if neuron_compile:
        neuron.check_parameters(**neuron_compile)
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


def pr_curve_markdown(ev: evaluation.Evaluation) -> str:
    rows = ["| threshold | recall | precision |", "| ---: | ---: | ---: |"]
    if ev.pr is not None:
        rows += [f"| {t:.4f} | {r:.4f} | {p:.4f} |" for r, p, t in zip(ev.pr.x, ev.pr.y, ev.pr.thresholds,
                                                                         strict=True)]
    return (f"### Precision-recall curve (test split, {ev.rows} rows, {ev.positives} positive)\n\n"
            f"PR-AUC {ev.scores.get('pr_auc', float('nan')):.4f}; no-skill {ev.scores.get('pr_auc_no_skill', 0):.4f}"
            "\n\n" + "\n".join(rows) + "\n")


def judge(*, model_package_group: str, scores: dict[str, float], gate_metric: str,
          gate_tolerance: float, test_uri: str) -> gate.GateVerdict:
    """The candidate against the Approved model, both scored on this run's test split.

    The Approved model's recorded scores are from its own, older test split: after drift the data has
    moved, and comparing across the two would judge the data, not the models.
    """
    gate.check_gate_parameters(gate_metric, gate_tolerance)
    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    gate.check_group(sm, model_package_group)
    champion = gate.find_champion(sm, s3, model_package_group)
    if champion is not None:
        try:
            ev, _ = evaluation.evaluate(s3, champion.model_uri, test_uri)
        except (InputError, StepFailed) as exc:
            verdict = gate.GateVerdict(
                False, f"the Approved model {champion.arn} cannot be scored on this run's test split ({exc}); "
                       "cannot compare, not promoted", gate_metric, scores.get(gate_metric), None, champion.arn)
            log.info("quality gate REJECTED: %s", verdict.reason)
            return verdict
        log.info("Approved model %s on this run's test split: %s (recorded on its own split: %s)", champion.arn,
                 ", ".join(f"{k}={ev.scores[k]:.4f}" for k in evaluation.METRICS),
                 ", ".join(f"{k}={v:.4f}" for k, v in sorted(champion.scores.items()) if k in evaluation.METRICS))
        champion = gate.Champion(champion.arn, ev.scores, champion.model_uri)
    verdict = gate.decide(scores, champion, gate_metric, gate_tolerance)
    log.info("quality gate %s: %s", "PASSED" if verdict.passed else "REJECTED", verdict.reason)
    return verdict


def calibrate(*, model_uri: str, test_uri: str) -> str:
    """Fit the score calibration on the holdout (the test split the model was evaluated on) and write
    calibration.json beside the model; its URI, or "" when the task is not binary classification (nothing
    is written, nothing will be registered). The evaluation's scores stay the raw model's: calibration is
    monotone, so ranking metrics do not change, and the decision threshold applies to raw scores."""
    from kanari.judging.cbpe import CALIBRATION

    s3 = aws.client("s3")
    holdout = evaluation.score_holdout(s3, model_uri, test_uri)
    calibration = evaluation.calibration_for(holdout.labels, holdout.scores)
    if calibration is None:
        log.info("no calibration: the holdout's labels are not binary 0/1 (calibration is for binary classifiers)")
        return ""
    where = evaluation.model_dir(model_uri).join(CALIBRATION)
    aws.put_json(s3, where, evaluation.calibration_document(
        calibration, float(holdout.info["threshold"]), test_uri, len(holdout.labels), int(holdout.labels.sum())))
    log.info("score calibration (isotonic, %d points) fitted on %d holdout rows, written to %s",
             len(calibration.x), len(holdout.labels), where)
    return str(where)


def calibration_properties(s3: Any, calibration_uri: str) -> dict[str, str]:
    """The package's reference to its calibration: the URI and the SHA-256 of the bytes registered,
    checked with the same reader the monitor uses (a malformed document is never registered)."""
    import hashlib

    from kanari import registry_metadata as keys

    if not calibration_uri:
        return {}
    loc = aws.S3Uri.parse(calibration_uri, "calibration_uri")
    if not aws.exists(s3, loc):
        raise StepFailed(f"{calibration_uri} does not exist; nothing was registered")
    body = aws.get_bytes(s3, loc)
    props = {keys.CALIBRATION_URI: str(loc), keys.CALIBRATION_SHA256: hashlib.sha256(body).hexdigest()}
    try:
        keys.read_calibration(props, lambda _uri: body)
    except keys.CalibrationError as exc:
        raise StepFailed(f"{exc}; nothing was registered") from None
    for parameter, value in props.items():
        registry.check_metadata_value(parameter, value)
    return props


def write_baseline(
    *, train_uri: str, target: str, model_uri: str, engine: str = "local", spark: dict[str, Any] | None = None,
    run_id: str = "", task: str = "", base_job_name: str = "kanari", poll_initial_seconds: float = 10.0,
) -> str:
    """The drift baseline (SageMaker Model Monitor statistics.json/constraints.json) beside the model.

    engine: local (profiled in this pod), spark (a SageMaker Processing job on the Spark baseline image; `spark`
    holds its parameters, see sagemaker.processing.BaselineJobConfig) or auto (spark past a size)."""
    from kanari.drift.model_monitor import CONSTRAINTS, SAMPLES, STATISTICS, baseline_documents, samples_jsonl

    from kfp_pipelines.sagemaker import processing
    from kfp_pipelines.sagemaker.waiter import Backoff

    s3 = aws.client("s3")
    where = evaluation.model_dir(model_uri).join("baseline")
    if processing.choose_engine(engine, s3, train_uri) == "spark":
        cfg = processing.parse_config(train_uri=train_uri, output_uri=str(where), target=target, **(spark or {}))
        job = processing.run_baseline_job(cfg, run_id=run_id, task=task, base_job_name=base_job_name,
                                          backoff=Backoff(initial=poll_initial_seconds))
        log.info("drift baseline written to %s by processing job %s", job.baseline_uri, job.job_name)
        return job.baseline_uri
    frame = evaluation.read_csv_prefix(s3, train_uri, "train_data")
    if target not in frame.columns:
        raise InputError("target", f"no column {target!r} in the train split")
    statistics, constraints = baseline_documents(frame, target=target)
    aws.put_json(s3, where.join(STATISTICS), statistics)
    aws.put_json(s3, where.join(CONSTRAINTS), constraints)
    # Request bodies for the canary's warm-up gate (kanari.controller.warmup reads them from here).
    aws.put_bytes(s3, where.join(SAMPLES), samples_jsonl(frame, target=target).encode(), "application/x-ndjson")
    log.info("drift baseline written to %s (%d rows profiled)", where, len(frame))
    return str(where)


def register(
    *, model_uri: str, model_metadata: dict[str, Any], model_package_group: str, scores: dict[str, float],
    evaluation_uri: str, baseline_uri: str, dataset_uri: str, dataset_version: str, git_sha: str, run_id: str,
    auto_approve: bool, reason: str, model_name: str, serving_image: str, gate_reason: str,
    drift_alert: dict[str, Any] | None = None, serving_accelerator: str = "cpu", calibration_uri: str = "",
) -> tuple[str, str]:
    alert = drift_alert_of(drift_alert)
    build = neuron.build_of(model_metadata)
    if build is not None:
        # The compile step decided what this artifact runs on: compiled for inf2, or not compiled (CPU).
        serving_accelerator = neuron.serving_accelerator(build)
    target = registry.serving_target(serving_accelerator)
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
                                          model_name, reason, gate_reason, baseline_uri, alert)
    metadata.update(calibration_properties(s3, calibration_uri))
    if build is not None:
        # How the artifact was built (or that it was not compiled): the controller checks it before traffic moves.
        metadata.update(build.properties())
        if model_metadata.get("neuron_compile_job_arn"):
            metadata[keys.NEURON_COMPILE_JOB] = str(model_metadata["neuron_compile_job_arn"])
    request = registry.package_request(
        group=model_package_group,
        model_uri=model_uri,
        serving_image=serving_image or registry.default_serving_image(sm.meta.region_name, target.accelerator),
        evaluation_uri=evaluation_uri,
        baseline_uri=baseline_uri,
        lineage=lineage,
        metadata=metadata,
        auto_approve=auto_approve,
        reason=reason,
        target=target,
        model_name=model_name,
    )
    arn, status, existed = registry.register(sm, request)
    if not existed:
        registry.record_lineage(aws.client("sagemaker", max_attempts=registry.LINEAGE_MAX_ATTEMPTS),
                                dataset_uri=dataset_uri, dataset_version=dataset_version, model_package_arn=arn,
                                training_job_arn=lineage.training_job_arn, alert=alert)
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
    apply_manifest: bool, artifact_path: str, drift_alert: dict[str, Any] | None = None,
    serving_accelerator: str = "cpu",
) -> tuple[dict[str, Any], str, str]:
    """Render the ModelDeployment; write it to the GitOps path and/or apply it. (object, path, applied)."""
    alert = drift_alert_of(drift_alert)
    build = neuron.build_of(model_metadata)
    if build is not None:
        serving_accelerator = neuron.serving_accelerator(build)
    target = registry.serving_target(serving_accelerator)
    lineage = v1alpha1.Lineage(
        modelPackageArn=model_package_arn,
        trainingJob=str(model_metadata.get("training_job_arn", "")),
        pipelineRun=run_id,
        datasetUri=dataset_uri,
        datasetVersion=dataset_version,
        gitSha=git_sha,
        imageDigest=str(model_metadata.get("image_digest", "")),
        driftAlert=alert.alertname if alert else None,
        driftAlertFingerprint=alert.fingerprint if alert else None,
        driftAlertStartsAt=alert.startsAt if alert else None,
    )
    path = deployment.manifest_path(manifest_dir, namespace, model_name) if manifest_dir else Path(artifact_path)
    existing = deployment.read_existing(path) if manifest_dir else None
    obj = deployment.build(existing, name=model_name, namespace=namespace, model_package_arn=model_package_arn,
                           baseline_uri=baseline_uri, lineage=lineage, dataset_version=dataset_version,
                           model_format=target.model_format, accelerator=target.accelerator)
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
