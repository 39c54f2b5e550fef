"""Drift benchmark (not a test): Kanari vs alibi-detect vs Evidently on the same seeded synthetic data, side
by side in one run, plus Spark baselines and the monitor's throughput. Run it through bench/drift_env.sh
(`make bench-drift`), which installs the peers in bench/.venv-drift.

  grid     reference and current of the same size: 100k x 100 and 1M x 20 (and 1M x 500 for Kanari, read
           from a Parquet file in chunks); 10% of the features shifted. Tools: Kanari compare with a stored
           baseline (library), Kanari end to end (`kanari drift baseline` + `kanari drift compare` as
           processes), alibi-detect TabularDrift (KS, Bonferroni over features) in-process and as a process
           reading the same files, Evidently DataDriftPreset. Wall time, rows/s, peak RSS, drifted features.
           The physical floor: one pass reading the current data from memory.
  spark    `kanari drift baseline --engine spark` (local[2]) vs the local engine on 10M x 20.
  monitor  events/s into 1 and 2 monitor replicas (sharded by model) on loopback.
  sketch   sketch L-infinity vs the exact two-sample KS statistic at the sketch sizes in use.

Results: bench/results/drift.json and bench/results/drift.md. A peer that is not installed, fails or runs
past its time limit is reported as such; no number is invented.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
SHIFTED_SHARE = 0.1
SEED = 20261127
TOOLS = ("kanari", "alibi-detect", "evidently")
# The peers run in their own environment (bench/drift_env.sh): alibi-detect pins numba<0.60 and numpy<2, which
# Kanari's environment cannot share; Kanari runs in the project's.
PEER_PYTHON = os.environ.get("KANARI_BENCH_PEER_PYTHON", sys.executable)


# ------------------------------------------------------------------------------------------------ data
def shifted_features(n_features: int) -> list[int]:
    return list(range(0, n_features, int(round(1 / SHIFTED_SHARE))))


def make_data(rows: int, n_features: int, seed: int, shift: bool) -> np.ndarray:
    """Columns cycle through normal, log-normal and uniform; shifted columns (every 10th) move their mean
    by half a standard deviation or double their spread, alternately."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, n_features), order="F")  # column by column, as a Parquet or Arrow read gives it
    for j in range(n_features):
        kind = j % 3
        loc = (j % 7) - 3.0
        if kind == 0:
            col = rng.normal(loc, std_of(j), rows)
        elif kind == 1:
            col = np.exp(rng.normal(0.0, 0.5, rows)) + loc
        else:
            col = rng.uniform(loc, loc + 4.0, rows)
        out[:, j] = col
    if shift:
        for n, j in enumerate(shifted_features(n_features)):
            col = out[:, j]
            if n % 2 == 0:
                col += 0.5 * std_of(j)
            else:
                mean = col.mean()
                col -= mean
                col *= 2.0
                col += mean
    return out


def std_of(j: int) -> float:
    kind = j % 3
    if kind == 0:
        return 1.0 + (j % 5) * 0.5
    if kind == 1:
        return float(np.sqrt((np.exp(0.25) - 1) * np.exp(0.25)))
    return 4.0 / np.sqrt(12)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Start a new peak (Linux: VmHWM := VmRSS), so earlier peaks (imports, data generation) do not count."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# ----------------------------------------------------------------------------------------------- tools
def run_evidently(ref: np.ndarray, cur: np.ndarray) -> list[int]:
    import pandas as pd

    cols = [f"f{j}" for j in range(ref.shape[1])]
    ref_df, cur_df = pd.DataFrame(ref, columns=cols), pd.DataFrame(cur, columns=cols)
    try:  # Evidently >= 0.7
        from evidently import Report
        from evidently.presets import DataDriftPreset

        snapshot = Report([DataDriftPreset()]).run(current_data=cur_df, reference_data=ref_df)
        drifted = []
        for metric in snapshot.dict()["metrics"]:
            config = metric.get("config", {})
            if config.get("type", "").endswith("ValueDrift"):
                threshold = config.get("threshold")
                method = str(config.get("method", "")).lower()
                value = metric["value"]
                p_value_test = "p_value" in method or "ks" in method or "chi" in method
                if (value < threshold) if p_value_test else (value >= threshold):
                    drifted.append(cols.index(config["column"]))
        return sorted(drifted)
    except ImportError:
        from evidently.metric_preset import DataDriftPreset as LegacyPreset
        from evidently.report import Report as LegacyReport

        report = LegacyReport(metrics=[LegacyPreset()])
        report.run(reference_data=ref_df, current_data=cur_df)
        result = next(m["result"] for m in report.as_dict()["metrics"] if "drift_by_columns" in m["result"])
        return sorted(cols.index(c) for c, r in result["drift_by_columns"].items() if r["drift_detected"])


def frame(data: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame(data, columns=[f"f{j}" for j in range(data.shape[1])])


def run_alibi(ref: np.ndarray, cur: np.ndarray) -> list[int]:
    """TabularDrift (a KS test per numeric feature); a feature is flagged at p < 0.05 / features (Bonferroni)."""
    from alibi_detect.cd import TabularDrift

    detector = TabularDrift(ref, p_val=0.05, correction="bonferroni")
    preds = detector.predict(cur, drift_type="feature", return_p_val=True)
    p_vals = np.asarray(preds["data"]["p_val"]).reshape(-1)
    return [int(j) for j in np.flatnonzero(p_vals < 0.05 / ref.shape[1])]


RUNNERS = {"evidently": run_evidently, "alibi-detect": run_alibi}


def one(tool: str, rows: int, n_features: int) -> dict[str, Any]:
    """One in-process measurement (the orchestrator runs each in a fresh process)."""
    ref = make_data(rows, n_features, SEED, shift=False)
    cur = make_data(rows, n_features, SEED + rows + n_features, shift=True)
    extra: dict[str, Any] = {}
    if tool == "kanari":
        from kanari.drift.fastcompare import compare_frame_fast
        from kanari.drift.model_monitor import baseline_documents, parse_baseline

        baseline = parse_baseline(*baseline_documents(frame(ref)))
        del ref
        compare_frame_fast(baseline, frame(make_data(2000, n_features, 2, shift=False)))  # loads the compiled kernel
        cur_df = frame(cur)
        del cur
        values = cur_df.to_numpy()
        start = time.perf_counter()
        total = float(np.sum(values))  # the floor: every value read once, from memory
        extra["floor_seconds"] = round(time.perf_counter() - start, 4)
        del total, values
        gc.collect()
        before = rss_bytes()
        reset_peak_rss()
        cpu0, start = time.process_time(), time.perf_counter()
        report = compare_frame_fast(baseline, cur_df)
        wall = time.perf_counter() - start
        extra["cpu_seconds"] = round(time.process_time() - cpu0, 3)
        drifted = sorted(int(f[1:]) for f in report.drifted_features)
        extra["times_floor"] = round(wall / extra["floor_seconds"], 1) if extra["floor_seconds"] else None
    else:
        # Warm-up on a little data first: imports, numba compilation and caches are not what is measured.
        RUNNERS[tool](make_data(2000, n_features, 1, shift=False), make_data(2000, n_features, 2, shift=False))
        gc.collect()
        before = rss_bytes()
        reset_peak_rss()
        cpu0, start = time.process_time(), time.perf_counter()
        drifted = RUNNERS[tool](ref, cur)
        wall = time.perf_counter() - start
        extra["cpu_seconds"] = round(time.process_time() - cpu0, 3)
    return {
        "wall_seconds": round(wall, 3),
        "rows_per_second": round(rows / wall),
        "peak_memory_mb": round(max(0, peak_rss_bytes() - before) / 2**20, 1),
        "drifted": drifted,
        **extra,
    }


def timed_process(cmd: list[str], timeout: float) -> tuple[float, float, int, str, float]:
    """(wall seconds, peak RSS MB, exit code, stdout, CPU seconds) of one child process alone."""
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # its own rusage: ru_maxrss of this process only
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    if code < 0 and wall >= timeout:
        raise subprocess.TimeoutExpired(cmd, timeout)
    if code not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[2:6])} exited {code}: {errors.strip().splitlines()[-3:]}")
    return wall, usage.ru_maxrss / 1024, code, text, usage.ru_utime + usage.ru_stime


ALIBI_PROCESS = """
import sys, numpy as np, pandas as pd
from alibi_detect.cd import TabularDrift
ref = pd.read_parquet(sys.argv[1]).to_numpy()
cur = pd.read_parquet(sys.argv[2]).to_numpy()
p = np.asarray(TabularDrift(ref, p_val=0.05, correction="bonferroni").predict(cur, drift_type="feature", return_p_val=True)["data"]["p_val"]).reshape(-1)
print(",".join(str(j) for j in np.flatnonzero(p < 0.05 / ref.shape[1])))
"""


def write_parquet(path: Path, rows: int, n_features: int, seed: int, shift: bool, row_group: int = 100_000) -> None:
    """Written in row groups, as a data pipeline writes them, each generated on its own (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = [f"f{j}" for j in range(n_features)]
    with pq.ParquetWriter(path, pa.schema([(c, pa.float64()) for c in cols])) as writer:
        for part, start in enumerate(range(0, rows, row_group)):
            n = min(row_group, rows - start)
            data = make_data(n, n_features, seed * 1000 + part, shift)
            writer.write_table(pa.Table.from_pandas(frame(data), preserve_index=False), row_group_size=row_group)


def processes(rows: int, n_features: int, work: Path, timeout: float, peers: bool) -> dict[str, Any]:
    """Kanari's CLI end to end, and (if installed) alibi-detect as a process on the same files."""
    ref, cur = work / f"ref-{rows}x{n_features}.parquet", work / f"cur-{rows}x{n_features}.parquet"
    if not ref.exists():
        write_parquet(ref, rows, n_features, SEED, shift=False)
        write_parquet(cur, rows, n_features, SEED + rows + n_features, shift=True)
    out: dict[str, Any] = {}
    kanari = [sys.executable, "-m", "kanari.cli.main", "drift"]
    base = work / f"baseline-{rows}x{n_features}"
    try:
        b_wall, b_peak, _, _, b_cpu = timed_process([*kanari, "baseline", "--data", str(ref), "--out", str(base)], timeout)
        c_wall, c_peak, _, text, c_cpu = timed_process(
            [*kanari, "compare", "--baseline", str(base), "--data", str(cur), "-o", "json"], timeout
        )
        drifted = sorted(int(f[1:]) for f in json.loads(text)["drifted_features"])
        out["kanari-cli"] = {
            "status": "ok", "wall_seconds": round(b_wall + c_wall, 3), "baseline_seconds": round(b_wall, 3),
            "compare_seconds": round(c_wall, 3), "rows_per_second": round(rows / (b_wall + c_wall)),
            "peak_memory_mb": round(max(b_peak, c_peak), 1), "drifted": drifted,
            "cpu_seconds": round(b_cpu + c_cpu, 2), "compare_cpu_seconds": round(c_cpu, 2),
        }
    except (subprocess.TimeoutExpired, RuntimeError) as exc:
        out["kanari-cli"] = {"status": f"failed: {exc}"[:300]}
    if peers and installed("alibi-detect"):
        try:
            wall, peak, _, text, cpu = timed_process([PEER_PYTHON, "-c", ALIBI_PROCESS, str(ref), str(cur)], timeout)
            found = [int(j) for j in text.strip().split(",") if j]
            out["alibi-detect-process"] = {"status": "ok", "wall_seconds": round(wall, 3), "rows_per_second": round(rows / wall),
                                           "peak_memory_mb": round(peak, 1), "drifted": found, "cpu_seconds": round(cpu, 2)}
        except (subprocess.TimeoutExpired, RuntimeError) as exc:
            out["alibi-detect-process"] = {"status": f"failed: {exc}"[:300]}
    return out


def installed(tool: str) -> str | None:
    """The tool's version in the interpreter that runs it (the peers' own environment for the peers)."""
    module = {"kanari": "kanari", "evidently": "evidently", "alibi-detect": "alibi_detect"}[tool]
    python = sys.executable if tool == "kanari" else PEER_PYTHON
    probe = f"import {module} as m; print(getattr(m, '__version__', 'installed'))"
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # Not installed, or installed broken: either way it cannot be measured.
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None


def score(result: dict[str, Any], truth: list[int]) -> None:
    found = set(result["drifted"])
    result["recall"] = round(len(found & set(truth)) / len(truth), 3)
    result["false_positives"] = len(found - set(truth))


def grid(configs: list[tuple[int, int, tuple[str, ...]]], timeout: float, work: Path, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """`previous`: an earlier run's grid whose results for the tools not run now are kept (--keep)."""
    versions = {t: installed(t) for t in TOOLS}
    runs = []
    for rows, n_features, tools in configs:
        truth = shifted_features(n_features)
        entry: dict[str, Any] = {"rows": rows, "features": n_features, "shifted": truth, "tools": {}}
        for old in (previous or {}).get("runs", []):
            if (old["rows"], old["features"]) == (rows, n_features):
                entry["tools"] = {t: r for t, r in old["tools"].items() if t not in tools and not t.endswith(("-cli", "-process"))}
        for tool in tools:
            if versions[tool] is None:
                entry["tools"][tool] = {"status": "not installed"}
                continue
            print(f"grid: {tool} {rows}x{n_features}", file=sys.stderr, flush=True)
            try:
                proc = subprocess.run(
                    [sys.executable if tool == "kanari" else PEER_PYTHON, __file__, "--one", tool, str(rows), str(n_features)],
                    capture_output=True, text=True, timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                entry["tools"][tool] = {"status": f"timeout after {timeout:.0f}s"}
                continue
            if proc.returncode != 0:
                entry["tools"][tool] = {"status": "failed", "error": proc.stderr.strip().splitlines()[-3:]}
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["status"] = "ok"
            entry["tools"][tool] = result
        print(f"grid: processes {rows}x{n_features}", file=sys.stderr, flush=True)
        entry["tools"].update(processes(rows, n_features, work, timeout, peers="alibi-detect" in tools))
        entry["tools"] = {t: entry["tools"][t] for t in (*TOOLS, "kanari-cli", "alibi-detect-process") if t in entry["tools"]}
        for result in entry["tools"].values():
            if result.get("status") == "ok":
                score(result, truth)
        kanari = entry["tools"].get("kanari", {})
        for tool, peer in entry["tools"].items():
            if tool != "kanari" and kanari.get("status") == "ok" and peer.get("status") == "ok":
                a, b = set(kanari["drifted"]), set(peer["drifted"])
                peer["agreement_with_kanari"] = round(len(a & b) / len(a | b), 3) if a | b else 1.0
                peer["kanari_speedup"] = round(peer["wall_seconds"] / kanari["wall_seconds"], 1)
        cli, alibi_p = entry["tools"].get("kanari-cli", {}), entry["tools"].get("alibi-detect-process", {})
        if cli.get("status") == "ok" and alibi_p.get("status") == "ok":
            cli["speedup_vs_alibi_process"] = round(alibi_p["wall_seconds"] / cli["wall_seconds"], 1)
            if cli.get("cpu_seconds") and alibi_p.get("cpu_seconds"):
                cli["cpu_speedup_vs_alibi_process"] = round(alibi_p["cpu_seconds"] / cli["cpu_seconds"], 1)
        runs.append(entry)
    return {"versions": versions, "runs": runs}


def large(rows: int, n_features: int, work: Path, timeout: float) -> dict[str, Any]:
    """Kanari only: a file too big to load (rows x features float64) compared in chunks, CLI as a process."""
    path = work / f"large-{rows}x{n_features}.parquet"
    if not path.exists():
        write_parquet(path, rows, n_features, SEED + 7, shift=True, row_group=50_000)
    base = work / f"large-baseline-{n_features}"
    write_parquet(work / "large-ref.parquet", 200_000, n_features, SEED + 8, shift=False, row_group=50_000)
    kanari = [sys.executable, "-m", "kanari.cli.main", "drift"]
    timed_process([*kanari, "baseline", "--data", str(work / "large-ref.parquet"), "--out", str(base)], timeout)
    wall, peak, _, text, cpu = timed_process([*kanari, "compare", "--baseline", str(base), "--data", str(path), "-o", "json"], timeout)
    result = {"cpu_seconds": round(cpu, 1), "rows": rows, "features": n_features, "raw_values_mb": round(rows * n_features * 8 / 2**20), "file_mb": round(path.stat().st_size / 2**20),
              "wall_seconds": round(wall, 2), "rows_per_second": round(rows / wall), "peak_rss_mb": round(peak, 1),
              "drifted": sorted(int(f[1:]) for f in json.loads(text)["drifted_features"]), "note": "CLI process; baseline from 200k rows"}
    score(result, shifted_features(n_features))
    return result


def spark(rows: int, n_features: int, work: Path, timeout: float) -> dict[str, Any]:
    """The same 10M-row Parquet dataset: the local engine (pandas, one process) vs Spark local[2]."""
    path = work / f"spark-{rows}x{n_features}.parquet"
    if not path.exists():
        write_parquet(path, rows, n_features, SEED + 9, shift=False, row_group=1_000_000)
    kanari = [sys.executable, "-m", "kanari.cli.main", "drift", "baseline", "--data", str(path)]
    out: dict[str, Any] = {"rows": rows, "features": n_features, "file_mb": round(path.stat().st_size / 2**20)}
    for engine, extra in (("local", []), ("spark", ["--engine", "spark", "--spark-master", "local[2]"])):
        print(f"spark: {engine}", file=sys.stderr, flush=True)
        try:
            wall, peak, _, _, cpu = timed_process([*kanari, "--out", str(work / f"spark-base-{engine}"), *extra], timeout)
            out[engine] = {"wall_seconds": round(wall, 1), "rows_per_second": round(rows / wall), "driver_peak_rss_mb": round(peak, 1),
                           "driver_cpu_seconds": round(cpu, 1)}
        except (subprocess.TimeoutExpired, RuntimeError) as exc:
            out[engine] = {"status": f"failed: {exc}"[:300]}
    if all("wall_seconds" in out.get(e, {}) for e in ("local", "spark")):
        from kanari.drift.model_monitor import read_baseline

        a, b = (read_baseline(work / f"spark-base-{e}").profile for e in ("local", "spark"))
        probes = a.sketch.quantiles(np.linspace(0.01, 0.99, 99))
        out["max_cdf_difference"] = round(float(np.nanmax(np.abs(a.sketch.cdf(probes) - b.sketch.cdf(probes)))), 5)
        out["stated_bound"] = a.sketch.rank_error + b.sketch.rank_error
        out["item_count_equal"] = a.rows == b.rows
    return out



# ------------------------------------------------------------------------------------ monitor figures
def stream(total_rows: int, window: int, n_features: int = 20, batch: int = 1000) -> dict[str, Any]:
    """Rows through the monitor's window path (SlidingWindow of KLL-sketch buckets), memory as it goes."""
    from kanari.drift.profile import Feature
    from kanari.drift.window import SlidingWindow

    win = SlidingWindow([Feature(f"f{j}", "Fractional") for j in range(n_features)], window)
    rng = np.random.default_rng(SEED)
    block = rng.normal(size=(batch * 50, n_features))
    gc.collect()
    base = rss_bytes()
    marks = []
    start = time.perf_counter()
    fed = 0
    while fed < total_rows:
        off = (fed // batch) % 50 * batch
        win.add(block[off : off + batch], {}, batch)
        fed += batch
        if fed in (100_000, 1_000_000, 5_000_000, total_rows):
            win.profile()  # what the evaluator does
            marks.append({"rows": fed, "rss_over_start_mb": round((rss_bytes() - base) / 2**20, 1),
                          "retained_items_per_feature": sum(b.sketch.retained for b in win._buckets)})
    wall = time.perf_counter() - start
    return {
        "rows": total_rows, "features": n_features, "window_rows": window, "batch_rows": batch,
        "rows_per_second": round(total_rows / wall), "memory": marks,
        "raw_window_would_need_mb": round(window * n_features * 8 / 2**20, 1),
    }


def sketch_error() -> dict[str, Any]:
    from kanari.drift.methods import linf
    from kanari.drift.sketch import DEFAULT_K, KllSketch, rank_error_bound
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(SEED)
    out = {}
    for k in (128, DEFAULT_K):  # the window's earlier size, and the size in use
        errors = []
        for rows in (10_000, 100_000, 1_000_000):
            a = make_data(1_000_000, 10, SEED + 1, shift=False)
            b = make_data(rows, 10, SEED + rows, shift=bool(rng.integers(0, 2)))
            sa, sb = KllSketch(10, k=k, seed=1), KllSketch(10, k=k, seed=2)
            for s, d in ((sa, a), (sb, b)):
                for start in range(0, len(d), 1000):  # 1,000-row batches, as the issue measured
                    s.update(d[start : start + 1000])
            exact = np.array([ks_2samp(a[:, j], b[:, j]).statistic for j in range(10)])
            errors.extend(np.abs(linf(sa, sb) - exact).tolist())
        out[f"k={k}"] = {"comparisons": len(errors), "max_abs_error": round(max(errors), 4), "stated_bound": 2 * rank_error_bound(k),
                         "mean_abs_error": round(float(np.mean(errors)), 4)}
    return out


def monitor_throughput(replicas: int, seconds: float = 10.0, concurrency: int = 32, models: int = 8) -> dict[str, Any]:
    """Events/s that `replicas` monitor processes (sharded by model) take over HTTP on loopback; the load
    generator posts to the replicas in turn, as the monitor's Service spreads KServe's logger traffic."""
    import tempfile

    import aiohttp
    from kanari.drift.model_monitor import write_baseline
    from sklearn.datasets import load_breast_cancer

    from devstack.stack import free_port

    df = load_breast_cancer(as_frame=True).frame
    work = Path(tempfile.mkdtemp(prefix="kanari-ingest-"))
    write_baseline(df, work / "baseline", target="target")
    config = {f"bench/model-{i}": f"file://{work / 'baseline'}" for i in range(models)}
    (work / "config.json").write_text(json.dumps({"baselines": config}))
    ports = [free_port() for _ in range(replicas)]
    peers = ",".join(f"http://127.0.0.1:{p}/" for p in ports)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kanari.monitor.server", "--port", str(port), "--host", "127.0.0.1", "--config",
             str(work / "config.json"), "--evaluate-interval", "5", *(["--peers", peers, "--replica-ordinal", str(i)] if replicas > 1 else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i, port in enumerate(ports)
    ]
    rows = df.drop(columns=["target"]).to_numpy()

    def headers(i: int, kind: str) -> dict[str, str]:
        return {"Ce-Specversion": "1.0", "Ce-Id": f"id-{i}", "Ce-Source": "http://bench/", "Ce-Time": "2026-11-27T00:00:00Z",
                "Ce-Type": f"org.kubeflow.serving.inference.{kind}", "Ce-Inferenceservicename": f"model-{i % models}",
                "Ce-Namespace": "bench", "Ce-Component": "predictor", "Ce-Endpoint": "default", "Ce-Metadata": "{}",
                "Content-Type": "application/json"}

    async def load() -> tuple[int, int, float]:
        async with aiohttp.ClientSession() as session:
            for port in ports:
                for _ in range(150):
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            counter = iter(range(10**9))
            ok = failed = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal ok, failed
                while time.perf_counter() < deadline:
                    i = next(counter)
                    req = json.dumps({"instances": [rows[i % len(rows)].tolist()]})
                    for k, (kind, body) in enumerate((("request", req), ("response", json.dumps({"predictions": [i % 2]})))):
                        url = f"http://127.0.0.1:{ports[(i + k) % replicas]}/"
                        async with session.post(url, data=body, headers=headers(i, kind)) as r:
                            ok, failed = (ok + 1, failed) if r.status == 200 else (ok, failed + 1)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return ok, failed, time.perf_counter() - start

    try:
        ok, failed, wall = asyncio.run(load())
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    return {"replicas": replicas, "events_per_second": round(ok / wall), "events": ok, "failed": failed,
            "seconds": round(wall, 1), "concurrency": concurrency, "models": models,
            "event": "V1 binary-mode CloudEvent, 1 instance x 30 features; each event posted to the replicas in turn"}


def monitor_scale() -> dict[str, Any]:
    return {str(n): monitor_throughput(n) for n in (1, 2)}


# ---------------------------------------------------------------------------------------------- report
def _cell(r: dict[str, Any], key: str, fmt: str = "{}") -> str:
    return fmt.format(r[key]) if r.get(key) is not None else ""


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Drift benchmark", "", f"Run {doc['started']} on {doc['machine']}. {doc['note']}", "",
             f"Command: `{doc['command']}`", ""]
    g = doc.get("grid", {})
    if g.get("runs"):
        lines.append("| rows (ref = current) | features | tool | wall s | rows/s | peak MB | drifted found (recall / false pos) | speed-up of Kanari compare | note |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for run in g["runs"]:
            for tool, r in run["tools"].items():
                if r.get("status") != "ok":
                    lines.append(f"| {run['rows']:,} | {run['features']} | {tool} | {r.get('status')} | | | | | |")
                    continue
                note = []
                if "floor_seconds" in r:
                    note.append(f"floor {r['floor_seconds']}s (x{r['times_floor']}), CPU {r['cpu_seconds']}s")
                if "baseline_seconds" in r:
                    note.append(f"baseline {r['baseline_seconds']}s + compare {r['compare_seconds']}s")
                if "floor_seconds" not in r and r.get("cpu_seconds") is not None:
                    note.append(f"CPU {r['cpu_seconds']}s")
                if "speedup_vs_alibi_process" in r:
                    note.append(f"{r['speedup_vs_alibi_process']}x alibi-detect's process (CPU: {r.get('cpu_speedup_vs_alibi_process', '-')}x)")
                lines.append(
                    f"| {run['rows']:,} | {run['features']} | {tool} | {r['wall_seconds']} | {r['rows_per_second']:,} | "
                    f"{r['peak_memory_mb']} | {len(r['drifted'])} ({r['recall']} / {r['false_positives']}) | "
                    f"{_cell(r, 'kanari_speedup', '{}x')} | {'; '.join(note)} |"
                )
    lg = doc.get("large")
    if lg and "wall_seconds" in lg:
        lines += ["", f"**Large input** (Kanari CLI, streamed in chunks): {lg['rows']:,} x {lg['features']} ({lg['raw_values_mb']:,} MB of values, "
                  f"{lg['file_mb']:,} MB Parquet) compared in {lg['wall_seconds']} s ({lg['rows_per_second']:,} rows/s; CPU {lg.get('cpu_seconds', '-')} s), peak RSS "
                  f"{lg['peak_rss_mb']} MB; {len(lg['drifted'])} drifted (recall {lg['recall']}, {lg['false_positives']} false positives)."]
    sp = doc.get("spark")
    if sp and "local" in sp:
        parts = [f"{e}: {sp[e].get('wall_seconds', sp[e].get('status'))} s" for e in ("local", "spark")]
        lines += ["", f"**Spark baseline** {sp['rows']:,} x {sp['features']} ({sp['file_mb']} MB Parquet): " + ", ".join(parts)
                  + (f"; largest CDF difference between the two baselines {sp['max_cdf_difference']} (stated bound {sp['stated_bound']:.4f}), "
                     f"item counts equal: {sp['item_count_equal']}." if "max_cdf_difference" in sp else ".")]
    mon = doc.get("monitor")
    if mon and "1" in mon:
        lines += ["", "**Monitor**: " + "; ".join(f"{v['replicas']} replica(s): {v['events_per_second']:,} events/s ({v['failed']} failed)"
                                                  for v in mon.values() if isinstance(v, dict) and "replicas" in v) + "."]
    se = doc.get("sketch_error")
    if se:
        lines += ["", "**Sketch L-inf vs exact KS**: " + "; ".join(f"{k}: max {v['max_abs_error']}, mean {v['mean_abs_error']} ({v['comparisons']} comparisons)" for k, v in se.items()) + "."]
    s = doc.get("stream")
    if s and "memory" in s:
        mem = ", ".join(f"{m['rows']:,} rows: +{m['rss_over_start_mb']} MB" for m in s["memory"])
        lines += ["", f"**Stream**: {s['rows']:,} rows x {s['features']} features through a {s['window_rows']:,}-row window "
                  f"at {s['rows_per_second']:,} rows/s; RSS over start: {mem}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=3, metavar=("TOOL", "ROWS", "FEATURES"), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900, help="seconds one tool may take on one case")
    parser.add_argument("--sections", default="grid,large,spark,monitor,sketch_error,stream")
    parser.add_argument("--spark-rows", type=int, default=10_000_000)
    parser.add_argument("--work", default="/tmp/kanari-drift-bench", help="where the Parquet inputs are written")
    parser.add_argument("--tools", default=",".join(TOOLS), help="grid tools to run")
    parser.add_argument("--keep", action="store_true", help="keep the results in drift.json of sections and tools not run now")
    args = parser.parse_args()
    if args.one:
        tool, rows, feats = args.one
        print(json.dumps(one(tool, int(rows), int(feats))))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # The benchmark's own compiled-kernel cache: the in-process case's warm-up fills it before the CLI processes
    # are timed, so they load a cached kernel as every run after a user's first does (the first compiles, ~3 s).
    os.environ.setdefault("NUMBA_CACHE_DIR", str(work / "numba-cache"))
    tools = tuple(t for t in TOOLS if t in args.tools.split(","))
    configs = [(100_000, 100, tools), (1_000_000, 20, tools)]
    previous = json.loads((RESULTS / "drift.json").read_text()) if args.keep and (RESULTS / "drift.json").exists() else {}
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "make bench-drift   (= bash bench/drift_env.sh " + " ".join(sys.argv[1:]) + ")",
        "note": f"Per-case time limit {args.timeout:.0f}s. In-process cases run each in a fresh process after a warm-up "
        "(imports and JIT not measured); `kanari-cli` and `alibi-detect-process` are whole processes reading the same "
        "Parquet files (imports included). Peak MB: in-process, peak RSS above the RSS with the data loaded; processes, "
        "the process's peak RSS. The floor is one pass summing the current data in memory. Other engineers' jobs shared "
        "the 2 cores during the run, so wall times are upper bounds.",
        "defaults": {"kanari": "L-infinity (KS statistic) > 0.1: the stored baseline's KLL sketch (k=512) against the exact current CDF",
                     "evidently": "DataDriftPreset defaults (numerical: Wasserstein (normed) > 0.1 above 1000 rows)",
                     "alibi-detect": "TabularDrift (KS per feature), a feature flagged at p < 0.05 / features (Bonferroni)"},
    }
    sections = {
        "grid": lambda: grid(configs, args.timeout, work, previous.get("grid")),
        "large": lambda: large(1_000_000, 500, work, args.timeout),
        "spark": lambda: spark(args.spark_rows, 20, work, args.timeout),
        "monitor": monitor_scale,
        "sketch_error": sketch_error,
        "stream": lambda: stream(10_000_000, 1_000_000),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, kept in previous.items():
        if name in sections and name not in args.sections.split(","):
            doc[name] = kept
    if previous:
        doc["kept_from"] = previous.get("started")
    for name in args.sections.split(","):
        print(f"section {name}", file=sys.stderr, flush=True)
        try:
            doc[name] = sections[name]()
        except Exception:
            doc[name] = {"status": "failed", "error": traceback.format_exc().splitlines()[-3:]}
        (RESULTS / "drift.json").write_text(json.dumps(doc, indent=1))
        (RESULTS / "drift.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

