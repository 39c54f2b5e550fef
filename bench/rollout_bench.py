"""Rollout benchmark (not a test): how fast a breaching canary loses its traffic, and what analysis costs.

Real Prometheus (scrape interval 1s) scrapes a loopback exporter serving Knative queue-proxy series for a
stable and a canary revision; traffic flows at 200 requests/s. The controller's own loop step
(kanari.rollout.loop.step: due metrics -> measure -> decide, sleeping requeue_after) runs a Canary rollout with analysis every INTERVAL. After a few
healthy measurements the canary starts failing half its requests; we time from that moment (the error
rate crosses the 0.99 success threshold as soon as those requests exist) to the decision that sets the
canary weight to 0. Prometheus queries are counted at the client.

Run: .venv/bin/python bench/rollout_bench.py [--trials 5]  ->  bench/results/rollout.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kanari.api.duration import parse_duration
from kanari.api.v1alpha1 import ModelDeploymentStatus, ModelRef, parse_spec
from kanari.rollout import loop
from kanari.rollout.engine import RolloutObservation, decide
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import UntypedMetricFamily
from prometheus_client.registry import Collector

from devstack.stack import ScrapeTarget, free_port, start_prometheus

INTERVAL = "2s"
RPS = 200
OUT = Path(__file__).with_name("results") / "rollout.json"


class Queue(Collector):
    """Knative queue-proxy request counts and latencies for any number of revisions."""

    def __init__(self, registry: CollectorRegistry):
        self.counts: dict[tuple[str, str, str], float] = {}
        self.lock = threading.Lock()
        registry.register(self)
        self.latency = Histogram("revision_app_request_latencies", "ms", ["namespace_name", "revision_name"],
                                 buckets=(5, 10, 25, 50, 100, 250, 500, 1000), registry=registry)

    def collect(self):
        fam = UntypedMetricFamily("revision_app_request_count", "requests",
                                  labels=["namespace_name", "revision_name", "response_code_class"])
        with self.lock:
            for labels, value in self.counts.items():
                fam.add_metric(list(labels), value)
        yield fam

    def serve(self, ns: str, rev: str, ok: bool) -> None:
        key = (ns, rev, "2xx" if ok else "5xx")
        with self.lock:
            self.counts[key] = self.counts.get(key, 0.0) + 1
        self.latency.labels(ns, rev).observe(20.0)


class Traffic(threading.Thread):
    def __init__(self, queue: Queue, ns: str):
        super().__init__(daemon=True)
        self.queue, self.ns = queue, ns
        self.weight = 0
        self.canary_errors = 0.0
        self.stopped = threading.Event()
        self.rng = random.Random(1)

    def run(self) -> None:
        owed = 0.0
        while not self.stopped.wait(0.02):
            owed += RPS * 0.02
            n, owed = int(owed), owed - int(owed)
            for _ in range(n):
                canary = self.rng.random() * 100 < self.weight
                ok = not (canary and self.rng.random() < self.canary_errors)
                self.queue.serve(self.ns, "canary" if canary else "stable", ok)


def spec(version: str):
    return parse_spec({
        "model": {"storageUri": f"s3://models/bench/{version}", "format": "sklearn"},
        "serving": {"accelerator": "cpu"},
        "rollout": {"steps": [{"setWeight": 20}, {"analysis": {"count": 1000}}],
                    "analysis": {"interval": INTERVAL, "minSampleCount": 20, "metrics": [
                        {"name": "success-rate", "template": "request-success-rate",
                         "thresholdRange": {"min": 0.99}},
                        {"name": "p99", "template": "request-latency-p99", "thresholdRange": {"max": 0.25}}]}},
    })


async def trial(prom: PrometheusClient, queue: Queue, n: int) -> dict[str, float]:
    ns = f"bench-{n}"
    traffic = Traffic(queue, ns)
    for rev in ("stable", "canary"):  # a Ready revision reports zeros before its first request
        queue.counts[(ns, rev, "2xx")] = 0.0
    traffic.start()
    v1, v2 = spec("v1"), spec("v2")
    desired = ModelRef(revision=v2.rollout_revision(), version="v2")
    # v1 deployed and seen serving (the engine's own first deployment), then v2 is asked for.
    status = decide(v1, ModelDeploymentStatus(), RolloutObservation(
        now=datetime.now(UTC), desired=ModelRef(revision=v1.rollout_revision(), version="v1"), stable_ready=True,
        canary_ready=False), 1).status
    variables = {"namespace": ns, "name": "bench", "stableRevision": "stable", "canaryRevision": "canary"}
    measurements = queries = 0
    healthy_passes = 0
    broke_at: float | None = None
    try:
        while not await prom.query(f'revision_app_request_count{{namespace_name="{ns}", revision_name="canary"}}'):
            await asyncio.sleep(0.2)  # Prometheus has scraped the revisions: the rollout starts now
        end = time.monotonic() + 60
        while time.monotonic() < end:
            now = datetime.now(UTC)
            seen: list[Any] = []

            def decide_on(results: Any, now: datetime = now, status: ModelDeploymentStatus = status,
                          seen: list[Any] = seen) -> Any:
                seen.append(results)
                return decide(v2, status, RolloutObservation(now=now, desired=desired, stable_ready=True,
                                                             canary_ready=True, measurement=results), 1)

            before = prom.queries
            d = await loop.step(v2, status, now, prom, lambda: variables, decide_on)
            results = seen[0]
            if results is not None:
                measurements += 1
                queries += prom.queries - before
            status = d.status
            traffic.weight = d.canary_weight if d.canary else 0
            if results and all(r.verdict == "Successful" for r in results) and broke_at is None:
                healthy_passes += 1
                if healthy_passes == 2:
                    traffic.canary_errors = 0.5
                    broke_at = time.monotonic()
            if broke_at is not None and (d.canary is None or d.canary_weight == 0):
                assert status.phase == "RolledBack", status.message
                return {"seconds_to_weight_0": time.monotonic() - broke_at,
                        "measurements": measurements, "queries": queries}
            await asyncio.sleep(min(d.requeue_after if d.requeue_after is not None else 0.2, 0.2))
        raise RuntimeError(f"trial {n} did not finish: {status.phase} {status.message}")
    finally:
        traffic.stopped.set()


async def run(trials: int) -> dict[str, object]:
    registry = CollectorRegistry()
    queue = Queue(registry)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    with tempfile.TemporaryDirectory() as tmp:
        prom_proc = start_prometheus(Path(tmp), targets=[ScrapeTarget(job="queue", targets=[f"127.0.0.1:{port}"])])
        try:
            async with PrometheusClient(PrometheusConfig(url=prom_proc.url)) as prom:
                rows = [await trial(prom, queue, i) for i in range(trials)]
        finally:
            prom_proc.stop()
            server.shutdown()
    seconds = [r["seconds_to_weight_0"] for r in rows]
    per_measurement = sum(r["queries"] for r in rows) / sum(r["measurements"] for r in rows)
    goal = parse_duration(INTERVAL) + 2
    return {
        "what": "seconds from a canary starting to fail 50% of requests to the engine setting its weight to 0",
        "analysis_interval_s": parse_duration(INTERVAL),
        "scrape_interval_s": 1.0,
        "goal_s": goal,
        "trials": trials,
        "seconds_to_weight_0": {"min": round(min(seconds), 3), "median": round(statistics.median(seconds), 3),
                                "max": round(max(seconds), 3), "all": [round(s, 3) for s in seconds]},
        "within_goal": max(seconds) <= goal,
        "metrics_per_analysis": 2,
        "prometheus_queries_per_measurement": per_measurement,
        "prometheus_queries_per_metric_per_measurement": per_measurement / 2,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(run(args.trials))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
