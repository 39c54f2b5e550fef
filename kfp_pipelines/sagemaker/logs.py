"""The training job's CloudWatch log lines, streamed into the component's own log while it waits.

SageMaker writes each host's output to /aws/sagemaker/TrainingJobs, stream `<job>/algo-N-<epoch>`.
The SageMaker Python SDK tails the same group (sagemaker.logs); the waiter only needs "new lines since
the last poll", which FilterLogEvents gives with a start time and the event ids already printed.
Logs are a view: a missing group (the job has not started) is silence, any other error is reported
once and streaming stops; it never decides the job's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kfp_pipelines import aws

log = logging.getLogger("kanari.pipeline")

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
PAGE_LIMIT = 10  # pages per poll: a chatty job cannot stall the status poll behind its logs


class LogTail:
    def __init__(self, logs: Any, job_name: str, emit: Callable[[str], None] | None = None):
        self.logs = logs
        self.job_name = job_name
        self.emit = emit or (lambda line: log.info("[%s] %s", job_name, line))
        self.start_ms = 0
        self.seen_at_start: set[str] = set()
        self.lines = 0
        self.disabled = False

    def poll(self) -> int:
        """Print the lines written since the last poll; returns how many."""
        if self.disabled:
            return 0
        kwargs: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{self.job_name}/",
                                  "startTime": self.start_ms}
        printed = 0
        try:
            for _ in range(PAGE_LIMIT):
                page = self.logs.filter_log_events(**kwargs)
                for event in page.get("events") or []:
                    ts, eid = int(event.get("timestamp", 0)), str(event.get("eventId", ""))
                    if ts < self.start_ms or (ts == self.start_ms and eid in self.seen_at_start):
                        continue
                    if ts > self.start_ms:
                        self.start_ms, self.seen_at_start = ts, set()
                    self.seen_at_start.add(eid)
                    self.emit(str(event.get("message", "")).rstrip("\n"))
                    printed += 1
                if not page.get("nextToken"):
                    break
                kwargs["nextToken"] = page["nextToken"]
        except aws.ClientError as exc:
            if aws.error_code(exc) != "ResourceNotFoundException":
                log.warning("cannot read the CloudWatch logs of %s (%s); the job's status is still followed",
                            self.job_name, aws.error_code(exc) or exc)
                self.disabled = True
        self.lines += printed
        return printed
