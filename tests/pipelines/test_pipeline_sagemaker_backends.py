"""Training backends against SageMaker's API on a moto server: the local backend records a real job and
re-attaches on restart; SageMaker's own backend never takes "Completed" without an artifact for success;
throttling is retried by botocore and, past retries, is an error."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from kfp_pipelines import aws as aws_mod
from kfp_pipelines import data
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.sagemaker import config, training
from kfp_pipelines.sagemaker.waiter import Backoff, TrainingJobFailed, wait

ROLE = "arn:aws:iam::123456789012:role/kanari-sagemaker-execution"


def put_channels(aws: Any, prefix: str) -> dict[str, str]:
    parts = data.split(data.builtin_breast_cancer(), data.BUILTIN_TARGET, seed=7)
    out = {}
    for name in ("train", "validation"):
        key = f"{prefix}/{name}/{name}.csv"
        aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=data.to_csv(getattr(parts, name)))
        out[name] = f"s3://{aws.bucket}/{prefix}/{name}/"
    return out


def cfg(aws: Any, channels: dict[str, str], **extra: Any) -> config.TrainingJobConfig:
    return config.parse_config(channels=channels, output_s3_uri=f"s3://{aws.bucket}/training", role_arn=ROLE,
                               image_uri=config.default_image("us-east-1"),
                               hyperparameters={"epochs": 2, **extra.pop("hyperparameters", {})}, **extra)


def jobs_named(aws: Any, base: str) -> list[str]:
    return [n for n in aws.training_jobs() if n.startswith(base)]


@pytest.mark.timeout(120)
def test_local_backend_records_the_job_and_a_restarted_step_reattaches(aws, caplog, tmp_path: Path) -> None:
    base = f"reattach-{uuid.uuid4().hex[:6]}"
    c = cfg(aws, put_channels(aws, "data"))
    kwargs = {"backend": "local", "run_id": "run-1", "task": "sagemaker-training-job", "base_job_name": base,
              "source_dir": training.default_source_dir(), "workdir": tmp_path}
    with caplog.at_level(logging.INFO, logger="kanari.pipeline"):
        first = training.run_training(c, **kwargs)
    assert first.job_arn == aws.sm.describe_training_job(TrainingJobName=first.job_name)["TrainingJobArn"]
    assert first.model_uri == f"s3://{aws.bucket}/training/{first.job_name}/output/model.tar.gz"
    assert aws_mod.exists(aws.s3, aws_mod.S3Uri.parse(first.model_uri, "m"))
    assert first.metrics["epochs"] == 2 and first.metrics["validation"]["pr_auc"] > 0.5
    assert first.instance_type == "ml.trn1.2xlarge" and not first.reattached
    job = aws.sm.describe_training_job(TrainingJobName=first.job_name)
    assert job["ResourceConfig"]["InstanceType"] == "ml.trn1.2xlarge"
    assert json.loads(job["HyperParameters"]["sagemaker_submit_directory"]).startswith(f"s3://{aws.bucket}/training/source/")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kanari.pipeline"):
        second = training.run_training(c, **kwargs)  # the pod restarted: same run, task and inputs
    assert second.reattached and second.job_arn == first.job_arn and second.model_uri == first.model_uri
    assert jobs_named(aws, base) == [first.job_name]
    assert not any("epoch=" in r.getMessage() for r in caplog.records)  # nothing was trained twice


@pytest.mark.timeout(60)
def test_network_isolated_job_gets_its_code_through_the_code_channel(aws, tmp_path: Path) -> None:
    c = cfg(aws, put_channels(aws, "iso"), enable_network_isolation=True, hyperparameters={"epochs": 1})
    result = training.run_training(c, backend="local", run_id="r", task="t", base_job_name=f"iso-{uuid.uuid4().hex[:6]}",
                                   source_dir=training.default_source_dir(), workdir=tmp_path)
    job = aws.sm.describe_training_job(TrainingJobName=result.job_name)
    assert job["EnableNetworkIsolation"] is True
    assert "code" in [ch["ChannelName"] for ch in job["InputDataConfig"]]
    assert result.metrics["epochs"] == 1


@pytest.mark.timeout(60)
def test_nothing_is_created_for_a_channel_without_data(aws) -> None:
    base = f"empty-{uuid.uuid4().hex[:6]}"
    channels = put_channels(aws, "data")
    channels["validation"] = f"s3://{aws.bucket}/nothing-here/"
    with pytest.raises(InputError) as err:
        training.run_training(cfg(aws, channels), backend="local", run_id="r", task="t", base_job_name=base,
                              source_dir=training.default_source_dir())
    assert err.value.parameter == "channels.validation"
    assert jobs_named(aws, base) == [] and aws.object_keys("training/") == []


@pytest.mark.timeout(60)
def test_a_failing_script_fails_the_step_with_the_algorithm_error(aws, tmp_path: Path) -> None:
    c = cfg(aws, put_channels(aws, "data"), hyperparameters={"momentum": 0.9})
    with pytest.raises(TrainingJobFailed) as err:
        training.run_training(c, backend="local", run_id="r", task="t", base_job_name=f"fail-{uuid.uuid4().hex[:6]}",
                              source_dir=training.default_source_dir(), workdir=tmp_path)
    assert err.value.status == "Failed"
    assert err.value.reason.startswith("AlgorithmError: ValueError: hyperparameters: unknown momentum")


@pytest.mark.timeout(60)
def test_completed_without_a_model_artifact_is_not_success(aws) -> None:
    # moto marks every job Completed at once and trains nothing: the step must not call that a model.
    c = cfg(aws, put_channels(aws, "data"))
    with pytest.raises(StepFailed, match="its model artifact .* does not exist"):
        training.run_training(c, backend="sagemaker", run_id="r", task="t", base_job_name=f"sm-{uuid.uuid4().hex[:6]}",
                              source_dir=training.default_source_dir(), backoff=Backoff(initial=0.01, cap=0.02))


def test_the_local_backend_refuses_real_sagemaker(aws, monkeypatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    sm = aws_mod.client("sagemaker")
    with pytest.raises(InputError) as err:
        training.preflight(cfg(aws, {"train": "s3://b/t/"}), "local", "", aws_mod.client("s3"), sm)
    assert err.value.parameter == "training_backend" and "amazonaws.com" in err.value.message


class _Body:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_: Any):
        yield self.body


def _throttled(request: Any, **_: Any) -> AWSResponse:
    body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
    return AWSResponse(request.url, 400, {"x-amzn-RequestId": "throttled", "Content-Type": "application/x-amz-json-1.1"},
                       _Body(body))


def test_throttling_is_retried_and_counted_once(aws) -> None:
    sm = aws_mod.client("sagemaker")
    attempts: list[int] = []

    def throttle_twice(request: Any, **kw: Any) -> AWSResponse | None:
        attempts.append(1)
        return _throttled(request) if len(attempts) <= 2 else None

    sm.meta.events.register("before-send.sagemaker.DescribeModelPackageGroup", throttle_twice)
    before = aws_mod.api_calls().get("sagemaker.DescribeModelPackageGroup", 0)
    desc = sm.describe_model_package_group(ModelPackageGroupName=aws.group)
    assert desc["ModelPackageGroupName"] == aws.group
    assert len(attempts) == 3 and desc["ResponseMetadata"]["RetryAttempts"] == 2
    assert aws_mod.api_calls()["sagemaker.DescribeModelPackageGroup"] == before + 1


def test_throttling_past_the_retries_is_an_error_not_a_status(aws, monkeypatch) -> None:
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")  # the other mode botocore offers; adaptive is the default
    sm = aws_mod.client("sagemaker")
    sm.meta.events.register("before-send.sagemaker.DescribeTrainingJob", lambda request, **kw: _throttled(request))
    with pytest.raises(ClientError) as err:
        wait("job", lambda: sm.describe_training_job(TrainingJobName="job"), Backoff(initial=0.01, cap=0.01))
    assert aws_mod.error_code(err.value) == "ThrottlingException"
