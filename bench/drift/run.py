"""Drift benchmark (not a test): Kanari vs Evidently vs alibi-detect on the same seeded synthetic data,
plus the monitor's own figures. Run it through bench/drift_env.sh, which installs the peers.

  grid        reference 100k rows; current 10k / 100k / 1M rows; 10 / 100 / 500 numeric features; 10% of
              the features shifted. Per tool: wall time, feature-values per second, peak memory, and which
              features it flags (agreement with the truth and with each other). Each run is its own process.
  stream      10M rows through the monitor's sliding window (ring of KLL sketches): memory as it goes.
  false_alarm 200 no-drift trials at default thresholds.
  sketch      sketch L-infinity vs the exact two-sample KS statistic.
  ingest      events per second one monitor process (pinned to one core) takes in over HTTP.

Results: bench/results/drift.json and bench/results/drift.md. A peer that is not installed, fails or
runs past its time limit is reported as such; no number is invented.
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
REF_ROWS = 100_000
CURRENT_ROWS = (10_000, 100_000, 1_000_000)
FEATURES = (10, 100, 500)
SHIFTED_SHARE = 0.1
SEED = 20261127
TOOLS = ("kanari", "evidently", "alibi-detect")
CHUNK = 100_000


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
def run_kanari(ref: np.ndarray, cur: np.ndarray) -> list[int]:
    from kanari.drift.methods import DEFAULT_THRESHOLDS, linf
    from kanari.drift.profile import Feature, Profile, chunk_rows

    features = [Feature(f"f{j}", "Fractional") for j in range(ref.shape[1])]
    profiles = []
    for data in (ref, cur):
        p = Profile.empty(features, seed=0)
        step = chunk_rows(ref.shape[1])
        for start in range(0, len(data), step):  # streamed: memory does not grow with the row count
            part = data[start : start + step]
            p.add_rows(part, {}, len(part))
        profiles.append(p)
    values = linf(profiles[0].sketch, profiles[1].sketch)
    return [int(j) for j in np.flatnonzero(values > DEFAULT_THRESHOLDS["linf"])]


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


def run_alibi(ref: np.ndarray, cur: np.ndarray) -> list[int]:
    from alibi_detect.cd import KSDrift

    detector = KSDrift(ref, p_val=0.05)
    preds = detector.predict(cur, drift_type="feature", return_p_val=True)
    return [int(j) for j in np.flatnonzero(np.asarray(preds["data"]["is_drift"]).reshape(-1))]


RUNNERS = {"kanari": run_kanari, "evidently": run_evidently, "alibi-detect": run_alibi}


def one(tool: str, rows: int, n_features: int) -> dict[str, Any]:
    """One measurement in this process (the orchestrator runs each in a fresh one)."""
    # Warm-up on a little data first: imports, numba compilation and caches are not what is measured.
    RUNNERS[tool](make_data(2000, n_features, 1, shift=False), make_data(2000, n_features, 2, shift=False))
    ref = make_data(REF_ROWS, n_features, SEED, shift=False)
    cur = make_data(rows, n_features, SEED + rows + n_features, shift=True)
    gc.collect()
    before = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    drifted = RUNNERS[tool](ref, cur)
    wall = time.perf_counter() - start
    return {
        "wall_seconds": round(wall, 3),
        "feature_values_per_second": round((REF_ROWS + rows) * n_features / wall),
        "peak_memory_mb": round(max(0, peak_rss_bytes() - before) / 2**20, 1),
        "drifted": drifted,
    }


def installed(tool: str) -> str | None:
    module = {"kanari": "kanari", "evidently": "evidently", "alibi-detect": "alibi_detect"}[tool]
    try:
        mod = __import__(module)
    except Exception:  # not installed, or installed broken: either way it cannot be measured
        return None
    return str(getattr(mod, "__version__", "installed"))


def grid(configs: list[tuple[int, int]], timeout: float) -> dict[str, Any]:
    versions = {t: installed(t) for t in TOOLS}
    runs = []
    for rows, n_features in configs:
        truth = shifted_features(n_features)
        entry: dict[str, Any] = {"current_rows": rows, "features": n_features, "shifted": truth, "tools": {}}
        for tool in TOOLS:
            if versions[tool] is None:
                entry["tools"][tool] = {"status": "not installed"}
                continue
            print(f"grid: {tool} rows={rows} features={n_features}", file=sys.stderr, flush=True)
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", tool, str(rows), str(n_features)],
                    capture_output=True, text=True, timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                entry["tools"][tool] = {"status": f"timeout after {timeout:.0f}s"}
                continue
            if proc.returncode != 0:
                entry["tools"][tool] = {"status": "failed", "error": proc.stderr.strip().splitlines()[-3:]}
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            found = set(result["drifted"])
            result["status"] = "ok"
            result["recall"] = round(len(found & set(truth)) / len(truth), 3)
            result["false_positives"] = len(found - set(truth))
            entry["tools"][tool] = result
        kanari = entry["tools"].get("kanari", {})
        for tool in TOOLS[1:]:
            peer = entry["tools"][tool]
            if kanari.get("status") == "ok" and peer.get("status") == "ok":
                a, b = set(kanari["drifted"]), set(peer["drifted"])
                peer["agreement_with_kanari"] = round(len(a & b) / len(a | b), 3) if a | b else 1.0
                peer["kanari_speedup"] = round(peer["wall_seconds"] / kanari["wall_seconds"], 2)
                peer["kanari_memory_ratio"] = (
                    round(kanari["peak_memory_mb"] / peer["peak_memory_mb"], 3) if peer["peak_memory_mb"] else None
                )
        runs.append(entry)
    return {"versions": versions, "runs": runs}


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


def false_alarms(trials: int, current_rows: tuple[int, ...] = (1000, 10_000), n_features: int = 10) -> dict[str, Any]:
    """No drift at all, default thresholds: how often would Kanari raise an alarm?"""
    from kanari.drift.methods import DEFAULT_THRESHOLDS, NUMERIC_METHODS, numeric_drift
    from kanari.drift.profile import Feature, Profile

    features = [Feature(f"f{j}", "Fractional") for j in range(n_features)]
    base = Profile.empty(features, seed=0)
    base.add_rows(make_data(REF_ROWS, n_features, SEED, shift=False), {}, REF_ROWS)
    out: dict[str, Any] = {"trials": trials, "features": n_features, "thresholds": DEFAULT_THRESHOLDS, "by_rows": {}}
    for rows in current_rows:
        dataset_alarms = {m: 0 for m in NUMERIC_METHODS}
        feature_alarms = {m: 0 for m in NUMERIC_METHODS}
        for t in range(trials):
            cur = Profile.empty(features, seed=t)
            cur.add_rows(make_data(rows, n_features, SEED + 10_000 + t, shift=False), {}, rows)
            values = numeric_drift(base.sketch, cur.sketch, base.moments.std(), NUMERIC_METHODS)
            for m, v in values.items():
                flagged = v > DEFAULT_THRESHOLDS[m]
                feature_alarms[m] += int(flagged.sum())
                dataset_alarms[m] += int(flagged.any())
        out["by_rows"][str(rows)] = {
            m: {"dataset_false_alarm_rate": dataset_alarms[m] / trials,
                "feature_false_alarm_rate": feature_alarms[m] / (trials * n_features)}
            for m in NUMERIC_METHODS
        }
    return out


def sketch_error() -> dict[str, Any]:
    from kanari.drift.methods import linf
    from kanari.drift.sketch import KllSketch
    from kanari.drift.window import WINDOW_SKETCH_K
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(SEED)
    out = {}
    for k in (200, WINDOW_SKETCH_K):
        errors = []
        for rows in (10_000, 100_000, 1_000_000):
            a = make_data(100_000, 10, SEED + 1, shift=False)
            b = make_data(rows, 10, SEED + rows, shift=bool(rng.integers(0, 2)))
            sa, sb = KllSketch(10, k=k, seed=1), KllSketch(10, k=k, seed=2)
            for s, d in ((sa, a), (sb, b)):
                for start in range(0, len(d), CHUNK):
                    s.update(d[start : start + CHUNK])
            exact = np.array([ks_2samp(a[:, j], b[:, j]).statistic for j in range(10)])
            errors.extend(np.abs(linf(sa, sb) - exact).tolist())
        out[f"k={k}"] = {"comparisons": len(errors), "max_abs_error": round(max(errors), 4),
                         "mean_abs_error": round(float(np.mean(errors)), 4)}
    return out


def ingest(seconds: float = 10.0, concurrency: int = 32) -> dict[str, Any]:
    """Events/s one monitor process takes (pinned to CPU 0; the load generator runs on CPU 1)."""
    import tempfile

    import aiohttp
    from kanari.drift.model_monitor import write_baseline
    from sklearn.datasets import load_breast_cancer

    from devstack.stack import free_port

    df = load_breast_cancer(as_frame=True).frame
    work = Path(tempfile.mkdtemp(prefix="kanari-ingest-"))
    write_baseline(df, work / "baseline", target="target")
    (work / "config.yaml").write_text(f"baselines:\n  bench/cancer: file://{work / 'baseline'}\n")
    port = free_port()
    cpus = sorted(os.sched_getaffinity(0))
    monitor = subprocess.Popen(
        ["taskset", "-c", str(cpus[0]), sys.executable, "-m", "kanari.monitor.server", "--port", str(port),
         "--host", "127.0.0.1", "--config", str(work / "config.yaml"), "--evaluate-interval", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    if len(cpus) > 1:
        os.sched_setaffinity(0, set(cpus[1:]))
    url = f"http://127.0.0.1:{port}/"
    rows = df.drop(columns=["target"]).to_numpy()

    def headers(i: int, kind: str) -> dict[str, str]:
        return {"Ce-Specversion": "1.0", "Ce-Id": f"id-{i}", "Ce-Source": "http://bench/", "Ce-Time": "2026-11-27T00:00:00Z",
                "Ce-Type": f"org.kubeflow.serving.inference.{kind}", "Ce-Inferenceservicename": "cancer",
                "Ce-Namespace": "bench", "Ce-Component": "predictor", "Ce-Endpoint": "default", "Ce-Metadata": "{}",
                "Content-Type": "application/json"}

    async def load() -> tuple[int, int, float]:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            counter = iter(range(10**9))
            ok = failed = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal ok, failed
                while time.perf_counter() < deadline:
                    i = next(counter)
                    req = json.dumps({"instances": [rows[i % len(rows)].tolist()]})
                    for kind, body in (("request", req), ("response", json.dumps({"predictions": [i % 2]}))):
                        async with session.post(url, data=body, headers=headers(i, kind)) as r:
                            ok, failed = (ok + 1, failed) if r.status == 200 else (ok, failed + 1)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return ok, failed, time.perf_counter() - start

    try:
        ok, failed, wall = asyncio.run(load())
    finally:
        monitor.terminate()
        monitor.wait(10)
        os.sched_setaffinity(0, set(cpus))
    return {"events_per_second": round(ok / wall), "rows_per_second": round(ok / 2 / wall), "events": ok,
            "failed": failed, "seconds": round(wall, 1), "concurrency": concurrency,
            "event": "V1 binary-mode CloudEvent, 1 instance x 30 features, request and response paired by ce-id",
            "monitor_cpu": cpus[0], "load_generator_cpus": cpus[1:]}


# ---------------------------------------------------------------------------------------------- report
def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Drift benchmark", "", f"Run {doc['started']} on {doc['machine']}. {doc['grid_note']}", ""]
    lines.append("| current rows | features | tool | wall s | feature-values/s | peak MB | recall | false pos | agreement w/ Kanari | Kanari speed-up |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for run in doc["grid"]["runs"]:
        for tool, r in run["tools"].items():
            if r.get("status") != "ok":
                lines.append(f"| {run['current_rows']:,} | {run['features']} | {tool} | {r.get('status')} | | | | | | |")
                continue
            lines.append(
                f"| {run['current_rows']:,} | {run['features']} | {tool} | {r['wall_seconds']} | "
                f"{r['feature_values_per_second']:,} | {r['peak_memory_mb']} | {r['recall']} | {r['false_positives']} | "
                f"{r.get('agreement_with_kanari', '-')} | {r.get('kanari_speedup', '-')} |"
            )
    s = doc.get("stream")
    if s:
        mem = ", ".join(f"{m['rows']:,} rows: +{m['rss_over_start_mb']} MB" for m in s["memory"])
        lines += ["", f"**Stream**: {s['rows']:,} rows x {s['features']} features through a {s['window_rows']:,}-row window "
                  f"at {s['rows_per_second']:,} rows/s; RSS over start: {mem} (raw window: {s['raw_window_would_need_mb']} MB)."]
    fa = doc.get("false_alarm")
    if fa:
        parts = [f"{rows} rows: linf {v['linf']['dataset_false_alarm_rate']:.3f} per dataset / {v['linf']['feature_false_alarm_rate']:.4f} per feature"
                 for rows, v in fa["by_rows"].items()]
        lines += ["", f"**False alarms** ({fa['trials']} no-drift trials, {fa['features']} features, default thresholds): " + "; ".join(parts) + "."]
    se = doc.get("sketch_error")
    if se:
        lines += ["", "**Sketch L-inf vs exact KS**: " + "; ".join(f"{k}: max {v['max_abs_error']}, mean {v['mean_abs_error']} ({v['comparisons']} comparisons)" for k, v in se.items()) + "."]
    ing = doc.get("ingest")
    if ing:
        lines += ["", f"**Ingest**: one monitor process on one core took {ing['events_per_second']:,} events/s "
                  f"({ing['rows_per_second']:,} request/response pairs/s; {ing['failed']} failed) over {ing['seconds']} s."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=3, metavar=("TOOL", "ROWS", "FEATURES"), help=argparse.SUPPRESS)
    parser.add_argument("--reduced", action="store_true", help="skip the 1M-row x 500-feature case for the peers")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one tool may take on one case")
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    if args.one:
        tool, rows, feats = args.one
        print(json.dumps(one(tool, int(rows), int(feats))))
        return 0
    configs = [(r, f) for r in CURRENT_ROWS for f in FEATURES]
    note = "Full grid."
    if args.reduced:
        configs = [c for c in configs if c != (1_000_000, 500)]
        note = "Reduced grid: the 1M-row x 500-feature case is left out (2 cores)."
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "grid_note": note + f" Per-case time limit {args.timeout:.0f}s. Each case runs in its own process after a "
        "warm-up on 2000 rows (imports and JIT are not measured). Peak memory: peak RSS (VmHWM, reset just before "
        "the tool runs) above the RSS once the data was in memory. Other work shared the 2 cores during the run.",
        "reference_rows": REF_ROWS, "shifted_share": SHIFTED_SHARE, "seed": SEED,
        "defaults": {"kanari": "L-infinity (KS statistic) > 0.1 on KLL sketches (k=200)",
                     "evidently": "DataDriftPreset defaults (numerical: Wasserstein (normed) > 0.1 above 1000 rows)",
                     "alibi-detect": "KSDrift, p_val 0.05 (its per-feature flags are uncorrected; "
                     "Bonferroni applies only to its batch verdict)"},
    }
    sections = [
        ("grid", lambda: grid(configs, args.timeout)),
        ("stream", lambda: stream(10_000_000, 1_000_000)),
        ("false_alarm", lambda: false_alarms(args.trials)),
        ("sketch_error", sketch_error),
        ("ingest", ingest),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, fn in sections:
        print(f"section {name}", file=sys.stderr, flush=True)
        try:
            doc[name] = fn()
        except Exception:
            doc[name] = {"status": "failed", "error": traceback.format_exc().splitlines()[-3:]}
        (RESULTS / "drift.json").write_text(json.dumps(doc, indent=1))
    (RESULTS / "drift.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
