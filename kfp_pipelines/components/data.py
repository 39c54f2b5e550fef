"""Validate the data and split it (before any resampling) into the training channels and a test set."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from kfp_pipelines.components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def validate_data(
    train_data: Output[Dataset],
    test_data: Output[Dataset],
    dataset_uri: str,
    target: str,
    bucket: str,
    s3_prefix: str,
    model_package_group: str,
    model_name: str,
    namespace: str,
    git_sha: str,
    seed: int,
    run_id: str,
    reason: str,
    drift_alert: dict,
    neuron_target: str = "",
    neuron_compile_instance_type: str = "ml.trn1.2xlarge",
    neuron_batch_size: int = 1,
    neuron_compile_image: str = "",
) -> NamedTuple("ValidatedData", channels=dict, training_output_uri=str, dataset_version=str):
    """Checks parameters, the registry group, schema and leakage; writes train/validation/test to S3."""
    from collections import namedtuple

    from kfp_pipelines import artifacts, steps
    from kfp_pipelines.errors import step

    with step("validate-data"):
        prepared = steps.validate(
            dataset_uri=dataset_uri, target=target, bucket=bucket, s3_prefix=s3_prefix,
            model_package_group=model_package_group, model_name=model_name, namespace=namespace,
            git_sha=git_sha, seed=seed, run_id=run_id, reason=reason, drift_alert=drift_alert,
            neuron_compile={"neuron_target": neuron_target, "instance_type": neuron_compile_instance_type,
                            "batch_size": neuron_batch_size, "image_uri": neuron_compile_image},
        )
    common = {"dataset_uri": dataset_uri, "dataset_version": prepared.dataset_version, "target": target}
    artifacts.publish(train_data, prepared.channels["train"], **common, rows=prepared.rows["train"],
                      positives=prepared.positives["train"], duplicates_dropped=prepared.duplicates_dropped)
    artifacts.publish(test_data, prepared.test_uri, **common, rows=prepared.rows["test"],
                      positives=prepared.positives["test"])
    ValidatedData = namedtuple("ValidatedData", ["channels", "training_output_uri", "dataset_version"])
    return ValidatedData(prepared.channels, prepared.training_output_uri, prepared.dataset_version)
