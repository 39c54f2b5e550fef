"""The Kanari training pipeline (KFP v2).

validate data -> train (SageMaker, Trainium) -> evaluate -> quality gate (dsl.If) ->
  passed:   drift baseline, score calibration on the holdout -> Neuron compile (optional: neuron_target) ->
            register (Model Registry, lineage, calibration, Neuron build record) -> ModelDeployment (GitOps path / apply)
  rejected: record why
wrapped in an exit handler that stops the run's training jobs when the run fails or is terminated.
The pipeline's output is the release record (JSON) of whichever branch ran.

Compile-time settings (`compile_pipeline`, `kanari pipeline compile`): the component image (the
Dockerfile's `pipeline` target, pushed to your registry) and the pipeline root (where KFP's launcher
stores every step's output artifacts; an S3 prefix on EKS). Run-time settings: the parameters below,
and the run's Kubernetes service account (kfp.Client.run_pipeline(service_account=...): KFP v2 sets
it per run, which is where IRSA attaches the pipeline's IAM role).
"""
# Parameter defaults are KFP declarations (never mutated); kfp.local cannot run None defaults.
# ruff: noqa: B006

import re
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler, dsl, kubernetes

from kfp_pipelines.components import COMPONENT_IMAGE
from kfp_pipelines.components.data import validate_data
from kfp_pipelines.components.evaluation import calibrate_model, evaluate_model, quality_gate
from kfp_pipelines.components.neuron import neuron_compile
from kfp_pipelines.components.release import (
    emit_model_deployment,
    record_rejection,
    register_model,
    write_drift_baseline,
)
from kfp_pipelines.components.sagemaker_training import sagemaker_training_job, stop_training_jobs
from kfp_pipelines.data import BUILTIN_DATASET, BUILTIN_TARGET
from kfp_pipelines.deployment import PIPELINE_NAME
from kfp_pipelines.errors import InputError

DEFAULT_SERVICE_ACCOUNT = "kanari-pipeline"
# The pod of each step: small (the work happens in SageMaker), except evaluation (torch, the test split).
STEP_RESOURCES = {"cpu": "250m", "memory": "512Mi", "cpu_limit": "1", "memory_limit": "1Gi"}
EVALUATION_RESOURCES = {"cpu": "1", "memory": "2Gi", "cpu_limit": "2", "memory_limit": "4Gi"}
# AWS calls are retried by botocore; a step that still fails (a node drained, an API outage) is retried
# by KFP. Every step is idempotent: the job name, the registry ClientToken and the manifest path are
# derived from the run, so a retry re-attaches instead of doing the work twice.
RETRY = {"num_retries": 2, "backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}
# A retried training step starts a new SageMaker attempt only when the previous job ended Failed/Stopped
# (e.g. InsufficientCapacity); one retry, since each attempt bills instance time.
TRAINING_RETRY = {"num_retries": 1, "backoff_duration": "300s", "backoff_factor": 1.0}
NON_ROOT_UID = 65532
# kfp.local honours retry policies with real sleeps; a local run is watched by a person and fails fast.
_with_retries = True


def _step(task: Any, name: str, resources: dict[str, str] = STEP_RESOURCES, retry: dict[str, Any] = RETRY) -> Any:
    task.set_display_name(name)
    # Every step talks to AWS and takes time: results are never reused from KFP's cache.
    task.set_caching_options(False)
    task.set_cpu_request(resources["cpu"]).set_memory_request(resources["memory"])
    task.set_cpu_limit(resources["cpu_limit"]).set_memory_limit(resources["memory_limit"])
    if _with_retries:
        task.set_retry(**retry)
    # The image's user (see the Dockerfile's pipeline target), for namespaces under the restricted PSS.
    kubernetes.set_security_context(task, run_as_user=NON_ROOT_UID, run_as_group=NON_ROOT_UID, run_as_non_root=True)
    return task


def _training_pipeline(
    bucket: str,
    model_package_group: str,
    role_arn: str,
    git_sha: str,
    dataset_uri: str = BUILTIN_DATASET,
    target: str = BUILTIN_TARGET,
    model_name: str = "kanari-classifier",
    namespace: str = "default",
    s3_prefix: str = "kanari",
    seed: int = 7,
    training_backend: str = "sagemaker",
    instance_type: str = "ml.trn1.2xlarge",
    instance_count: int = 1,
    image_uri: str = "",
    hyperparameters: dict = {},
    max_runtime_seconds: int = 3600,
    use_spot: bool = False,
    max_wait_seconds: int = 0,
    checkpoint_s3_uri: str = "",
    subnets: list = [],
    security_group_ids: list = [],
    volume_kms_key_id: str = "",
    output_kms_key_id: str = "",
    enable_network_isolation: bool = False,
    enable_inter_container_traffic_encryption: bool = False,
    ack_namespace: str = "",
    poll_initial_seconds: float = 10.0,
    gate_metric: str = "pr_auc",
    gate_tolerance: float = 0.02,
    auto_approve: bool = False,
    reason: str = "",
    serving_image: str = "",
    manifest_dir: str = "",
    apply_manifest: bool = False,
    drift_alert: dict = {},
    neuron_target: str = "",
    neuron_compile_instance_type: str = "ml.trn1.2xlarge",
    neuron_compile_image: str = "",
    neuron_batch_size: int = 1,
    baseline_engine: str = "local",
    baseline_image_uri: str = "",
    baseline_instance_type: str = "ml.m5.4xlarge",
    baseline_instance_count: int = 2,
):
    """Train, gate, register and deploy a binary classifier.

    The release record (JSON: gate verdict, scores, training job, package, manifest) is the output of
    the branch that ran: the ModelDeployment step's or the rejection step's. (KFP allows no pipeline
    output from inside an exit handler.)

    Args:
        bucket: S3 bucket for the data splits, training output, evaluation and drift baseline.
        model_package_group: SageMaker Model Registry group (must exist).
        role_arn: SageMaker execution role the training job runs as.
        git_sha: Commit of the training code, recorded in the model's lineage.
        dataset_uri: s3://.../data.csv or .parquet, or sklearn://breast_cancer (bundled demo data).
        target: Label column (binary 0/1); passed to the training script.
        model_name: ModelDeployment name (and the training job name's prefix).
        namespace: ModelDeployment namespace.
        s3_prefix: Prefix under the bucket for everything the run writes.
        seed: Seed of the train/validation/test split.
        training_backend: sagemaker (CreateTrainingJob), ack (an ACK TrainingJob) or local.
        instance_type: SageMaker training instance type (Trainium by default).
        instance_count: Number of training instances.
        image_uri: Training image; default the region's PyTorch Neuron training DLC.
        hyperparameters: Training script hyperparameters, e.g. {"epochs": 30}.
        max_runtime_seconds: SageMaker stops the job after this long.
        use_spot: Managed spot training (needs max_wait_seconds and checkpoint_s3_uri).
        max_wait_seconds: Spot: time to wait for capacity plus runtime.
        checkpoint_s3_uri: Checkpoint prefix; each job checkpoints under <prefix>/<job name>/.
        subnets: VPC subnets for the training job (with security_group_ids).
        security_group_ids: VPC security groups for the training job.
        volume_kms_key_id: KMS key for the training volume.
        output_kms_key_id: KMS key for the training output.
        enable_network_isolation: Run the training container without network access.
        enable_inter_container_traffic_encryption: Encrypt traffic between training instances.
        ack_namespace: Namespace for ACK TrainingJobs (training_backend ack).
        poll_initial_seconds: First delay between job status polls (backs off to 5 minutes).
        gate_metric: Metric the quality gate compares (pr_auc, roc_auc, recall, precision, f1).
        gate_tolerance: How much worse than the Approved model the candidate may be.
        auto_approve: Register as Approved instead of PendingManualApproval.
        reason: Why this run happened; recorded with the model version (letters, digits, spaces, .:/=+-@_).
        serving_image: Inference image for the registry entry; default the region's PyTorch inference DLC.
        manifest_dir: GitOps directory for <namespace>/<model_name>.yaml.
        apply_manifest: Also apply the ModelDeployment to the cluster.
        drift_alert: The Alertmanager alert that started this run (set by Kanari's retraining receiver).
        neuron_target: Compile the model that passed the gate for this Neuron target (inf2), as a SageMaker job on
            Trainium, and register the compiled artifact with its build record for Inferentia2 serving; '' (the
            default) compiles nothing and registers the trained model for CPU. A local run records the model as
            not compiled (kanari:neuron.compiled=false) and registers it for CPU.
        neuron_compile_instance_type: Trainium instance type of the compile job.
        neuron_compile_image: Compile image; default the PyTorch Neuron training DLC of the serving runtime's
            Neuron SDK (its tag must name the SDK, which the registry records).
        neuron_batch_size: Batch size the model is compiled for (Neuron graphs have fixed input shapes).
        baseline_engine: Drift baseline engine: local (the step's pod), spark (a SageMaker Processing job on
            Spark, for training sets beyond one pod) or auto (spark past 512 MiB of training data).
        baseline_image_uri: The Spark baseline image (the Dockerfile's spark-baseline target) for spark/auto.
        baseline_instance_type: Processing instance type of the Spark baseline job.
        baseline_instance_count: Processing instances of the Spark baseline job (1 with network isolation).
    """
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    stop = stop_training_jobs(run_id=run_id, training_backend=training_backend, ack_namespace=ack_namespace)
    _step(stop, "stop training jobs (exit handler)")
    with dsl.ExitHandler(stop, name="train-and-release"):
        validated = _step(validate_data(
            dataset_uri=dataset_uri, target=target, bucket=bucket, s3_prefix=s3_prefix,
            model_package_group=model_package_group, model_name=model_name, namespace=namespace, git_sha=git_sha,
            seed=seed, run_id=run_id, reason=reason, drift_alert=drift_alert, neuron_target=neuron_target,
            neuron_compile_instance_type=neuron_compile_instance_type, neuron_batch_size=neuron_batch_size,
            neuron_compile_image=neuron_compile_image,
        ), "validate data")
        trained = _step(sagemaker_training_job(
            channels=validated.outputs["channels"],
            output_s3_uri=validated.outputs["training_output_uri"],
            role_arn=role_arn,
            run_id=run_id,
            task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
            training_backend=training_backend,
            target=target,
            base_job_name=model_name,
            image_uri=image_uri,
            instance_type=instance_type,
            instance_count=instance_count,
            max_runtime_seconds=max_runtime_seconds,
            hyperparameters=hyperparameters,
            use_spot=use_spot,
            max_wait_seconds=max_wait_seconds,
            checkpoint_s3_uri=checkpoint_s3_uri,
            subnets=subnets,
            security_group_ids=security_group_ids,
            volume_kms_key_id=volume_kms_key_id,
            output_kms_key_id=output_kms_key_id,
            enable_network_isolation=enable_network_isolation,
            enable_inter_container_traffic_encryption=enable_inter_container_traffic_encryption,
            ack_namespace=ack_namespace,
            poll_initial_seconds=poll_initial_seconds,
        ), "train (SageMaker)", retry=TRAINING_RETRY)
        evaluated = _step(evaluate_model(model=trained.outputs["model"], test_data=validated.outputs["test_data"]),
                          "evaluate", EVALUATION_RESOURCES)
        gate = _step(quality_gate(
            test_data=validated.outputs["test_data"], model_package_group=model_package_group,
            scores=evaluated.outputs["scores"], gate_metric=gate_metric, gate_tolerance=gate_tolerance,
        ), "quality gate", EVALUATION_RESOURCES)

        with dsl.If(gate.outputs["passed"] == True, name="model-passed"):  # noqa: E712 (a KFP condition)
            baseline = _step(write_drift_baseline(
                model=trained.outputs["model"], train_data=validated.outputs["train_data"], target=target,
                baseline_engine=baseline_engine, role_arn=role_arn, run_id=run_id,
                task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER, base_job_name=model_name,
                baseline_image_uri=baseline_image_uri, baseline_instance_type=baseline_instance_type,
                baseline_instance_count=baseline_instance_count, subnets=subnets, security_group_ids=security_group_ids,
                volume_kms_key_id=volume_kms_key_id, output_kms_key_id=output_kms_key_id,
                enable_network_isolation=enable_network_isolation,
                enable_inter_container_traffic_encryption=enable_inter_container_traffic_encryption,
                poll_initial_seconds=poll_initial_seconds,
            ), "drift baseline")
            # What is registered: the trained model, or (neuron_target set) the one compiled from it.
            release = _step(neuron_compile(
                model=trained.outputs["model"], neuron_target=neuron_target, training_backend=training_backend,
                role_arn=role_arn, run_id=run_id, task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
                base_job_name=model_name, instance_type=neuron_compile_instance_type, image_uri=neuron_compile_image,
                batch_size=neuron_batch_size, max_runtime_seconds=max_runtime_seconds, ack_namespace=ack_namespace,
                poll_initial_seconds=poll_initial_seconds,
            ), "Neuron compile (SageMaker)", retry=TRAINING_RETRY)
            # CBPE (the monitor's label-free estimates) needs calibrated scores: fitted on the holdout,
            # registered with the package.
            calibrated = _step(calibrate_model(
                model=trained.outputs["model"], test_data=validated.outputs["test_data"]
            ), "calibrate scores", EVALUATION_RESOURCES)
            registered = _step(register_model(
                model=release.outputs["compiled"], model_package_group=model_package_group,
                scores=evaluated.outputs["scores"], evaluation_uri=evaluated.outputs["evaluation_uri"],
                baseline_uri=baseline.output, dataset_uri=dataset_uri,
                dataset_version=validated.outputs["dataset_version"], git_sha=git_sha, run_id=run_id,
                auto_approve=auto_approve, reason=reason, model_name=model_name, serving_image=serving_image,
                gate_reason=gate.outputs["reason"], drift_alert=drift_alert, calibration_uri=calibrated.output,
            ), "register")
            _step(emit_model_deployment(
                model=release.outputs["compiled"], model_package_arn=registered.output, baseline_uri=baseline.output,
                dataset_uri=dataset_uri, dataset_version=validated.outputs["dataset_version"], git_sha=git_sha,
                run_id=run_id, model_name=model_name, namespace=namespace, manifest_dir=manifest_dir,
                apply_manifest=apply_manifest, scores=evaluated.outputs["scores"],
                gate_reason=gate.outputs["reason"], drift_alert=drift_alert,
            ), "ModelDeployment")
        with dsl.Else(name="model-rejected"):
            _step(record_rejection(
                model=trained.outputs["model"], run_id=run_id, scores=evaluated.outputs["scores"],
                gate_reason=gate.outputs["reason"],
            ), "rejected")


def _build(retries: bool) -> Any:
    global _with_retries
    _with_retries = retries
    try:
        return dsl.pipeline(name=PIPELINE_NAME, description="Train on Trainium through SageMaker, gate, register "
                                                            "with lineage, deploy.")(_training_pipeline)
    finally:
        _with_retries = True


training_pipeline = _build(retries=True)
# The same pipeline without retry policies, for kfp.local (kanari pipeline run --local).
local_training_pipeline = _build(retries=False)


IMAGE_REFERENCE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:\d+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127})?"
                             r"(@sha256:[0-9a-f]{64})?$")
PIPELINE_ROOT = re.compile(r"^(s3|minio|gs)://[^/]+(/.*)?$")


def check_settings(image: str, pipeline_root: str) -> None:
    if not image or not IMAGE_REFERENCE.match(image) or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
        raise InputError("image", f"{image!r} is not an image reference with a tag or digest "
                                  "(e.g. ACCOUNT.dkr.ecr.REGION.amazonaws.com/kanari-pipelines:0.1.0)")
    if not PIPELINE_ROOT.match(pipeline_root or ""):
        raise InputError("pipeline_root", f"{pipeline_root!r} is not an s3://, minio:// or gs:// prefix")


def compile_ir(image: str, pipeline_root: str) -> dict[str, Any]:
    """The pipeline's KFP IR with the component image and pipeline root set (pure, apart from the compiler)."""
    import tempfile

    check_settings(image, pipeline_root)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(training_pipeline, str(out))
        docs = list(yaml.safe_load_all(out.read_text()))
    ir = docs[0]
    for executor in ir["deploymentSpec"]["executors"].values():
        container = executor.get("container") or {}
        if container.get("image") == COMPONENT_IMAGE:
            container["image"] = image
    # KFP's launcher uploads every output artifact under this root (the run can override it).
    ir["defaultPipelineRoot"] = pipeline_root.rstrip("/")
    ir["__platform__"] = docs[1:]  # kfp-kubernetes' platform spec, kept as the second YAML document
    return ir


def compile_pipeline(path: str | Path, *, image: str, pipeline_root: str) -> Path:
    """KFP IR YAML for a cluster, with the component image and pipeline root set."""
    ir = compile_ir(image, pipeline_root)
    platform = ir.pop("__platform__")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump_all([ir, *platform], sort_keys=True))
    return out
