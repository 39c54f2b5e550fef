"""Pipeline benchmark (not a test): one local run of the training pipeline, end to end.

`kfp_pipelines.local.run_local` runs every step through kfp.local (one subprocess per step, train.py in
another) against a moto server started as its own process on loopback. Measured:
  - wall time of the run, and per step (from the run's progress lines);
  - peak memory: the largest summed RSS of this process and all its descendants except the moto server,
    sampled every 50 ms from /proc, plus the largest single process (ru_maxrss);
  - AWS API calls per run, by operation, counted by a botocore before-call hook in every step;
  - SageMaker polling: DescribeTrainingJob calls the waiter makes for a one-hour job (the real waiter
    and backoff, driven by a scripted status sequence and a simulated clock: the local backend does not
    poll, and moto completes jobs at once).

Run: .venv/bin/python bench/pipeline_bench.py [--epochs 30]  ->  bench/results/pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

OUT = Path(__file__).with_name("results") / "pipeline.json"
PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def tree_rss(root: int, exclude: set[int]) -> int:
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in exclude:
            continue
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        stack.extend(children(pid))
    return total


class PeakSampler(threading.Thread):
    def __init__(self, exclude: set[int]):
        super().__init__(daemon=True)
        self.exclude = exclude
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid(), self.exclude))
            time.sleep(0.05)


def start_moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def simulated_polls() -> dict[str, object]:
    """DescribeTrainingJob calls for a one-hour job: 2 min starting, 3 min downloading, 52 min training,
    3 min uploading, under the component's default backoff (10 s doubling to 300 s)."""
    from kfp_pipelines.sagemaker.waiter import Backoff, wait

    phases = [(120, "Starting"), (180, "Downloading"), (3120, "Training"), (180, "Uploading")]
    clock = {"t": 0.0}

    def describe() -> dict[str, str]:
        t, elapsed = clock["t"], 0.0
        for seconds, name in phases:
            elapsed += seconds
            if t < elapsed:
                return {"TrainingJobStatus": "InProgress", "SecondaryStatus": name}
        return {"TrainingJobStatus": "Completed", "SecondaryStatus": "Completed"}

    def sleep(s: float) -> None:
        clock["t"] += s

    _, record = wait("bench", describe, Backoff(), sleep=sleep, clock=lambda: clock["t"])
    fixed_10s = int(sum(s for s, _ in phases) / 10) + 1
    return {"job_seconds": sum(s for s, _ in phases), "describe_calls": record.polls,
            "describe_calls_at_fixed_10s": fixed_10s, "longest_wait_s": max(record.delays)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (train.py's default)")
    args = parser.parse_args()

    from devstack.stack import free_port

    port = free_port()
    moto = start_moto(port)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    from kfp_pipelines.local import run_local

    boto3.client("s3").create_bucket(Bucket="kanari-bench")
    boto3.client("sagemaker").create_model_package_group(ModelPackageGroupName="kanari-bench")
    steps: dict[str, float] = {}

    def progress(line: str) -> None:
        if line.startswith("  ok ") or line.startswith("  FAILED "):
            name, took = line.split()[1], line.split("(")[-1].rstrip("s)")
            steps[name] = float(took)

    sampler = PeakSampler(exclude={moto.pid})
    sampler.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            result = run_local(bucket="kanari-bench", model_package_group="kanari-bench",
                               hyperparameters={"epochs": args.epochs}, workdir=tmp, progress=progress)
            wall = time.monotonic() - t0
        # Before the moto server exits: only the run's own (waited-for) processes count.
        largest_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                         resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    finally:
        sampler.stop.set()
        sampler.join()
        moto.terminate()
        moto.wait(10)
    calls = result.api_calls
    out = {
        "benchmark": "pipeline",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": f".venv/bin/python bench/pipeline_bench.py --epochs {args.epochs}",
        "run": {
            "wall_seconds": round(wall, 2),
            "steps_seconds": steps,
            "gate_passed": result.gate_passed,
            "pr_auc": round(result.metrics["pr_auc"], 4),
            "training_job": result.training_job_name,
            "model_package_arn": result.model_package_arn,
        },
        "memory": {
            "peak_tree_rss_mb": round(sampler.peak / 2**20, 1),
            "largest_process_rss_mb": round(largest_kb / 1024, 1),
            "note": "tree = this process and its descendants (kfp.local steps, train.py), moto server excluded",
        },
        "aws_api_calls": {
            "total": sum(calls.values()),
            "sagemaker": sum(v for k, v in calls.items() if k.startswith("sagemaker.")),
            "by_operation": calls,
        },
        "sagemaker_polling_one_hour_job": simulated_polls(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
