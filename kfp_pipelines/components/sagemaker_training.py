"""SageMaker training for KFP v2: ACK TrainingJob or boto3 CreateTrainingJob, returning a real dsl.Model.

The official SageMaker Components for KFP only work on the KFP v1 backend (kubeflow/pipelines#9638),
cannot re-attach to a running job after a pod restart (#7040) and have no Model Registry component.
This one runs on KFP v2: its output is a Model artifact whose URI is the job's model.tar.gz in S3,
with the job ARN, image, instance type and the script's metrics in its metadata.
"""
# Parameter defaults are KFP declarations (never mutated); kfp.local cannot run None defaults.
# ruff: noqa: B006

from kfp import dsl
from kfp.dsl import Model, Output, PipelineTaskFinalStatus

from kfp_pipelines.components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def sagemaker_training_job(
    model: Output[Model],
    channels: dict,
    output_s3_uri: str,
    role_arn: str,
    run_id: str,
    task_name: str,
    training_backend: str = "sagemaker",
    target: str = "",
    base_job_name: str = "kanari",
    image_uri: str = "",
    instance_type: str = "ml.trn1.2xlarge",
    instance_count: int = 1,
    volume_size_gb: int = 50,
    max_runtime_seconds: int = 86400,
    hyperparameters: dict = {},
    entry_point: str = "train.py",
    source_dir: str = "",
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
    poll_max_seconds: float = 300.0,
):
    """Train on SageMaker (Trainium by default) and wait for the job.

    training_backend: "sagemaker" (boto3), "ack" (a TrainingJob in ack_namespace) or "local" (this
    machine, under the container contract, with the job recorded through the SageMaker API).
    target: the label column the validate step checked; passed to the script as its `target`.
    checkpoint_s3_uri: a prefix; each job checkpoints under <prefix>/<job name>/, so only the same job
    (restarted by SageMaker after a spot interruption) resumes from it.
    run_id/task_name: pass dsl.PIPELINE_JOB_ID_PLACEHOLDER and dsl.PIPELINE_TASK_NAME_PLACEHOLDER; with
    the inputs they make the job name, so a restarted step re-attaches to its job.
    image_uri: default the PyTorch Neuron training DLC of the region. source_dir: default Kanari's
    reference training code (kfp_pipelines/training).
    """
    from pathlib import Path

    from kfp_pipelines import artifacts, aws
    from kfp_pipelines.errors import step
    from kfp_pipelines.sagemaker.config import default_image, parse_config
    from kfp_pipelines.sagemaker.training import default_source_dir, run_training
    from kfp_pipelines.sagemaker.waiter import Backoff

    with step(task_name):
        cfg = parse_config(
            channels=channels,
            output_s3_uri=output_s3_uri,
            role_arn=role_arn,
            image_uri=image_uri or default_image(aws.session().region_name),
            instance_type=instance_type,
            instance_count=instance_count,
            volume_size_gb=volume_size_gb,
            max_runtime_seconds=max_runtime_seconds,
            hyperparameters=hyperparameters,
            entry_point=entry_point,
            use_spot=use_spot,
            max_wait_seconds=max_wait_seconds,
            checkpoint_s3_uri=checkpoint_s3_uri,
            subnets=subnets,
            security_group_ids=security_group_ids,
            volume_kms_key_id=volume_kms_key_id,
            output_kms_key_id=output_kms_key_id,
            enable_network_isolation=enable_network_isolation,
            enable_inter_container_traffic_encryption=enable_inter_container_traffic_encryption,
            target=target,
        )
        result = run_training(
            cfg,
            backend=training_backend,
            run_id=run_id,
            task=task_name,
            base_job_name=base_job_name,
            source_dir=Path(source_dir) if source_dir else default_source_dir(),
            ack_namespace=ack_namespace,
            backoff=Backoff(initial=poll_initial_seconds, cap=poll_max_seconds),
        )
        artifacts.publish(model, result.model_uri, **result.metadata())


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def stop_training_jobs(
    status: PipelineTaskFinalStatus,
    run_id: str,
    training_backend: str = "sagemaker",
    ack_namespace: str = "",
):
    """The exit handler: when the run did not succeed (failed, or terminated from the KFP UI/API), stop
    every training job it started that is still running, so no instance keeps billing for a run that
    is over. A succeeded run has nothing running; this step then does nothing."""
    from kfp_pipelines import aws
    from kfp_pipelines.errors import step
    from kfp_pipelines.sagemaker.training import stop_run_ack_jobs, stop_run_jobs

    with step("stop-training-jobs"):
        print(f"[kanari] pipeline run {run_id} ended {status.state}", flush=True)
        # A local job ran inside its step's process and ended with it.
        if status.state == "SUCCEEDED" or training_backend == "local":
            return
        if training_backend == "ack":
            from kfp_pipelines import kube

            stopped = stop_run_ack_jobs(kube.custom_objects_api(), ack_namespace, run_id)
        else:
            stopped = stop_run_jobs(aws.client("sagemaker"), run_id)
        print(f"[kanari] stopped {len(stopped)} training job(s): {', '.join(stopped) or 'none was running'}",
              flush=True)
        from kfp_pipelines.sagemaker import processing

        baselines = processing.stop_run_jobs(aws.client("sagemaker"), run_id)
        print(f"[kanari] stopped {len(baselines)} baseline processing job(s): {', '.join(baselines) or 'none was running'}",
              flush=True)
