"""`make bench`: run every benchmark (none of them is a test) and collect their figures.

Each benchmark writes its own JSON under bench/results/; this runner runs them one after another (they
measure time and memory, so never concurrently) and writes bench/results/SUMMARY.md from those files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable

BENCHMARKS: dict[str, list[str]] = {
    "rollout": [PY, "bench/rollout_bench.py", "--trials", "6"],
    "pipeline": [PY, "bench/pipeline_bench.py"],
    "operator": [PY, "bench/operator_bench.py"],
    "capacity": [PY, "bench/capacity_bench.py"],
    "monitor": [PY, "bench/monitor_load.py"],
    "judge": [PY, "bench/judge_bench.py"],
    "joinstate": [PY, "bench/joinstate_bench.py"],
    # Drift compares against Evidently and alibi-detect, installed only in its own environment.
    "drift": ["bash", "bench/drift_env.sh"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run just these")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only or list(BENCHMARKS):
        cmd = BENCHMARKS[name]
        if not (ROOT / cmd[1]).exists():
            print(f"[bench] {name}: {cmd[1]} is missing", file=sys.stderr)
            failed.append(name)
            continue
        print(f"[bench] {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"[bench] {name}: exit {rc} after {time.monotonic() - started:.0f}s", flush=True)
        if rc:
            failed.append(name)
    write_summary()
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def write_summary() -> None:
    lines = ["# Benchmark results", "", "Collected from bench/results/*.json by `make bench`.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {path.stem}", "", "```json", json.dumps(data, indent=1)[:4000], "```", ""]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
