"""Waiting on a training job: exponential backoff, capped; each status change logged once; Failed and
Stopped end the step with SageMaker's FailureReason; a job that never ends is reported, not awaited forever."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kfp_pipelines.errors import StepFailed
from kfp_pipelines.sagemaker.waiter import Backoff, TrainingJobFailed, wait


class Script:
    """DescribeTrainingJob answers in order (the last one repeats), with a fake clock advanced by sleep."""

    def __init__(self, *answers: dict[str, Any]):
        self.answers = list(answers)
        self.now = 0.0
        self.sleeps: list[float] = []

    def describe(self) -> dict[str, Any]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def status(main: str, secondary: str, **extra: Any) -> dict[str, Any]:
    return {"TrainingJobStatus": main, "SecondaryStatus": secondary, **extra}


def test_backoff_doubles_while_nothing_changes_and_resets_on_change(caplog: pytest.LogCaptureFixture) -> None:
    s = Script(
        status("InProgress", "Starting"),
        *[status("InProgress", "Training")] * 7,
        status("Completed", "Completed", ModelArtifacts={"S3ModelArtifacts": "s3://b/m.tar.gz"}),
    )
    with caplog.at_level(logging.INFO, logger="kanari.pipeline"):
        desc, record = wait("job-1", s.describe, Backoff(initial=10, cap=60), sleep=s.sleep, clock=lambda: s.now)
    assert desc["ModelArtifacts"]["S3ModelArtifacts"] == "s3://b/m.tar.gz"
    assert s.sleeps == [10, 10, 20, 40, 60, 60, 60, 60]
    assert record.polls == 9
    changes = [r.getMessage() for r in caplog.records if "job-1:" in r.getMessage()]
    assert changes == [
        "training job job-1: InProgress/Starting",
        "training job job-1: InProgress/Training",
        "training job job-1: Completed/Completed",
    ]


def test_secondary_status_transitions_are_streamed_once(caplog: pytest.LogCaptureFixture) -> None:
    t1 = {"Status": "Starting", "StatusMessage": "Preparing the instances for training"}
    t2 = {"Status": "Downloading", "StatusMessage": "Downloading input data"}
    s = Script(status("InProgress", "Starting", SecondaryStatusTransitions=[t1]),
               status("InProgress", "Downloading", SecondaryStatusTransitions=[t1, t2]),
               status("Completed", "Completed", SecondaryStatusTransitions=[t1, t2]))
    with caplog.at_level(logging.INFO, logger="kanari.pipeline"):
        wait("job-2", s.describe, Backoff(initial=1, cap=4), sleep=s.sleep, clock=lambda: s.now)
    streamed = [r.getMessage() for r in caplog.records if "Preparing" in r.getMessage() or "Downloading input" in
                r.getMessage()]
    assert len(streamed) == 2


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (status("Failed", "Failed", FailureReason="AlgorithmError: ValueError: bad data"),
         "ended Failed: AlgorithmError: ValueError: bad data"),
        (status("Stopped", "MaxWaitTimeExceeded", FailureReason="Spot capacity unavailable"),
         "ended Stopped: Spot capacity unavailable"),
        (status("Stopped", "Stopped"), "ended Stopped: StopTrainingJob was called (the pipeline run was cancelled"),
    ],
)
def test_failed_and_stopped_end_the_step_with_the_reason(final: dict[str, Any], expected: str) -> None:
    s = Script(status("InProgress", "Training"), final)
    with pytest.raises(TrainingJobFailed) as err:
        wait("job-3", s.describe, Backoff(initial=1, cap=2), sleep=s.sleep, clock=lambda: s.now)
    assert expected in str(err.value)
    assert err.value.status == final["TrainingJobStatus"]


def test_a_job_that_never_ends_is_reported_after_the_timeout() -> None:
    s = Script(status("InProgress", "Training"))
    with pytest.raises(StepFailed, match="still InProgress/Training after 100s"):
        wait("job-4", s.describe, Backoff(initial=10, cap=40), timeout=100, sleep=s.sleep, clock=lambda: s.now)
    assert sum(s.sleeps) <= 100
