"""The drift baseline step as a SageMaker Processing job (baseline_engine spark): the request SageMaker would
accept (botocore's service model, strictly), with the training job's KMS keys, VPC and isolation; the job's
arguments run as the Spark baseline image runs them; a restarted step re-attaches; a failed job fails the step
with its reason; a Completed job without both files is no baseline; auto picks the engine by size; local
runs keep the local engine.

moto records processing jobs (Completed at once, running nothing) but cannot fail one: that goes through
botocore's Stubber, which checks requests and canned responses against the same service model.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from botocore.stub import ANY, Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from kfp_pipelines import aws as aws_mod
from kfp_pipelines import steps
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.sagemaker import config, processing

ROLE = "arn:aws:iam::123456789012:role/kanari-sagemaker-execution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/kanari-spark-baseline:0.1.0"
ROOT = Path(__file__).resolve().parents[2]
SECURITY = {
    "subnets": ["subnet-0a1b2c3d"], "security_group_ids": ["sg-0a1b2c3d"],
    "volume_kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555",
    "output_kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/66666666-7777-8888-9999-000000000000",
    "enable_inter_container_traffic_encryption": True,
}


def put_train_split(aws: Any, rows: int = 3_000) -> tuple[str, str, pd.DataFrame]:
    rng = np.random.default_rng(8)
    frame = pd.DataFrame({"amount": rng.lognormal(3, 1, rows), "age": rng.integers(18, 90, rows),
                          "country": rng.choice(["PT", "ES", "FR"], rows), "label": rng.integers(0, 2, rows)})
    prefix = "kanari/group/runs/r1/data/train"
    aws.s3.put_object(Bucket=aws.bucket, Key=f"{prefix}/train.csv", Body=frame.to_csv(index=False).encode())
    model = f"s3://{aws.bucket}/kanari/group/training/job-1/output/model.tar.gz"
    return f"s3://{aws.bucket}/{prefix}/", model, frame


def spark_params(**extra: Any) -> dict[str, Any]:
    return {"role_arn": ROLE, "image_uri": IMAGE, "instance_type": "ml.m5.xlarge", "instance_count": 2, **extra}


def processing_jobs(aws: Any) -> list[str]:
    return [j["ProcessingJobName"] for j in aws.sm.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]]


@pytest.fixture()
def sagemaker_runs_the_container(aws: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What SageMaker does with a created job, on this machine: the train split copied in, the image's
    command run with the job's ContainerArguments (kanari/drift/spark_job.py, Spark in local[2]), the output
    directory uploaded to the job's S3Output. moto then reports the job Completed."""
    created: list[dict[str, Any]] = []
    sm = aws_mod.client("sagemaker")
    real = aws_mod.client
    monkeypatch.setattr(aws_mod, "client", lambda service, *a, **k: sm if service == "sagemaker" else real(service, *a, **k))

    def run_container(params: dict[str, Any], **_: Any) -> None:
        created.append(params)
        spec = params["AppSpecification"]
        assert spec["ContainerEntrypoint"] == ["smspark-submit", processing.SPARK_JOB_SCRIPT]
        args = list(spec["ContainerArguments"])
        with tempfile.TemporaryDirectory() as tmp:
            data = aws_mod.S3Uri.parse(args[args.index("--data") + 1], "data")
            local = Path(tmp) / "train"
            aws_mod.download_prefix(aws.s3, data, local)
            args[args.index("--data") + 1] = str(local)
            args[args.index("--out") + 1] = out = str(Path(tmp) / "out")
            # As the image has it: the script alone in its directory (beside kanari/drift/, its profile.py would
            # shadow the standard library's for Spark).
            script = Path(tmp) / "opt" / Path(processing.SPARK_JOB_SCRIPT).name
            script.parent.mkdir()
            script.write_text((ROOT / "operators/kanari/drift/spark_job.py").read_text())
            proc = subprocess.run([sys.executable, str(script), *args,
                                   "--spark-master", "local[2]"], capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-2000:]
            output = params["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
            aws_mod.upload_dir(aws.s3, Path(out), aws_mod.S3Uri.parse(output, "output"))

    sm.meta.events.register("before-parameter-build.sagemaker.CreateProcessingJob", run_container)
    return created


def test_spark_baseline_job_writes_the_baseline_beside_the_model(aws: Any, sagemaker_runs_the_container: list) -> None:
    from kanari.drift.model_monitor import baseline_documents, read_baseline

    train_uri, model_uri, frame = put_train_split(aws)
    uri = steps.write_baseline(train_uri=train_uri, target="label", model_uri=model_uri, engine="spark",
                               spark=spark_params(**SECURITY), run_id="run-1", task="write-drift-baseline",
                               base_job_name="fraud", poll_initial_seconds=0.01)
    assert uri == f"s3://{aws.bucket}/kanari/group/training/job-1/output/baseline"
    (request,) = sagemaker_runs_the_container
    jobs = processing_jobs(aws)  # (moto's processing jobs are shared by the session's tests)
    assert request["ProcessingJobName"] in jobs
    assert request["ProcessingJobName"].startswith("fraud-baseline-")
    with tempfile.TemporaryDirectory() as tmp:
        aws_mod.download_prefix(aws.s3, aws_mod.S3Uri.parse(uri + "/", "b"), Path(tmp))
        written = read_baseline(tmp)
    # The Spark engine's baseline of the split equals the local engine's (counts and categories exactly).
    stats, _ = baseline_documents(frame, target="label")
    assert written.profile.rows == stats["dataset"]["item_count"] == len(frame)
    assert written.target == "label"
    assert written.profile.categories["country"].counts == {k: v for k, v in frame["country"].value_counts().items()}

    # A restarted step finds its job (same run, task and inputs) and creates no second one.
    again = steps.write_baseline(train_uri=train_uri, target="label", model_uri=model_uri, engine="spark",
                                 spark=spark_params(**SECURITY), run_id="run-1", task="write-drift-baseline",
                                 base_job_name="fraud", poll_initial_seconds=0.01)
    assert again == uri and len(sagemaker_runs_the_container) == 1 and processing_jobs(aws) == jobs


def test_the_job_runs_with_the_training_jobs_security_settings() -> None:
    """Same role, KMS keys, VPC and inter-container encryption as the training step's request."""
    train = config.build_request(config.parse_config(
        channels={"train": "s3://b/t/"}, output_s3_uri="s3://b/o", role_arn=ROLE, image_uri="img:1",
        instance_type="ml.m5.xlarge", **SECURITY), source_uri="s3://b/src/sourcedir.tar.gz", region="us-east-1")
    job = processing.build_request(processing.parse_config(train_uri="s3://b/t/", output_uri="s3://b/m/baseline",
                                                           target="label", **spark_params(**SECURITY)))
    cluster, network = job["ProcessingResources"]["ClusterConfig"], job["NetworkConfig"]
    assert job["RoleArn"] == train["RoleArn"]
    assert cluster["VolumeKmsKeyId"] == train["ResourceConfig"]["VolumeKmsKeyId"]
    assert job["ProcessingOutputConfig"]["KmsKeyId"] == train["OutputDataConfig"]["KmsKeyId"]
    assert network["VpcConfig"] == train["VpcConfig"]
    assert network["EnableInterContainerTrafficEncryption"] is True
    assert network["EnableNetworkIsolation"] is False
    assert "ProcessingInputs" not in job  # Spark reads S3 itself, from every instance
    assert job["AppSpecification"]["ContainerArguments"][:2] == ["--data", "s3://b/t/"]


def test_an_isolated_job_gets_its_data_as_an_input_on_one_instance(aws: Any) -> None:
    cfg = processing.parse_config(train_uri="s3://b/t/", output_uri="s3://b/m/baseline", target="label",
                                  **spark_params(instance_count=1, enable_network_isolation=True))
    job = processing.build_request(cfg)
    assert job["NetworkConfig"]["EnableNetworkIsolation"] is True
    (inp,) = job["ProcessingInputs"]
    assert inp["S3Input"]["S3Uri"] == "s3://b/t/" and inp["S3Input"]["LocalPath"] == processing.INPUT_PATH
    args = job["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--data") + 1] == processing.INPUT_PATH
    with pytest.raises(InputError) as err:
        processing.parse_config(train_uri="s3://b/t/", output_uri="s3://b/m/baseline", target="label",
                                **spark_params(instance_count=3, enable_network_isolation=True))
    assert err.value.parameter == "baseline_instance_count"


@pytest.mark.parametrize(("params", "parameter"), [
    ({"image_uri": ""}, "baseline_image_uri"),
    ({"instance_type": "ml.trn1.2xlarge"}, "baseline_instance_type"),
    ({"role_arn": "kanari"}, "role_arn"),
    ({"subnets": ["subnet-1"]}, "security_group_ids"),
    ({"instance_count": 0}, "baseline_instance_count"),
])
def test_bad_parameters_are_refused_before_anything_starts(aws: Any, params: dict[str, Any], parameter: str) -> None:
    train_uri, model_uri, _ = put_train_split(aws, rows=50)
    before = processing_jobs(aws)
    with pytest.raises(InputError) as err:
        steps.write_baseline(train_uri=train_uri, target="label", model_uri=model_uri, engine="spark",
                             spark={**spark_params(), **params}, run_id="r", task="t")
    assert err.value.parameter == parameter
    assert processing_jobs(aws) == before


def test_a_completed_job_without_both_files_is_no_baseline(aws: Any) -> None:
    """moto reports the job Completed without running anything: the step must look for the files."""
    train_uri, model_uri, _ = put_train_split(aws, rows=50)
    with pytest.raises(StepFailed, match="completed without writing statistics.json, constraints.json"):
        steps.write_baseline(train_uri=train_uri, target="label", model_uri=model_uri, engine="spark",
                             spark=spark_params(), run_id="r2", task="t", poll_initial_seconds=0.01)


def describe(name: str, status: str, **extra: Any) -> dict[str, Any]:
    """A DescribeProcessingJob response with every field the service model requires."""
    return {
        "ProcessingJobName": name, "ProcessingJobStatus": status, "CreationTime": "2026-11-30T00:00:00Z",
        "ProcessingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:processing-job/{name}",
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 2, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 100}},
        "AppSpecification": {"ImageUri": IMAGE}, **extra,
    }


def test_a_failed_job_fails_the_step_with_its_reason(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    train_uri, model_uri, _ = put_train_split(aws, rows=50)
    sm = aws_mod.client("sagemaker")
    real = aws_mod.client
    monkeypatch.setattr(aws_mod, "client", lambda service, *a, **k: sm if service == "sagemaker" else real(service, *a, **k))
    with Stubber(sm) as stub:
        stub.add_client_error("describe_processing_job", "ValidationException", "Could not find processing job",
                              expected_params={"ProcessingJobName": ANY})
        # The request itself is checked against the service model (strictly, by conftest) as it is sent.
        stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:processing-job/x"})
        stub.add_response("describe_processing_job", describe("x", "InProgress"), {"ProcessingJobName": ANY})
        stub.add_response("describe_processing_job", describe(
            "x", "Failed", FailureReason="AlgorithmError: java.lang.OutOfMemoryError: Java heap space"),
            {"ProcessingJobName": ANY})
        with pytest.raises(StepFailed, match="processing job .* ended Failed: AlgorithmError: java.lang.OutOfMemoryError"):
            steps.write_baseline(train_uri=train_uri, target="label", model_uri=model_uri, engine="spark",
                                 spark=spark_params(), run_id="r3", task="t", poll_initial_seconds=0.01)
        stub.assert_no_pending_responses()


def test_auto_profiles_small_splits_here_and_large_ones_on_spark(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    train_uri, model_uri, _ = put_train_split(aws, rows=500)
    before = processing_jobs(aws)
    uri = steps.write_baseline(train_uri=train_uri, target="label", model_uri=model_uri, engine="auto",
                               spark=spark_params(), run_id="r4", task="t")
    assert processing_jobs(aws) == before and aws_mod.exists(aws.s3, aws_mod.S3Uri.parse(uri + "/statistics.json", "b"))
    s3 = aws_mod.client("s3")
    assert processing.choose_engine("auto", s3, train_uri) == "local"
    monkeypatch.setattr(processing, "AUTO_SPARK_BYTES", 1_000)
    assert processing.choose_engine("auto", s3, train_uri) == "spark"
    with pytest.raises(InputError) as err:
        processing.choose_engine("emr", s3, train_uri)
    assert err.value.parameter == "baseline_engine"


def test_a_local_run_keeps_the_local_engine(tmp_path: Path) -> None:
    from kfp_pipelines import local

    with pytest.raises(InputError) as err:
        local.run_local(bucket="b", model_package_group="g", workdir=tmp_path, parameters={"baseline_engine": "spark"})
    assert err.value.parameter == "baseline_engine"


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    instance_type=st.one_of(st.sampled_from(processing.instance_types()), text),
    instance_count=st.integers(-2, 120),
    subnets=st.lists(st.sampled_from(["subnet-0a1b2c3d", "subnet-9f8e7d6c"]), max_size=3, unique=True),
    groups=st.lists(st.just("sg-0a1b2c3d"), max_size=1),
    isolation=st.booleans(),
    kms=st.sampled_from(["", SECURITY["volume_kms_key_id"], "alias/kanari"]),
    image=st.sampled_from(["", IMAGE]),
    target=st.sampled_from(["label", "is fraud", "ÿ"]),
)
def test_any_accepted_configuration_is_a_request_sagemaker_accepts(
    instance_type: str, instance_count: int, subnets: list[str], groups: list[str], isolation: bool, kms: str,
    image: str, target: str,
) -> None:
    """Hostile parameters end in an InputError naming one, never a traceback; whatever is accepted builds a
    CreateProcessingJob request botocore's validator and SageMaker's limits (conftest's strict check) accept."""
    import botocore.session
    from botocore.validate import ParamValidator

    from tests.pipelines.conftest import _strict_errors

    try:
        cfg = processing.parse_config(
            train_uri="s3://b/t/", output_uri="s3://b/m/baseline", target=target, role_arn=ROLE, image_uri=image,
            instance_type=instance_type, instance_count=instance_count, subnets=subnets, security_group_ids=groups,
            volume_kms_key_id=kms, output_kms_key_id=kms, enable_network_isolation=isolation,
        )
    except InputError as exc:
        assert exc.parameter and exc.message
        return
    request = {"ProcessingJobName": config.job_name("fraud-baseline", "run", "task", "0" * 64),
               **processing.build_request(cfg), "Tags": config.tags("run", "task", "0" * 64, "sagemaker-processing")}
    shape = botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateProcessingJob").input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    assert _strict_errors(shape, request, "CreateProcessingJob") == []
    assert not (isolation and instance_count > 1)


def test_the_exit_handler_stops_this_runs_baseline_jobs_only(aws: Any) -> None:
    """A run terminated from the KFP UI: its running baseline job is stopped, another run's is left alone."""
    sm = aws_mod.client("sagemaker")
    arn = "arn:aws:sagemaker:us-east-1:123456789012:processing-job/"
    summary = {"CreationTime": "2026-11-30T00:00:00Z", "ProcessingJobStatus": "InProgress"}
    with Stubber(sm) as stub:
        stub.add_response("list_processing_jobs", {"ProcessingJobSummaries": [
            {"ProcessingJobName": "fraud-baseline-mine", "ProcessingJobArn": arn + "fraud-baseline-mine", **summary},
            {"ProcessingJobName": "fraud-baseline-theirs", "ProcessingJobArn": arn + "fraud-baseline-theirs", **summary},
        ]}, {"StatusEquals": "InProgress"})
        stub.add_response("list_tags", {"Tags": config.tags("run-7", "t", "0" * 64, "sagemaker-processing")},
                          {"ResourceArn": arn + "fraud-baseline-mine"})
        stub.add_response("describe_processing_job", describe("fraud-baseline-mine", "InProgress"),
                          {"ProcessingJobName": "fraud-baseline-mine"})
        stub.add_response("stop_processing_job", {}, {"ProcessingJobName": "fraud-baseline-mine"})
        stub.add_response("list_tags", {"Tags": config.tags("run-77", "t", "0" * 64, "sagemaker-processing")},
                          {"ResourceArn": arn + "fraud-baseline-theirs"})
        assert processing.stop_run_jobs(sm, "run-7") == ["fraud-baseline-mine"]
        stub.assert_no_pending_responses()
