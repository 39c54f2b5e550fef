"""Run a CreateTrainingJob request on this machine, under SageMaker's training-container contract.

What a SageMaker framework container does, done in a directory instead of /opt/ml: channels copied
from S3 (File mode), hyperparameters.json and friends in input/config, the source directory fetched
from `sagemaker_submit_directory`, the `sagemaker_program` started with the SM_* environment, then
model/ packed to <output>/<job>/output/model.tar.gz and output/data to output.tar.gz, checkpoints
synced both ways. A non-zero exit becomes a Failed job whose reason is /opt/ml/output/failure.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp_pipelines import aws
from kfp_pipelines.sagemaker.config import CHECKPOINT_LOCAL_PATH, DISTRIBUTED_HP
from kfp_pipelines.sagemaker.waiter import TrainingJobFailed

log = logging.getLogger("kanari.pipeline")

CONTAINER_ROOT = "/opt/ml"
HOST = "algo-1"


@dataclass(frozen=True)
class ArtifactLocations:
    model: aws.S3Uri
    output: aws.S3Uri


def artifact_locations(request: dict[str, Any]) -> ArtifactLocations:
    """Where SageMaker puts a job's artifacts: <S3OutputPath>/<job name>/output/{model,output}.tar.gz."""
    base = aws.S3Uri.parse(request["OutputDataConfig"]["S3OutputPath"], "output_s3_uri")
    job = base.join(request["TrainingJobName"], "output")
    return ArtifactLocations(job.join("model.tar.gz"), job.join("output.tar.gz"))


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def container_env(root: Path, request: dict[str, Any], code_dir: Path, program: str) -> dict[str, str]:
    """The SM_* variables the SageMaker training toolkit sets, with /opt/ml mapped to `root`."""
    hps = {k: _decode(v) for k, v in request.get("HyperParameters", {}).items()}
    user_hps = {k: v for k, v in hps.items() if not k.startswith("sagemaker_")}
    channels = sorted(c["ChannelName"] for c in request.get("InputDataConfig", []))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update({
        "SM_MODEL_DIR": str(root / "model"),
        "SM_INPUT_DIR": str(root / "input"),
        "SM_INPUT_CONFIG_DIR": str(root / "input" / "config"),
        "SM_OUTPUT_DIR": str(root / "output"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
        "SM_CHANNELS": json.dumps(channels),
        "SM_HPS": json.dumps(user_hps),
        "SM_CURRENT_HOST": HOST,
        "SM_HOSTS": json.dumps([HOST]),
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_NUM_GPUS": "0",
        "SM_NUM_NEURONS": "0",
        "SM_USER_ENTRY_POINT": program,
        "SM_MODULE_DIR": str(code_dir),
        "PYTHONUNBUFFERED": "1",
    })
    for name in channels:
        env[f"SM_CHANNEL_{name.upper()}"] = str(root / "input" / "data" / name)
    for k, v in user_hps.items():
        env[f"SM_HP_{k.upper()}"] = v if isinstance(v, str) else json.dumps(v)
    return env


def _local_path(root: Path, container_path: str) -> Path:
    return root / Path(container_path).relative_to(CONTAINER_ROOT)


def prepare(root: Path, request: dict[str, Any], s3: Any) -> tuple[Path, str, Path | None]:
    """Lay out the container filesystem; returns (code dir, program, checkpoint dir)."""
    if root.exists():
        shutil.rmtree(root)
    for sub in ("input/config", "input/data", "model", "output/data", "code"):
        (root / sub).mkdir(parents=True)
    config = root / "input" / "config"
    (config / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters", {})))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": HOST, "hosts": [HOST]}))
    input_config = {}
    for channel in request.get("InputDataConfig", []):
        name = channel["ChannelName"]
        src = aws.S3Uri.parse(channel["DataSource"]["S3DataSource"]["S3Uri"], f"channels.{name}")
        files = aws.download_prefix(s3, src, root / "input" / "data" / name)
        log.info("channel %s: %d file(s) from %s", name, len(files), src)
        input_config[name] = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                              **({"ContentType": channel["ContentType"]} if "ContentType" in channel else {})}
    (config / "inputdataconfig.json").write_text(json.dumps(input_config))

    hps = request.get("HyperParameters", {})
    program = _decode(hps.get("sagemaker_program", '""'))
    submit = _decode(hps.get("sagemaker_submit_directory", '""'))
    if not program or not submit:
        raise TrainingJobFailed(request["TrainingJobName"], "Failed",
                                "ClientError: sagemaker_program and sagemaker_submit_directory are required")
    code_dir = root / "code"
    if submit.startswith("s3://"):
        tarball = aws.get_bytes(s3, aws.S3Uri.parse(submit, "source"))
    else:  # the "code" channel of a network-isolated job
        tarball = _local_path(root, submit).read_bytes()
    aws.extract_tar_gz(tarball, code_dir)
    if not (code_dir / program).is_file():
        raise TrainingJobFailed(request["TrainingJobName"], "Failed",
                                f"ClientError: {program} is not in the source directory")

    checkpoints = None
    if "CheckpointConfig" in request:
        checkpoints = _local_path(root, request["CheckpointConfig"].get("LocalPath", CHECKPOINT_LOCAL_PATH))
        checkpoints.mkdir(parents=True, exist_ok=True)
        ckpt = aws.S3Uri.parse(request["CheckpointConfig"]["S3Uri"], "checkpoint_s3_uri")
        restored = aws.download_prefix(s3, ckpt, checkpoints)
        if restored:
            log.info("restored %d checkpoint file(s) from %s", len(restored), ckpt)
    return code_dir, program, checkpoints


def run(request: dict[str, Any], s3: Any, workdir: Path) -> ArtifactLocations:
    """Run the job's program to completion and upload its artifacts; raises TrainingJobFailed."""
    name = request["TrainingJobName"]
    root = workdir / name
    code_dir, program, checkpoints = prepare(root, request, s3)
    if _decode(request.get("HyperParameters", {}).get(DISTRIBUTED_HP, "false")) is True:
        log.info("local backend: one worker process (%s applies on Trainium)", DISTRIBUTED_HP)
    env = container_env(root, request, code_dir, program)
    max_runtime = int(request["StoppingCondition"]["MaxRuntimeInSeconds"])
    tail: deque[str] = deque(maxlen=20)
    log.info("training job %s: InProgress/Training (local: %s %s)", name, Path(sys.executable).name, program)
    with subprocess.Popen(
        [sys.executable, program], cwd=code_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1,
    ) as proc:
        # SageMaker stops a job at MaxRuntimeInSeconds; so does this.
        expired = threading.Event()

        def stop() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(max_runtime, stop)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip())
                log.info("[%s] %s", name, line.rstrip())
            code = proc.wait()
        finally:
            timer.cancel()
    if expired.is_set():
        raise TrainingJobFailed(name, "Stopped", f"MaxRuntimeExceeded: ran longer than {max_runtime}s")
    if checkpoints is not None:
        aws.upload_dir(s3, checkpoints, aws.S3Uri.parse(request["CheckpointConfig"]["S3Uri"], "checkpoint_s3_uri"))
    if code != 0:
        failure = root / "output" / "failure"
        reason = failure.read_text().strip() if failure.exists() else (tail[-1] if tail else f"exit code {code}")
        raise TrainingJobFailed(name, "Failed", f"AlgorithmError: {reason}")
    if not any((root / "model").iterdir()):
        raise TrainingJobFailed(name, "Failed", "AlgorithmError: the script wrote nothing to SM_MODEL_DIR")
    where = artifact_locations(request)
    aws.put_bytes(s3, where.model, aws.tar_gz(root / "model"), "application/x-tar")
    aws.put_bytes(s3, where.output, aws.tar_gz(root / "output" / "data"), "application/x-tar")
    log.info("training job %s: Completed/Uploading -> %s", name, where.model)
    shutil.rmtree(root, ignore_errors=True)
    return where
