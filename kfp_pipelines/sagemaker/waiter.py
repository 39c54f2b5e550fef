"""Waiting for a training job: exponential backoff (capped), each status change logged once.

The status source is a function returning a DescribeTrainingJob-shaped dict, so the same loop waits
on SageMaker (boto3) and on an ACK TrainingJob's status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kfp_pipelines.errors import StepFailed

log = logging.getLogger("kanari.pipeline")

class TrainingJobFailed(StepFailed):
    def __init__(self, job_name: str, status: str, reason: str, kind: str = "training job"):
        super().__init__(f"{kind} {job_name} ended {status}: {reason}")
        self.job_name = job_name
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Backoff:
    initial: float = 10.0
    cap: float = 300.0
    factor: float = 2.0

    def next_delay(self, previous: float | None, changed: bool) -> float:
        """Back off while nothing changes; after a change, look again soon."""
        if previous is None or changed:
            return self.initial
        return min(self.cap, previous * self.factor)


@dataclass
class WaitRecord:
    polls: int = 0
    delays: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)


def status_key(desc: dict[str, Any], status_field: str = "TrainingJobStatus") -> str:
    return f"{desc.get(status_field, '?')}/{desc.get('SecondaryStatus', '?')}"


def new_transitions(desc: dict[str, Any], seen: int) -> list[dict[str, Any]]:
    return list(desc.get("SecondaryStatusTransitions") or [])[seen:]


def failure_reason(desc: dict[str, Any], status_field: str = "TrainingJobStatus") -> str:
    reason = desc.get("FailureReason")
    if reason:
        return str(reason)
    if desc.get(status_field) == "Stopped" and status_field != "TrainingJobStatus":
        return "the job was stopped (the pipeline run was cancelled or failed, someone stopped it, or MaxRuntime was reached)"
    if desc.get(status_field) == "Stopped":
        return ("StopTrainingJob was called (the pipeline run was cancelled or failed, or someone stopped it), "
                "or MaxRuntime/MaxWaitTime was reached; no model was produced")
    return "no FailureReason given"


def wait(
    job_name: str,
    describe: Callable[[], dict[str, Any]],
    backoff: Backoff,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_poll: Callable[[], Any] | None = None,
    kind: str = "training job",
    status_field: str = "TrainingJobStatus",
) -> tuple[dict[str, Any], WaitRecord]:
    """Poll until the job is terminal. Completed returns; Failed/Stopped raise with FailureReason.

    on_poll runs after every status read (the CloudWatch log tail), including the last one, so the
    job's final lines are printed before the step reports the outcome.
    """
    record = WaitRecord()
    deadline = None if timeout is None else clock() + timeout
    last_key: str | None = None
    seen_transitions = 0
    delay: float | None = None
    while True:
        desc = describe()
        record.polls += 1
        key = status_key(desc, status_field)
        changed = key != last_key
        if changed:
            log.info("%s %s: %s", kind, job_name, key)
            record.statuses.append(key)
            last_key = key
        for t in new_transitions(desc, seen_transitions):
            log.info("%s %s: %s %s", kind, job_name, t.get("Status", ""), t.get("StatusMessage", ""))
            seen_transitions += 1
        if on_poll is not None:
            on_poll()
        status = desc.get(status_field)
        if status == "Completed":
            return desc, record
        if status in ("Failed", "Stopped"):
            raise TrainingJobFailed(job_name, str(status), failure_reason(desc, status_field), kind)
        delay = backoff.next_delay(delay, changed)
        if deadline is not None and clock() + delay > deadline:
            raise StepFailed(f"{kind} {job_name} still {key} after {timeout:.0f}s of waiting")
        record.delays.append(delay)
        sleep(delay)
