"""Run the whole pipeline on this machine through kfp.local, with the local training backend.

kfp.local executes every component in a subprocess of the current virtualenv (SubprocessRunner,
use_venv=False); the training step runs train.py here under SageMaker's container contract and
records the job through the SageMaker API, so the registry's lineage holds a real job ARN.
AWS calls go wherever the environment points (AWS_ENDPOINT_URL: a moto server or LocalStack).

kfp.local keeps global state (its config, print and logging redirections), so runs in one process
are serialised.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp_pipelines import aws
from kfp_pipelines.data import BUILTIN_DATASET, BUILTIN_TARGET
from kfp_pipelines.errors import InputError, parse_api_calls, parse_error_line
from kfp_pipelines.sagemaker.config import DEFAULT_INSTANCE_TYPE

DEFAULT_WORKDIR = Path(".kanari") / "pipeline"
LOCAL_ROLE_NAME = "kanari-sagemaker-execution"

_run_lock = threading.Lock()
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (SUCCESS|FAILURE)")
_INNER_FAILED = re.compile(r"Inner task failed: '([^']+)'")
_STEP_LOG = "[kanari] "


@dataclass(frozen=True)
class RunResult:
    """What a local pipeline run produced. Without a passed gate, nothing was registered or deployed."""

    pipeline_run_id: str
    gate_passed: bool
    gate_reason: str
    metrics: dict[str, float]
    training_job_name: str
    training_job_arn: str
    model_uri: str
    model_package_arn: str | None
    approval_status: str | None
    baseline_uri: str | None
    manifest_path: str | None
    applied: str | None = None
    api_calls: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    log_path: str = ""


class PipelineRunError(RuntimeError):
    """A step failed; `step` names it and `cause` says why (`parameter` when bad input was the cause)."""

    def __init__(self, step: str, cause: str, parameter: str | None, log_path: str):
        where = f" ({parameter})" if parameter else ""
        super().__init__(f"step {step} failed{where}: {cause}")
        self.step = step
        self.cause = cause
        self.parameter = parameter
        self.log_path = log_path


class _Tee(io.TextIOBase):
    """Receives kfp.local's stdout: keeps all of it in the run log, reports progress, collects results."""

    def __init__(self, log: io.TextIOBase, progress: Callable[[str], None] | None, console: Any):
        self.log = log
        self.console = console
        self.progress = progress
        self.buffer_ = ""
        self.step_errors: list[dict[str, Any]] = []
        self.calls: collections.Counter[str] = collections.Counter()
        self.started: dict[str, float] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.buffer_ += text
        while "\n" in self.buffer_:
            line, self.buffer_ = self.buffer_.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def _say(self, text: str) -> None:
        if self.progress:
            # The callback sees the real stdout, not this redirection.
            with contextlib.redirect_stdout(self.console):
                self.progress(text)

    def _line(self, line: str) -> None:
        if err := parse_error_line(line):
            self.step_errors.append(err)
            return
        if (calls := parse_api_calls(line)) is not None:
            self.calls.update(calls)
            return
        if m := _EXECUTING.search(line):
            self.started[m.group(1)] = time.monotonic()
            self._say(f"> {m.group(1)}")
        elif m := _FINISHED.search(line):
            took = time.monotonic() - self.started.get(m.group(1), time.monotonic())
            mark = "ok" if m.group(2) == "SUCCESS" else "FAILED"
            self._say(f"  {mark} {m.group(1)} ({took:.1f}s)")
        elif (idx := line.find(_STEP_LOG)) >= 0:
            self._say("    " + line[idx + len(_STEP_LOG) :])


def resolve_git_sha(path: Path | None = None) -> str:
    """The commit of the training code (with -dirty when it has uncommitted changes)."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], check=True, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise InputError("git_sha", f"{where} is not in a git checkout; pass the training code's commit") from None
    return f"{sha}-dirty" if dirty else sha


def local_role_arn() -> str:
    account = aws.client("sts").get_caller_identity()["Account"]
    return f"arn:aws:iam::{account}:role/{LOCAL_ROLE_NAME}"


def run_local(
    *,
    bucket: str,
    model_package_group: str,
    dataset_uri: str = BUILTIN_DATASET,
    target: str = BUILTIN_TARGET,
    model_name: str = "kanari-classifier",
    namespace: str = "default",
    auto_approve: bool = False,
    reason: str = "",
    hyperparameters: Mapping[str, Any] | None = None,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    gate_metric: str = "pr_auc",
    gate_tolerance: float = 0.02,
    manifest_dir: str | Path | None = None,
    apply_manifest: bool = False,
    git_sha: str | None = None,
    role_arn: str | None = None,
    workdir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run the training pipeline locally, end to end; raises PipelineRunError naming the failed step.

    manifest_dir: the GitOps directory (default <workdir>/gitops); the ModelDeployment lands at
    <manifest_dir>/<namespace>/<model_name>.yaml. workdir: default ./.kanari/pipeline.
    parameters: any other pipeline parameter (e.g. drift_alert, use_spot), by the pipeline's names.
    """
    from kfp import local

    from kfp_pipelines.pipeline import local_training_pipeline

    root = Path(workdir or DEFAULT_WORKDIR).resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    before = aws.api_calls()
    arguments: dict[str, Any] = {
        "bucket": bucket,
        "model_package_group": model_package_group,
        "role_arn": role_arn or local_role_arn(),
        "git_sha": git_sha or resolve_git_sha(),
        "dataset_uri": dataset_uri,
        "target": target,
        "model_name": model_name,
        "namespace": namespace,
        "training_backend": "local",
        "instance_type": instance_type,
        "hyperparameters": dict(hyperparameters or {}),
        "gate_metric": gate_metric,
        "gate_tolerance": gate_tolerance,
        "auto_approve": auto_approve,
        "reason": reason,
        "manifest_dir": str(Path(manifest_dir).resolve() if manifest_dir else root / "gitops"),
        "apply_manifest": apply_manifest,
        **dict(parameters or {}),
    }
    if arguments.get("baseline_engine", "local") != "local":
        # The Spark baseline is a SageMaker Processing job: nothing here could run it.
        raise InputError("baseline_engine", "a local run profiles the baseline in its own process; spark and auto "
                                            "need SageMaker Processing (run the pipeline on a cluster)")
    t0 = time.monotonic()
    with _run_lock:
        log_path = logs / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6:06d}.log"
        with log_path.open("w") as log_file:
            tee = _Tee(log_file, progress, sys.stdout)
            with contextlib.redirect_stdout(tee), warnings.catch_warnings():
                # The subprocess runner uses this virtualenv; the components' image name is irrelevant here.
                warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
                # Display names are for the KFP UI; kfp.local says so once per task.
                warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
                # A pipeline root of this run's own: its release record is found in it afterwards.
                run_root = root / "kfp" / log_path.stem
                local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_root),
                           raise_on_error=True)
                failure: PipelineRunError | None = None
                try:
                    local_training_pipeline(**arguments)
                except RuntimeError as exc:
                    failure = _failure(exc, tee, str(log_path))
            tee.flush()
    if failure is not None:
        raise failure
    release = read_release(run_root)
    calls = collections.Counter(tee.calls)
    calls.update({k: v - before.get(k, 0) for k, v in aws.api_calls().items() if v - before.get(k, 0)})
    return RunResult(
        pipeline_run_id=release["pipeline_run_id"],
        gate_passed=release["gate_passed"],
        gate_reason=release["gate_reason"],
        metrics=release["scores"],
        training_job_name=release["training_job_name"],
        training_job_arn=release["training_job_arn"],
        model_uri=release["model_uri"],
        model_package_arn=release["model_package_arn"] or None,
        approval_status=release["approval_status"] or None,
        baseline_uri=release["baseline_uri"] or None,
        manifest_path=release["manifest_path"] or None,
        applied=release["applied"] or None,
        api_calls=dict(sorted(calls.items())),
        seconds=round(time.monotonic() - t0, 2),
        log_path=str(log_path),
    )


RELEASE_STEPS = ("emit-model-deployment", "record-rejection")


def read_release(run_root: Path) -> dict[str, Any]:
    """The release record the branch that ran returned (its executor output under the run's root)."""
    found = [p for step in RELEASE_STEPS for p in run_root.glob(f"*/{step}/executor_output.json")]
    if len(found) != 1:
        raise PipelineRunError("pipeline", f"expected one release record under {run_root}, found {len(found)}",
                               None, "")
    return dict(json.loads(json.loads(found[0].read_text())["parameterValues"]["Output"]))


def _failure(exc: RuntimeError, tee: _Tee, log_path: str) -> PipelineRunError:
    m = _INNER_FAILED.search(_ANSI.sub("", str(exc)))
    step = m.group(1) if m else "pipeline"
    if tee.step_errors:
        err = tee.step_errors[-1]
        return PipelineRunError(str(err.get("step") or step), str(err.get("message")), err.get("parameter"),
                                log_path)
    return PipelineRunError(step, f"{exc} (see {log_path})", None, log_path)
