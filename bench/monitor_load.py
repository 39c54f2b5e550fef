"""The drift monitor under load and under a flood of hostile names (issue 11), on loopback.

One monitor process (`python -m kanari.monitor.server`, the production entry point) with four monitored
models bound from its config file and a real baseline (scikit-learn's breast-cancer data); this process
drives it over HTTP with KServe-shaped CloudEvents (one row each, request and response halves):

  paced       300 events/s for 60 s, open loop (sends on schedule whatever the answers do): events/s
              answered, p50/p99 latency, monitor RSS
  concurrent  32 clients back to back for 30 s: events/s, p50/p99, RSS
  hostile     60,000 events naming distinct unknown models (each with its own baseline URI): answered 404,
              RSS before and after, and the monitor's own state sizes, which must not move

Results go to bench/results/monitor_load.json. Everything binds to 127.0.0.1 and stops when done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "monitor_load.json"
REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
MODELS = ["fraud", "churn", "credit", "risk"]
NAMESPACE = "ml-prod"


def headers(ce_id: str, ce_type: str, model: str, namespace: str = NAMESPACE, **extra: str) -> dict[str, str]:
    return {
        "Ce-Specversion": "1.0", "Ce-Id": ce_id, "Ce-Source": "http://localhost:9081/", "Ce-Type": ce_type,
        "Ce-Inferenceservicename": model, "Ce-Namespace": namespace, "Ce-Component": "predictor",
        "Ce-Endpoint": "default", "Ce-Metadata": "{}", "Content-Type": "application/json", **extra,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Events:
    """Paired request/response events drawn from the dataset, round-robin over the monitored models."""

    def __init__(self, rows: np.ndarray, labels: np.ndarray):
        self.rows = [json.dumps({"instances": [r.tolist()]}).encode() for r in rows]
        self.preds = [json.dumps({"predictions": [int(v)]}).encode() for v in labels]
        self.i = 0

    def next(self) -> list[tuple[dict[str, str], bytes]]:
        i = self.i
        self.i += 1
        ce_id, model, k = str(uuid.uuid4()), MODELS[i % len(MODELS)], i % len(self.rows)
        return [(headers(ce_id, REQUEST, model), self.rows[k]), (headers(ce_id, RESPONSE, model), self.preds[k])]


async def post(session: aiohttp.ClientSession, url: str, h: dict[str, str], body: bytes, lat: list[float],
               codes: dict[int, int]) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(url, headers=h, data=body) as resp:
            await resp.read()
            codes[resp.status] = codes.get(resp.status, 0) + 1
    except aiohttp.ClientError as exc:
        # counted, not hidden: a connection the server closed (idle keep-alive race) or refused
        codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1  # type: ignore[index]
        return
    lat.append(time.perf_counter() - t0)


def summary(lat: list[float], codes: dict[Any, int], elapsed: float, pid: int, rss: list[float]) -> dict[str, Any]:
    a = np.asarray(lat) * 1000
    return {
        "events": len(lat), "seconds": round(elapsed, 1), "events_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 1), "status_codes": {str(k): v for k, v in sorted(codes.items(), key=str)},
        "rss_mb_max": round(max(rss), 1), "rss_mb_end": round(rss_mb(pid), 1),
    }


async def paced(url: str, events: Events, rate: float, seconds: float, pid: int) -> dict[str, Any]:
    lat: list[float] = []
    codes: dict[int, int] = {}
    rss: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        n = int(rate * seconds)
        pair = events.next()
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if i % 2 == 0:
                pair = events.next()
            h, body = pair[i % 2]
            task = asyncio.create_task(post(session, url, h, body, lat, codes))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if i % int(rate) == 0:
                rss.append(rss_mb(pid))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    out = summary(lat, codes, elapsed, pid, rss)
    out["offered_events_per_s"] = rate
    return out


async def concurrent(url: str, events: Events, clients: int, seconds: float, pid: int) -> dict[str, Any]:
    lat: list[float] = []
    codes: dict[int, int] = {}
    rss: list[float] = [rss_mb(pid)]
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            for h, body in events.next():
                await post(session, url, h, body, lat, codes)

    async def sample() -> None:
        while time.perf_counter() < deadline:
            rss.append(rss_mb(pid))
            await asyncio.sleep(1)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        start = time.perf_counter()
        await asyncio.gather(sample(), *(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    out = summary(lat, codes, elapsed, pid, rss)
    out["clients"] = clients
    return out


async def hostile(url: str, names: int, pid: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        before = await (await session.get(url + "healthz")).json()
        rss_before = rss_mb(pid)
        codes: dict[int, int] = {}
        lat: list[float] = []
        sem = asyncio.Semaphore(32)
        body = json.dumps({"instances": [[1.0] * 30 + ["extra"]]}).encode()

        async def one(i: int) -> None:
            h = headers(f"h-{i}", REQUEST, f"junk-{uuid.uuid4().hex}", namespace=f"ns-{i % 997}",
                        **{"Ce-Annotations": json.dumps({"kanari.dev/baseline-uri": f"s3://attacker-{i}/b/"})})
            async with sem:
                await post(session, url, h, body, lat, codes)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(names)))
        elapsed = time.perf_counter() - start
        after = await (await session.get(url + "healthz")).json()
        metrics = await (await session.get(url + "metrics")).text()
    state = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
             if line.startswith("kanari_drift_state{")}
    limits = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("kanari_drift_limit{")}
    return {
        "names": names, "seconds": round(elapsed, 1), "events_per_s": round(names / elapsed, 1),
        "status_codes": {str(k): v for k, v in sorted(codes.items(), key=str)},
        "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(rss_mb(pid), 1),
        "rss_growth_mb": round(rss_mb(pid) - rss_before, 1),
        "windows_before": before["windows"], "windows_after": after["windows"],
        "state_after": state, "limits": limits,
        "schema_violation_series": metrics.count("kanari_schema_violations_total{"),
        "bound": ("an unknown name is refused before any state is created: windows, pending halves, baseline "
                  "cache and failure cache, metric series stay as they were; windows are capped at "
                  f"{int(limits.get('windows', 0))} (max_models) for monitored models alone"),
    }


async def crafted_tensor(url: str) -> dict[str, Any]:
    """The 83-byte V2 tensor that used to cost 90 s of CPU and 1.9 GB."""
    body = b'{"inputs": [{"name": "x", "shape": [20000000, 0], "datatype": "FP64", "data": []}]}'
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        async with session.post(url, headers=headers("t", REQUEST, MODELS[0]), data=body) as resp:
            status = resp.status
        return {"bytes": len(body), "status": status, "ms": round((time.perf_counter() - t0) * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--concurrent-seconds", type=float, default=30.0)
    parser.add_argument("--hostile", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "operators"))
    from kanari.drift.model_monitor import write_baseline
    from sklearn.datasets import load_breast_cancer

    from devstack.stack import free_port

    frame = load_breast_cancer(as_frame=True).frame
    features = frame.drop(columns=["target"])
    with tempfile.TemporaryDirectory(prefix="kanari-monitor-load-") as tmp:
        work = Path(tmp)
        write_baseline(frame, work / "baseline", target="target")
        config = work / "models.yaml"
        config.write_text("baselines:\n" + "".join(f"  {NAMESPACE}/{m}: file://{work / 'baseline'}\n" for m in MODELS))
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        log = (work / "monitor.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kanari.monitor.server", "--host", "127.0.0.1", "--port", str(port),
             "--config", str(config), "--min-samples", "100", "--evaluate-interval", "5"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": f"{ROOT / 'operators'}:{ROOT}"},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    import urllib.request

                    urllib.request.urlopen(url + "healthz", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError((work / "monitor.log").read_text()) from None
                    time.sleep(0.2)
            events = Events(features.to_numpy(), frame["target"].to_numpy())
            results: dict[str, Any] = {
                "machine": f"{os.cpu_count()} CPUs shared by the load generator, the monitor and other work",
                "rss_mb_idle": round(rss_mb(proc.pid), 1),
                # The machine is shared: a load average above the CPU count means the figures are a floor.
                "load_average_1m_before": round(os.getloadavg()[0], 1),
            }
            print(f"paced {args.rate:g} events/s for {args.seconds:g}s", flush=True)
            results["paced"] = asyncio.run(paced(url, events, args.rate, args.seconds, proc.pid))
            results["paced"]["load_average_1m_after"] = round(os.getloadavg()[0], 1)
            print(json.dumps(results["paced"]), flush=True)
            print(f"{args.clients} concurrent clients for {args.concurrent_seconds:g}s", flush=True)
            results["concurrent"] = asyncio.run(concurrent(url, events, args.clients, args.concurrent_seconds, proc.pid))
            results["concurrent"]["load_average_1m_after"] = round(os.getloadavg()[0], 1)
            print(json.dumps(results["concurrent"]), flush=True)
            print(f"{args.hostile} hostile names", flush=True)
            results["hostile_names"] = asyncio.run(hostile(url, args.hostile, proc.pid))
            print(json.dumps(results["hostile_names"]), flush=True)
            results["crafted_tensor"] = asyncio.run(crafted_tensor(url))
            print(json.dumps(results["crafted_tensor"]), flush=True)
        finally:
            alive = proc.poll() is None
            print(f"monitor alive at the end: {alive}", flush=True)
            if not alive:
                print((work / "monitor.log").read_text()[-3000:], flush=True)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
