"""The training job's config: what SageMaker would reject fails before submission, naming the parameter;
requests, job names and the ACK TrainingJob built from it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pipelines_testlib import TRAININGJOB_CRD, strict_validator

from kfp_pipelines.errors import InputError
from kfp_pipelines.sagemaker import config

ROLE = "arn:aws:iam::123456789012:role/kanari-sagemaker-execution"
SOURCE = "s3://bkt/kanari/training/source/abc/sourcedir.tar.gz"


def params(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "channels": {"train": "s3://bkt/data/train/", "validation": "s3://bkt/data/validation/"},
        "output_s3_uri": "s3://bkt/kanari/training",
        "role_arn": ROLE,
        "image_uri": config.default_image("us-east-1"),
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "parameter", "fragment"),
    [
        ({"channels": {}}, "channels", "no input channels"),
        ({"channels": {"validation": "s3://bkt/v/"}}, "channels", "no 'train' channel"),
        ({"channels": {"train": "/local/path"}}, "channels.train", "s3://"),
        ({"instance_type": "ml.trn9.mega"}, "instance_type", "unknown SageMaker training instance type"),
        ({"instance_type": "ml.m5.xlarge"}, "instance_type", "needs a Trainium instance"),
        ({"use_spot": True, "checkpoint_s3_uri": "s3://bkt/ckpt/"}, "max_wait_seconds", "required with use_spot"),
        ({"use_spot": True, "max_runtime_seconds": 3600, "max_wait_seconds": 1800, "checkpoint_s3_uri": "s3://b/c/"},
         "max_wait_seconds", "must be >= max_runtime_seconds"),
        ({"use_spot": True, "max_runtime_seconds": 3600, "max_wait_seconds": 7200}, "checkpoint_s3_uri",
         "required with use_spot"),
        ({"max_wait_seconds": 7200}, "max_wait_seconds", "only valid with use_spot"),
        ({"subnets": ["subnet-0abc"]}, "security_group_ids", "needs both"),
        ({"security_group_ids": ["sg-1"], "subnets": ["vpc-1"]}, "subnets", "not a subnet id"),
        ({"role_arn": "kanari-role"}, "role_arn", "not an IAM role ARN"),
        ({"instance_count": 0}, "instance_count", "greater than or equal to 1"),
    ],
)
def test_rejected_before_submission_naming_the_parameter(overrides: dict[str, Any], parameter: str,
                                                          fragment: str) -> None:
    with pytest.raises(InputError) as err:
        config.parse_config(**params(**overrides))
    assert err.value.parameter == parameter
    assert fragment in err.value.message


def test_spot_request_carries_sagemakers_fields() -> None:
    cfg = config.parse_config(**params(use_spot=True, max_runtime_seconds=3600, max_wait_seconds=3600,
                                       checkpoint_s3_uri="s3://bkt/ckpt/"))
    req = config.build_request(cfg, source_uri=SOURCE, region="us-east-1")
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 3600}
    assert req["CheckpointConfig"] == {"S3Uri": "s3://bkt/ckpt/", "LocalPath": "/opt/ml/checkpoints"}


def test_trainium_defaults_and_framework_hyperparameters() -> None:
    cfg = config.parse_config(**params(hyperparameters={"epochs": 3, "target": "label"}))
    req = config.build_request(cfg, source_uri=SOURCE, region="eu-west-1")
    assert cfg.instance_type == "ml.trn1.2xlarge"
    assert req["AlgorithmSpecification"]["TrainingImage"].startswith(
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training-neuronx:")
    hps = {k: json.loads(v) for k, v in req["HyperParameters"].items()}
    assert hps == {
        "epochs": 3, "target": "label", "sagemaker_torch_distributed_enabled": True,
        "sagemaker_program": "train.py", "sagemaker_submit_directory": SOURCE, "sagemaker_region": "eu-west-1",
    }
    # Every value is a string on the wire, as the SageMaker API requires.
    assert all(isinstance(v, str) for v in req["HyperParameters"].values())
    for t in config.TRAINIUM_INSTANCE_TYPES:
        assert config.parse_config(**params(instance_type=t)).instance_type == t


def test_network_isolation_mounts_the_code_as_a_channel() -> None:
    cfg = config.parse_config(**params(enable_network_isolation=True, enable_inter_container_traffic_encryption=True,
                                       volume_kms_key_id="alias/vol", output_kms_key_id="alias/out",
                                       subnets=["subnet-1"], security_group_ids=["sg-1"]))
    req = config.build_request(cfg, source_uri=SOURCE, region="us-east-1")
    code = [c for c in req["InputDataConfig"] if c["ChannelName"] == "code"]
    assert code[0]["DataSource"]["S3DataSource"]["S3Uri"] == SOURCE.rsplit("/", 1)[0] + "/"
    assert json.loads(req["HyperParameters"]["sagemaker_submit_directory"]) == config.CODE_CHANNEL_PATH
    assert req["EnableNetworkIsolation"] and req["EnableInterContainerTrafficEncryption"]
    assert req["ResourceConfig"]["VolumeKmsKeyId"] == "alias/vol"
    assert req["OutputDataConfig"]["KmsKeyId"] == "alias/out"
    assert req["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}


def test_job_names_are_deterministic_per_run_task_and_inputs() -> None:
    cfg = config.parse_config(**params())
    h = config.inputs_hash(config.build_request(cfg, source_uri=SOURCE, region="us-east-1"))
    name = config.job_name("Fraud_Scorer", "run-1", "sagemaker-training-job", h)
    assert name == config.job_name("Fraud_Scorer", "run-1", "sagemaker-training-job", h)
    assert name != config.job_name("Fraud_Scorer", "run-2", "sagemaker-training-job", h)
    other = config.inputs_hash(config.build_request(config.parse_config(**params(hyperparameters={"epochs": 2})),
                                                    source_uri=SOURCE, region="us-east-1"))
    assert name != config.job_name("Fraud_Scorer", "run-1", "sagemaker-training-job", other)
    long_name = config.job_name("x" * 200, "run-1", "task", h)
    for n in (name, long_name):
        # SageMaker's TrainingJobName pattern, and a DNS-1123 name for the ACK resource.
        assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", n)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 63


def test_ack_training_job_fits_the_upstream_crd_without_pruned_fields() -> None:
    cfg = config.parse_config(**params(use_spot=True, max_runtime_seconds=600, max_wait_seconds=1200,
                                       checkpoint_s3_uri="s3://bkt/ckpt/", enable_network_isolation=True,
                                       volume_kms_key_id="alias/vol", output_kms_key_id="alias/out",
                                       subnets=["subnet-1"], security_group_ids=["sg-1"],
                                       hyperparameters={"epochs": 2}))
    req = config.build_request(cfg, source_uri=SOURCE, region="us-east-1")
    req = {"TrainingJobName": "kanari-abc", **req, "Tags": config.tags("run", "task", "h" * 8, "ack")}
    obj = config.ack_training_job(req, "ml-training")
    strict_validator(TRAININGJOB_CRD).validate(obj)
    spec = obj["spec"]
    assert spec["roleARN"] == ROLE
    assert spec["resourceConfig"]["volumeKMSKeyID"] == "alias/vol"
    assert spec["outputDataConfig"]["kmsKeyID"] == "alias/out"
    assert spec["vpcConfig"]["securityGroupIDs"] == ["sg-1"]
    assert spec["checkpointConfig"]["s3URI"] == "s3://bkt/ckpt/"
    assert spec["inputDataConfig"][0]["dataSource"]["s3DataSource"]["s3URI"].startswith("s3://")
    # Hyperparameter names are data: passed through verbatim.
    assert "sagemaker_torch_distributed_enabled" in spec["hyperParameters"]


def test_hyperparameter_values_up_to_sagemakers_2500_characters() -> None:
    """Regression: values were capped at 256 characters; SageMaker allows 2,500 (keys 256)."""
    long_value = "x" * (config.HYPERPARAMETER_VALUE_MAX - 2)  # JSON-encoded: plus two quotes
    cfg = config.parse_config(**params(hyperparameters={"layers": long_value}))
    req = config.build_request(cfg, source_uri=SOURCE, region="us-east-1")
    assert len(req["HyperParameters"]["layers"]) == config.HYPERPARAMETER_VALUE_MAX
    with pytest.raises(InputError) as err:
        config.parse_config(**params(hyperparameters={"layers": long_value + "x"}))
    assert err.value.parameter == "hyperparameters.layers" and "2500 characters" in err.value.message
    with pytest.raises(InputError) as err:
        config.parse_config(**params(hyperparameters={"k" * 257: 1}))
    assert "keys are limited to 256" in err.value.message


@pytest.mark.parametrize(
    ("region", "account", "domain"),
    [("us-east-1", "763104351884", "amazonaws.com"), ("eu-west-1", "763104351884", "amazonaws.com"),
     ("ap-east-1", "871362719292", "amazonaws.com"), ("me-south-1", "217643126080", "amazonaws.com"),
     ("af-south-1", "626614931356", "amazonaws.com"), ("cn-north-1", "727897471807", "amazonaws.com.cn"),
     ("us-gov-west-1", "442386744353", "amazonaws.com")],
)
def test_the_neuron_training_image_comes_from_the_regions_dlc_account(region: str, account: str, domain: str) -> None:
    """Regression: one ECR account for every region; the DLCs are published from others in opt-in,
    China and GovCloud regions."""
    image = config.default_image(region)
    assert image.startswith(f"{account}.dkr.ecr.{region}.{domain}/pytorch-training-neuronx:")
    assert config.is_neuron_image(image)


def test_a_region_that_is_not_one_is_named() -> None:
    with pytest.raises(InputError) as err:
        config.default_image("")
    assert err.value.parameter == "region"


def test_the_target_reaches_the_script_and_a_contradiction_is_refused() -> None:
    """Regression: the validate step checked `target`, but training never got it and looked for `label`."""
    cfg = config.parse_config(**params(target="is_fraud"))
    hps = config.build_request(cfg, source_uri=SOURCE, region="us-east-1")["HyperParameters"]
    assert json.loads(hps["target"]) == "is_fraud"
    with pytest.raises(InputError) as err:
        config.parse_config(**params(target="is_fraud", hyperparameters={"target": "label"}))
    assert err.value.parameter == "hyperparameters.target"


def test_each_job_checkpoints_under_its_own_prefix_and_attempts_have_their_own_names() -> None:
    h = "h" * 64
    names = {config.job_name("fraud", run, "train", h, attempt) for run in ("r1", "r2") for attempt in (0, 1, 2)}
    assert len(names) == 6
    assert config.job_name("fraud", "r1", "train", h) == config.job_name("fraud", "r1", "train", h, 0)
    uris = {config.checkpoint_uri("s3://bkt/ckpt/", n) for n in names}
    assert len(uris) == 6 and all(u.startswith("s3://bkt/ckpt/fraud-") and u.endswith("/") for u in uris)
