"""Release a model that passed the gate: drift baseline, registry version, ModelDeployment manifest.

The baseline is written before registering, so the package can point at it (DriftCheckBaselines)
and a failure leaves nothing registered. The rejection branch records why nothing was released.
"""

# Parameter defaults are KFP declarations (never mutated); kfp.local cannot run None defaults.
# ruff: noqa: B006

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from kfp_pipelines.components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def write_drift_baseline(
    model: Input[Model],
    train_data: Input[Dataset],
    target: str,
    baseline_engine: str = "local",
    role_arn: str = "",
    run_id: str = "",
    task_name: str = "",
    base_job_name: str = "kanari",
    baseline_image_uri: str = "",
    baseline_instance_type: str = "ml.m5.4xlarge",
    baseline_instance_count: int = 2,
    subnets: list = [],
    security_group_ids: list = [],
    volume_kms_key_id: str = "",
    output_kms_key_id: str = "",
    enable_network_isolation: bool = False,
    enable_inter_container_traffic_encryption: bool = False,
    poll_initial_seconds: float = 10.0,
) -> str:
    """statistics.json and constraints.json (SageMaker Model Monitor format) beside model.tar.gz.

    baseline_engine: local (profiled in this pod), spark (a SageMaker Processing job running the Spark baseline
    image, baseline_image_uri, as the training role, in its VPC, with its KMS keys and isolation) or auto (spark
    when the train split is large).
    """
    from kfp_pipelines import artifacts, steps
    from kfp_pipelines.errors import step

    with step("write-drift-baseline"):
        return steps.write_baseline(
            train_uri=artifacts.s3_uri(train_data), target=target, model_uri=artifacts.s3_uri(model),
            engine=baseline_engine, run_id=run_id, task=task_name, base_job_name=base_job_name,
            poll_initial_seconds=poll_initial_seconds,
            spark={
                "role_arn": role_arn, "image_uri": baseline_image_uri, "instance_type": baseline_instance_type,
                "instance_count": baseline_instance_count, "subnets": list(subnets),
                "security_group_ids": list(security_group_ids), "volume_kms_key_id": volume_kms_key_id,
                "output_kms_key_id": output_kms_key_id, "enable_network_isolation": enable_network_isolation,
                "enable_inter_container_traffic_encryption": enable_inter_container_traffic_encryption,
            },
        )


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def register_model(
    model: Input[Model],
    model_package_group: str,
    scores: dict,
    evaluation_uri: str,
    baseline_uri: str,
    dataset_uri: str,
    dataset_version: str,
    git_sha: str,
    run_id: str,
    auto_approve: bool,
    reason: str,
    model_name: str,
    serving_image: str,
    gate_reason: str,
    drift_alert: dict,
    calibration_uri: str,
) -> str:
    """A new version in the SageMaker Model Registry group: PendingManualApproval unless auto_approve;
    the score calibration (calibration_uri, "" for none) is referenced from its metadata."""
    from kfp_pipelines import artifacts, steps
    from kfp_pipelines.errors import step

    with step("register-model"):
        arn, _status = steps.register(
            model_uri=artifacts.s3_uri(model), model_metadata=dict(model.metadata), drift_alert=drift_alert,
            model_package_group=model_package_group,
            scores=scores, evaluation_uri=evaluation_uri, baseline_uri=baseline_uri, dataset_uri=dataset_uri,
            dataset_version=dataset_version, git_sha=git_sha, run_id=run_id, auto_approve=auto_approve,
            reason=reason, model_name=model_name, serving_image=serving_image, gate_reason=gate_reason,
            calibration_uri=calibration_uri,
        )
        return arn


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def emit_model_deployment(
    model: Input[Model],
    manifest: Output[Artifact],
    model_package_arn: str,
    baseline_uri: str,
    dataset_uri: str,
    dataset_version: str,
    git_sha: str,
    run_id: str,
    model_name: str,
    namespace: str,
    manifest_dir: str,
    apply_manifest: bool,
    scores: dict,
    gate_reason: str,
    drift_alert: dict,
) -> str:
    """The ModelDeployment for the new version, at <manifest_dir>/<namespace>/<model_name>.yaml and/or
    applied with the Kubernetes client. Returns the release record (JSON)."""
    import json

    from kfp_pipelines import artifacts, aws, steps
    from kfp_pipelines.errors import step

    with step("emit-model-deployment"):
        _obj, path, applied = steps.deploy(
            model_package_arn=model_package_arn, baseline_uri=baseline_uri, model_metadata=dict(model.metadata),
            drift_alert=drift_alert,
            dataset_uri=dataset_uri, dataset_version=dataset_version, git_sha=git_sha, run_id=run_id,
            model_name=model_name, namespace=namespace, manifest_dir=manifest_dir, apply_manifest=apply_manifest,
            artifact_path=manifest.path,
        )
        status = aws.client("sagemaker").describe_model_package(ModelPackageName=model_package_arn)
        manifest.metadata.update({"path": path, "applied": applied, "model_package_arn": model_package_arn})
        release = steps.Release(
            pipeline_run_id=run_id, gate_passed=True, gate_reason=gate_reason, scores=scores,
            training_job_name=str(model.metadata.get("training_job_name", "")),
            training_job_arn=str(model.metadata.get("training_job_arn", "")), model_uri=artifacts.s3_uri(model),
            model_package_arn=model_package_arn, approval_status=str(status.get("ModelApprovalStatus", "")),
            baseline_uri=baseline_uri, manifest_path=path, applied=applied,
        )
        return json.dumps(release.to_dict(), sort_keys=True)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def record_rejection(model: Input[Model], run_id: str, scores: dict, gate_reason: str) -> str:
    """The gate refused the model: nothing is registered or deployed. Returns the release record (JSON)."""
    import json

    from kfp_pipelines import artifacts, steps
    from kfp_pipelines.errors import step

    with step("record-rejection"):
        print(f"[kanari] not released: {gate_reason}", flush=True)
        release = steps.Release(
            pipeline_run_id=run_id, gate_passed=False, gate_reason=gate_reason, scores=scores,
            training_job_name=str(model.metadata.get("training_job_name", "")),
            training_job_arn=str(model.metadata.get("training_job_arn", "")), model_uri=artifacts.s3_uri(model),
        )
        return json.dumps(release.to_dict(), sort_keys=True)
