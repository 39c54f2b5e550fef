"""Errors a pipeline step reports to the person who started it, and how a step reports them.

A step that fails on bad input names the parameter to fix; the local runner and the CLI read the
one structured line a failing step prints (STEP_ERROR_MARKER) to say which step failed and why,
and the same line is what an operator finds in the pod log on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator

STEP_ERROR_MARKER = "kanari-step-error: "
API_CALLS_MARKER = "kanari-aws-calls: "

log = logging.getLogger("kanari.pipeline")


class InputError(ValueError):
    """Bad input found before anything was created; `parameter` is the pipeline/component parameter to fix."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class StepFailed(RuntimeError):
    """A dependency (SageMaker, S3, Kubernetes, the training script) reported a failure."""


def configure_step_logging() -> None:
    """Step processes log to stdout, which KFP streams (kfp.local) or keeps as the pod log."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[kanari] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def error_line(step: str, exc: BaseException) -> str:
    parameter = exc.parameter if isinstance(exc, InputError) else None
    message = exc.message if isinstance(exc, InputError) else str(exc) or type(exc).__name__
    payload = {"step": step, "parameter": parameter, "kind": type(exc).__name__, "message": message}
    return STEP_ERROR_MARKER + json.dumps(payload, sort_keys=True)


def parse_error_line(line: str) -> dict[str, str | None] | None:
    idx = line.find(STEP_ERROR_MARKER)
    if idx < 0:
        return None
    try:
        payload = json.loads(line[idx + len(STEP_ERROR_MARKER) :])
    except json.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def parse_api_calls(line: str) -> dict[str, int] | None:
    idx = line.find(API_CALLS_MARKER)
    if idx < 0:
        return None
    try:
        payload = json.loads(line[idx + len(API_CALLS_MARKER) :])
    except json.JSONDecodeError:
        return None
    return {str(k): int(v) for k, v in payload.items()} if isinstance(payload, dict) else None


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Run a step body: known failures end the process with one readable line, not a traceback.

    Whatever happens, the step also reports how many AWS API calls it made.
    """
    from kfp_pipelines import aws

    configure_step_logging()
    try:
        yield
    except (InputError, StepFailed) as exc:
        print(error_line(name, exc), flush=True)
        raise SystemExit(1) from None
    except Exception as exc:
        # Unexpected: keep the traceback for whoever debugs it, but still say which step and why.
        print(error_line(name, exc), flush=True)
        raise
    finally:
        print(API_CALLS_MARKER + json.dumps(aws.api_calls(), sort_keys=True), flush=True)
