"""The optional Neuron compile step (kfp_pipelines.neuron): the model that passed the gate, compiled for a Neuron
target on SageMaker, or passed on unchanged (no target), or recorded as not compiled (a local run)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from kfp_pipelines.components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def neuron_compile(
    model: Input[Model],
    compiled: Output[Model],
    neuron_target: str,
    training_backend: str,
    role_arn: str,
    run_id: str,
    task_name: str,
    base_job_name: str,
    instance_type: str = "ml.trn1.2xlarge",
    image_uri: str = "",
    batch_size: int = 1,
    max_runtime_seconds: int = 3600,
    ack_namespace: str = "",
    poll_initial_seconds: float = 10.0,
    poll_max_seconds: float = 300.0,
):
    """Its output is the model to register: the compiled artifact with its build record (kanari:neuron.*), the
    trained one as it was (no neuron_target), or the trained one recorded as not compiled (training_backend local).
    """
    from kfp_pipelines import artifacts, neuron
    from kfp_pipelines.errors import step
    from kfp_pipelines.sagemaker.waiter import Backoff

    with step(task_name):
        result = neuron.compile_model(
            model_uri=artifacts.s3_uri(model), neuron_target=neuron_target, training_backend=training_backend,
            role_arn=role_arn, run_id=run_id, task=task_name, base_job_name=f"{base_job_name}-neuron",
            instance_type=instance_type, image_uri=image_uri, batch_size=batch_size,
            max_runtime_seconds=max_runtime_seconds, ack_namespace=ack_namespace,
            backoff=Backoff(initial=poll_initial_seconds, cap=poll_max_seconds),
        )
        # The training job's lineage (job ARN, image, metrics) stays with the model; the build record is added.
        trained = {k: v for k, v in dict(model.metadata).items() if k != artifacts.S3_URI}
        artifacts.publish(compiled, result.model_uri, **trained, **result.metadata())
