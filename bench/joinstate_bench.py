"""Durable ground-truth state benchmark (not a test): what --state-dir costs the drift monitor (issue 16).

Measures, in one process on this machine's disk: the time of one logged prediction (a one-row response) through
GroundTruth with the state in memory only and with the SQLite state (saved after every event, as the monitor
does); the time of one 100-label batch saved durably (fsync before the 2xx); the state file's size at the default
bound; and the time a restarted monitor takes to load a full store (--max-label-pending predictions waiting).

Run: .venv/bin/python bench/joinstate_bench.py [--events 5000] [--pending 100000]  ->  bench/results/joinstate.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from kanari.monitor.groundtruth import GroundTruth, GroundTruthConfig
from kanari.monitor.joinstate import FILE, JoinState
from prometheus_client import CollectorRegistry

OUT = Path(__file__).with_name("results") / "joinstate.json"
CONFIG = GroundTruthConfig("binary", 0.5, 86400.0)


def per_event(state: JoinState | None, events: int, max_pending: int) -> float:
    truth = GroundTruth(CollectorRegistry(), max_pending=max_pending, window_size=1000, min_samples=100, state=state)
    started = time.perf_counter()
    for k in range(events):
        truth.predictions("ml", "fraud", "7", f"e{k}", {"predictions": [0.7]}, CONFIG, None, 10)
    return (time.perf_counter() - started) / events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--pending", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        memory = per_event(None, args.events, args.pending)
        disk = per_event(JoinState(Path(tmp) / "a"), args.events, args.pending)
        truth = GroundTruth(CollectorRegistry(), max_pending=args.pending, window_size=1000, min_samples=100,
                            state=JoinState(Path(tmp) / "b"))
        for k in range(0, args.pending, 1000):  # fill the store to its bound, 1,000 rows an event
            truth.predictions("ml", "fraud", "7", f"b{k}", {"predictions": [0.7] * 1000}, CONFIG, None, 1000)
        batches = 50
        started = time.perf_counter()
        for b in range(batches):
            truth.labels("ml", "fraud", CONFIG, [(f"b{b * 1000}/{i}", 1.0) for i in range(100)])
        label_batch = (time.perf_counter() - started) / batches
        size = sum(f.stat().st_size for f in (Path(tmp) / "b").iterdir())
        started = time.perf_counter()
        loaded = JoinState(Path(tmp) / "b").load(args.pending, time.time)
        load = time.perf_counter() - started
        waiting = len(loaded[("ml", "fraud")][1].predictions)
    result = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
        "events": args.events,
        "prediction_event_ms": {"memory": round(memory * 1e3, 4), "sqlite": round(disk * 1e3, 4)},
        "label_batch_100_durable_ms": round(label_batch * 1e3, 3),
        "state_file_bytes_at_bound": size,
        "state_file": FILE,
        "restart_load_seconds": round(load, 3),
        "restart_loaded_pending": waiting,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
