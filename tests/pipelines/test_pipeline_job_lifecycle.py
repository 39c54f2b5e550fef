"""A training job's life beyond the happy path: each run checkpoints under its own prefix and trains from
scratch; a job that ended Failed is retried as a new attempt, never re-attached; a cancelled run stops
its job (SIGTERM in the step, and the exit handler); the job's CloudWatch lines reach the step's log.

moto has no StopTrainingJob, Search or failed jobs: those calls go through botocore's Stubber, which
checks every request (and canned response) against SageMaker's service model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import ANY, Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from kfp_pipelines import aws as aws_mod
from kfp_pipelines.errors import StepFailed
from kfp_pipelines.sagemaker import config, training
from kfp_pipelines.sagemaker.logs import LOG_GROUP, LogTail
from kfp_pipelines.sagemaker.waiter import Backoff, wait
from tests.pipelines.test_pipeline_sagemaker_backends import ROLE, cfg, put_channels

REGION = "us-east-1"
ARN = f"arn:aws:sagemaker:{REGION}:123456789012:training-job/"


def job_description(name: str, status: str, **extra: Any) -> dict[str, Any]:
    """A DescribeTrainingJob response with every field the service model requires."""
    return {
        "TrainingJobName": name, "TrainingJobArn": ARN + name, "TrainingJobStatus": status,
        "SecondaryStatus": {"Completed": "Completed", "Failed": "Failed", "Stopped": "Stopped"}.get(status, "Training"),
        "ModelArtifacts": {"S3ModelArtifacts": extra.pop("model", "")},
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": config.default_image(REGION)},
        "ResourceConfig": {"InstanceType": "ml.trn1.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "CreationTime": datetime(2026, 11, 30, tzinfo=UTC),
        **extra,
    }


def not_found(stub: Stubber, name: str) -> None:
    stub.add_client_error("describe_training_job", "ValidationException", "Requested resource not found.",
                          expected_params={"TrainingJobName": name})


@pytest.fixture()
def stubbed_sagemaker(monkeypatch: pytest.MonkeyPatch, aws: Any) -> Stubber:
    """SageMaker through a Stubber; S3, logs and ECR stay on the moto server."""
    sm = aws_mod.client("sagemaker")
    real = aws_mod.client
    monkeypatch.setattr(aws_mod, "client", lambda service, *a, **k: sm if service == "sagemaker" else real(service, *a, **k))
    with Stubber(sm) as stub:
        yield stub
        stub.assert_no_pending_responses()


def expected_names(aws: Any, c: config.TrainingJobConfig, base: str, run_id: str, task: str) -> list[str]:
    _, digest = training.package_source(training.default_source_dir(), c.entry_point)
    source = aws_mod.S3Uri.parse(c.output_s3_uri, "o").join("source", digest, "sourcedir.tar.gz")
    h = config.inputs_hash(config.build_request(c, source_uri=str(source), region=REGION))
    return [config.job_name(base, run_id, task, h, attempt) for attempt in range(3)]


@pytest.mark.timeout(60)
def test_a_failed_job_is_retried_as_a_new_attempt_not_reattached(aws, stubbed_sagemaker: Stubber) -> None:
    """Regression: a restarted step re-attached to its Failed job (e.g. InsufficientCapacityError), so the
    step failed again without trying; now it starts the next attempt."""
    base = f"retry-{uuid.uuid4().hex[:6]}"
    c = cfg(aws, put_channels(aws, "data"))
    first, second, _ = expected_names(aws, c, base, "run-1", "train")
    model = f"s3://{aws.bucket}/training/{second}/output/model.tar.gz"
    aws.s3.put_object(Bucket=aws.bucket, Key=f"training/{second}/output/model.tar.gz", Body=b"model")
    stub = stubbed_sagemaker
    stub.add_response("describe_training_job", job_description(
        first, "Failed", FailureReason="CapacityError: Unable to provision requested ML compute capacity."),
        {"TrainingJobName": first})
    not_found(stub, second)
    stub.add_response("create_training_job", {"TrainingJobArn": ARN + second},
                      {"TrainingJobName": second, **{k: ANY for k in (
                          "AlgorithmSpecification", "RoleArn", "HyperParameters", "InputDataConfig", "OutputDataConfig",
                          "ResourceConfig", "StoppingCondition", "EnableNetworkIsolation",
                          "EnableInterContainerTrafficEncryption", "EnableManagedSpotTraining", "Tags")}})
    stub.add_response("describe_training_job", job_description(second, "Completed", model=model),
                      {"TrainingJobName": second})
    result = training.run_training(c, backend="sagemaker", run_id="run-1", task="train", base_job_name=base,
                                   source_dir=training.default_source_dir(), backoff=Backoff(initial=0.01, cap=0.01))
    assert result.job_name == second and not result.reattached and result.model_uri == model


def test_a_running_job_is_reattached_and_too_many_failures_stop_trying() -> None:
    seen: list[str] = []

    def lookup(status: str):
        def describe(name: str) -> dict[str, Any]:
            seen.append(name)
            return {"TrainingJobStatus": status}
        return describe

    name, existed = training.choose_attempt(lookup("InProgress"), lambda a: f"job-{a}")
    assert (name, existed, seen) == ("job-0", True, ["job-0"])
    with pytest.raises(StepFailed, match="10 training jobs of this step ended Failed or Stopped"):
        training.choose_attempt(lookup("Stopped"), lambda a: f"job-{a}")


@pytest.mark.timeout(120)
def test_two_runs_in_a_row_each_train_from_scratch(aws, caplog, tmp_path) -> None:
    """Regression: every run shared checkpoint_s3_uri, so run 2 (on new data) resumed run 1 at its last
    epoch, trained nothing and shipped run 1's weights."""
    base = f"ckpt-{uuid.uuid4().hex[:6]}"
    c = cfg(aws, put_channels(aws, "data"), use_spot=True, max_runtime_seconds=600, max_wait_seconds=1200,
            checkpoint_s3_uri=f"s3://{aws.bucket}/checkpoints/")
    results = []
    for run in ("run-1", "run-2"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kanari.pipeline"):
            results.append(training.run_training(c, backend="local", run_id=run, task="train", base_job_name=base,
                                                 source_dir=training.default_source_dir(), workdir=tmp_path))
        lines = [r.getMessage() for r in caplog.records]
        assert not any("resuming from checkpoint" in line for line in lines), run
        assert sum("epoch=" in line and "train_loss=" in line for line in lines) == 2, run
        assert results[-1].metrics["epochs_trained"] == 2
    prefixes = {k.split("/")[1] for k in aws.object_keys("checkpoints/")}
    assert prefixes == {r.job_name for r in results}  # one checkpoint prefix per job
    jobs = [aws.sm.describe_training_job(TrainingJobName=r.job_name)["CheckpointConfig"]["S3Uri"] for r in results]
    assert jobs == [f"s3://{aws.bucket}/checkpoints/{r.job_name}/" for r in results]


def test_the_exit_handler_stops_the_runs_running_jobs(stubbed_sagemaker: Stubber) -> None:
    stub = stubbed_sagemaker
    search = {"Resource": "TrainingJob", "MaxResults": 100, "SearchExpression": {"Filters": [
        {"Name": "Tags.kanari.dev/pipeline-run", "Operator": "Equals", "Value": "run-9"},
        {"Name": "TrainingJobStatus", "Operator": "Equals", "Value": "InProgress"}]}}
    stub.add_response("search", {"Results": [{"TrainingJob": {"TrainingJobName": "fraud-a"}},
                                             {"TrainingJob": {"TrainingJobName": "fraud-b"}}], "NextToken": "t"}, search)
    stub.add_response("describe_training_job", job_description("fraud-a", "InProgress"), {"TrainingJobName": "fraud-a"})
    stub.add_response("stop_training_job", {}, {"TrainingJobName": "fraud-a"})
    # fraud-b ended between Search and the stop: nothing to stop.
    stub.add_response("describe_training_job", job_description("fraud-b", "Completed"), {"TrainingJobName": "fraud-b"})
    stub.add_response("search", {"Results": []}, {**search, "NextToken": "t"})
    assert training.stop_run_jobs(aws_mod.client("sagemaker"), "run-9") == ["fraud-a"]


@pytest.mark.timeout(30)
def test_a_terminated_step_stops_its_job(stubbed_sagemaker: Stubber) -> None:
    """KFP deletes a terminated run's pods: SIGTERM reaches the waiting step, which stops the job."""
    stub = stubbed_sagemaker
    stub.add_response("describe_training_job", job_description("fraud-c", "InProgress"), {"TrainingJobName": "fraud-c"})
    stub.add_response("stop_training_job", {}, {"TrainingJobName": "fraud-c"})
    sm = aws_mod.client("sagemaker")
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(StepFailed, match="the step was terminated"), \
            training.stop_on_sigterm(lambda: training.stop_job(sm, "fraud-c")):
        wait("fraud-c", lambda: {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"},
             Backoff(initial=0.05, cap=0.05), timeout=10)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


@pytest.mark.timeout(30)
def test_cloudwatch_lines_are_streamed_once_each(aws) -> None:
    logs = aws_mod.client("logs")
    job = f"logs-{uuid.uuid4().hex[:6]}"
    printed: list[str] = []
    tail = LogTail(logs, job, printed.append)
    assert tail.poll() == 0 and not tail.disabled  # the group does not exist yet: silence, not an error
    with contextlib.suppress(aws_mod.ClientError):  # another test made it
        logs.create_log_group(logGroupName=LOG_GROUP)
    stream = f"{job}/algo-1-1700000000"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[
        {"timestamp": now, "message": "epoch=1 train_loss=0.5"}, {"timestamp": now + 1, "message": "epoch=2 train_loss=0.4"}])
    # Another job's stream in the same group is not this job's log.
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=f"other-{job}/algo-1-1")
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=f"other-{job}/algo-1-1",
                        logEvents=[{"timestamp": now, "message": "not ours"}])
    assert tail.poll() == 2
    assert tail.poll() == 0
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                        logEvents=[{"timestamp": now + 1, "message": "same millisecond"},
                                   {"timestamp": now + 5, "message": "done: validation pr_auc=0.93"}])
    assert tail.poll() == 2
    assert printed == ["epoch=1 train_loss=0.5", "epoch=2 train_loss=0.4", "same millisecond",
                       "done: validation pr_auc=0.93"]


def test_unreadable_logs_are_reported_once_and_never_decide_the_job(caplog) -> None:
    class Denied:
        calls = 0

        def filter_log_events(self, **_: Any) -> dict[str, Any]:
            self.calls += 1
            raise aws_mod.ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "FilterLogEvents")

    denied = Denied()
    tail = LogTail(denied, "job")
    with caplog.at_level(logging.WARNING, logger="kanari.pipeline"):
        desc, _ = wait("job", lambda: {"TrainingJobStatus": "Completed", "SecondaryStatus": "Completed"},
                       Backoff(initial=0.01), on_poll=tail.poll)
        tail.poll()
    assert desc["TrainingJobStatus"] == "Completed" and denied.calls == 1
    assert sum("cannot read the CloudWatch logs" in r.getMessage() for r in caplog.records) == 1


def test_the_ack_training_job_carries_the_run_label_the_exit_handler_selects() -> None:
    req = {"TrainingJobName": "kanari-abc", "RoleArn": ROLE,
           "Tags": config.tags("7d3c1c4e-5a5f-4d4e-9f0b-1b2c3d4e5f60", "train", "h" * 8, "ack")}
    obj = config.ack_training_job(req, "ml-training")
    assert obj["metadata"]["labels"][config.RUN_TAG] == "7d3c1c4e-5a5f-4d4e-9f0b-1b2c3d4e5f60"


def test_requests_are_held_to_sagemakers_limits_before_moto_sees_them(aws) -> None:
    """tests/pipelines/conftest.py: max lengths, enums and patterns, which moto does not check."""
    from kfp_pipelines import aws as aws_mod

    sm = aws_mod.client("sagemaker", region="us-east-1")
    with pytest.raises(ValueError, match="TrainingJobName"):
        sm.describe_training_job(TrainingJobName="x" * 64)
    with pytest.raises(ValueError, match="does not match"):
        sm.describe_model_package_group(ModelPackageGroupName="not_valid!")


class _Logs:
    """FilterLogEvents over a growing list of events, paged, as CloudWatch answers it."""

    def __init__(self, page_size: int):
        self.events: list[dict[str, Any]] = []
        self.page_size = page_size

    def filter_log_events(self, *, logGroupName: str, logStreamNamePrefix: str, startTime: int,  # noqa: N803
                          nextToken: str | None = None) -> dict[str, Any]:
        matching = [e for e in self.events if e["timestamp"] >= startTime]
        start = int(nextToken or 0)
        page = matching[start:start + self.page_size]
        out: dict[str, Any] = {"events": page}
        if start + self.page_size < len(matching):
            out["nextToken"] = str(start + self.page_size)
        return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=0, max_value=3), max_size=8), max_size=8),
       st.integers(min_value=1, max_value=4))
def test_every_log_line_is_printed_once_in_order_whatever_the_timing(batches: list[list[int]], page_size: int) -> None:
    """Events arrive in batches between polls, several in the same millisecond, pages of any size: each
    line reaches the step's log exactly once, in CloudWatch's order."""
    logs = _Logs(page_size)
    printed: list[str] = []
    tail = LogTail(logs, "job", printed.append)
    now, n = 1_000, 0
    for batch in batches:
        for step in batch:
            now += step  # 0: the same millisecond as the previous event
            logs.events.append({"timestamp": now, "eventId": f"e{n}", "message": f"line {n}"})
            n += 1
        tail.poll()
    while tail.poll():
        pass
    assert printed == [f"line {i}" for i in range(n)]
