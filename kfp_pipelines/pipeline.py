"""The Kanari training pipeline (KFP v2).

validate data -> train (SageMaker, Trainium) -> evaluate -> quality gate (dsl.If) ->
  passed:   drift baseline -> register (Model Registry, lineage) -> ModelDeployment (GitOps path / apply)
  rejected: record why
The pipeline's output is the release record (JSON) of whichever branch ran.
"""
# Parameter defaults are KFP declarations (never mutated); kfp.local cannot run None defaults.
# ruff: noqa: B006

from pathlib import Path

from kfp import compiler, dsl

from kfp_pipelines.components.data import validate_data
from kfp_pipelines.components.evaluation import evaluate_model, quality_gate
from kfp_pipelines.components.release import (
    emit_model_deployment,
    record_rejection,
    register_model,
    write_drift_baseline,
)
from kfp_pipelines.components.sagemaker_training import sagemaker_training_job
from kfp_pipelines.data import BUILTIN_DATASET, BUILTIN_TARGET
from kfp_pipelines.deployment import PIPELINE_NAME


@dsl.pipeline(name=PIPELINE_NAME, description="Train on Trainium through SageMaker, gate, register with lineage, deploy.")
def training_pipeline(
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
) -> str:
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    validated = validate_data(
        dataset_uri=dataset_uri, target=target, bucket=bucket, s3_prefix=s3_prefix,
        model_package_group=model_package_group, model_name=model_name, namespace=namespace, git_sha=git_sha,
        seed=seed, run_id=run_id,
    ).set_display_name("validate data")
    # Training and every step after it talk to AWS and take time: results are never reused from a cache.
    validated.set_caching_options(False)
    trained = sagemaker_training_job(
        channels=validated.outputs["channels"],
        output_s3_uri=validated.outputs["training_output_uri"],
        role_arn=role_arn,
        run_id=run_id,
        task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
        training_backend=training_backend,
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
    ).set_display_name("train (SageMaker)")
    trained.set_caching_options(False)
    evaluated = evaluate_model(model=trained.outputs["model"], test_data=validated.outputs["test_data"])
    evaluated.set_display_name("evaluate").set_caching_options(False)
    gate = quality_gate(
        model_package_group=model_package_group, scores=evaluated.outputs["scores"], gate_metric=gate_metric,
        gate_tolerance=gate_tolerance,
    ).set_display_name("quality gate")
    gate.set_caching_options(False)

    with dsl.If(gate.outputs["passed"] == True, name="model-passed"):  # noqa: E712 (a KFP condition, not a bool)
        baseline = write_drift_baseline(
            model=trained.outputs["model"], train_data=validated.outputs["train_data"], target=target
        ).set_display_name("drift baseline")
        baseline.set_caching_options(False)
        registered = register_model(
            model=trained.outputs["model"], model_package_group=model_package_group,
            scores=evaluated.outputs["scores"], evaluation_uri=evaluated.outputs["evaluation_uri"],
            baseline_uri=baseline.output, dataset_uri=dataset_uri,
            dataset_version=validated.outputs["dataset_version"], git_sha=git_sha, run_id=run_id,
            auto_approve=auto_approve, reason=reason, model_name=model_name, serving_image=serving_image,
            gate_reason=gate.outputs["reason"],
        ).set_display_name("register")
        registered.set_caching_options(False)
        deployed = emit_model_deployment(
            model=trained.outputs["model"], model_package_arn=registered.output, baseline_uri=baseline.output,
            dataset_uri=dataset_uri, dataset_version=validated.outputs["dataset_version"], git_sha=git_sha,
            run_id=run_id, model_name=model_name, namespace=namespace, manifest_dir=manifest_dir,
            apply_manifest=apply_manifest, scores=evaluated.outputs["scores"], gate_reason=gate.outputs["reason"],
        ).set_display_name("ModelDeployment")
        deployed.set_caching_options(False)
    with dsl.Else(name="model-rejected"):
        rejected = record_rejection(
            model=trained.outputs["model"], run_id=run_id, scores=evaluated.outputs["scores"],
            gate_reason=gate.outputs["reason"],
        ).set_display_name("rejected")
        rejected.set_caching_options(False)
    return dsl.OneOf(deployed.outputs["Output"], rejected.output)


def compile_pipeline(path: str | Path) -> Path:
    """KFP IR YAML for a cluster."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(out))
    return out
