"""A small exporter the Prometheus tests control: KServe-shaped request metrics for a stable and a canary.

Serverless: one endpoint with the Knative queue-proxy's series (revision_app_request_count,
revision_app_request_latencies in ms, labelled namespace_name/revision_name/response_code_class).
RawDeployment: one endpoint per pod with the KServe model server's histograms (names taken from the
installed kserve.metrics); the pod's namespace and kanari.dev/revision label arrive as target labels, as
Kubernetes discovery would attach them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kanari.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus
from kanari.rollout import loop
from kanari.rollout.engine import RolloutDecision, RolloutObservation, decide
from kanari.rollout.prometheus import PrometheusClient
from kanari.scrape import DEFAULT_MONITOR_JOB
from kserve import metrics as kserve_metrics
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import Metric, UntypedMetricFamily
from prometheus_client.registry import Collector
from rollout_testlib import ref

from devstack.stack import ScrapeTarget, free_port

MS_BUCKETS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
S_BUCKETS = tuple(b / 1000 for b in MS_BUCKETS)


@dataclass
class Behaviour:
    error_ratio: float = 0.0
    latency: float = 0.02  # seconds


class _KnativeCounts(Collector):
    """revision_app_request_count exactly as the queue-proxy names it (no _total suffix)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], float] = {}
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        fam = UntypedMetricFamily(
            "revision_app_request_count", "requests", labels=["namespace_name", "revision_name", "response_code_class",
                                                              "response_code"],
        )
        with self.lock:
            for labels, value in self.counts.items():
                fam.add_metric(list(labels), value)
        yield fam


class ServerlessExporter:
    def __init__(self, namespace: str):
        self.namespace = namespace
        self.registry = CollectorRegistry()
        self.counts = _KnativeCounts()
        self.registry.register(self.counts)
        self.latency = Histogram(
            "revision_app_request_latencies", "latency in ms", ["namespace_name", "revision_name"],
            buckets=MS_BUCKETS, registry=self.registry,
        )
        # The drift monitor's gauges, served apart: the templates read them from the monitor's scrape job only.
        self.monitor_registry = CollectorRegistry()
        self.divergence = Gauge("kanari_canary_divergence", "psi", ["namespace", "model", "method"],
                                registry=self.monitor_registry)
        self.window = Gauge("kanari_drift_window_samples", "n", ["namespace", "model", "endpoint"],
                            registry=self.monitor_registry)
        self.port, self.monitor_port = free_port(), free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.monitor_server, _ = start_http_server(self.monitor_port, addr="127.0.0.1", registry=self.monitor_registry)

    def targets(self) -> list[ScrapeTarget]:
        return [ScrapeTarget(job=f"knative-{self.namespace}", targets=[f"127.0.0.1:{self.port}"])]

    def serve(self, revision: str, ok: bool, seconds: float) -> None:
        code, klass = ("200", "2xx") if ok else ("503", "5xx")
        key = (self.namespace, revision, klass, code)
        with self.counts.lock:
            self.counts.counts[key] = self.counts.counts.get(key, 0.0) + 1
        self.latency.labels(self.namespace, revision).observe(seconds * 1000)

    def close(self) -> None:
        self.server.shutdown()
        self.monitor_server.shutdown()


def monitor_target(exporters: Iterable[ServerlessExporter], more: Iterable[str] = ()) -> ScrapeTarget:
    """One scrape job, the drift monitor's (the operator's default), over every exporter's drift gauges."""
    return ScrapeTarget(job=DEFAULT_MONITOR_JOB,
                        targets=[*(f"127.0.0.1:{e.monitor_port}" for e in exporters), *more])


class RawPod:
    """One model-server pod: kserve's own histogram names, label model_name."""

    def __init__(self, namespace: str, revision: str, model: str):
        self.registry = CollectorRegistry()
        labels = list(kserve_metrics.PROM_LABELS)
        self.model = model
        self.pre, self.predict, self.post = (
            Histogram(h._name, h._documentation, labels, buckets=S_BUCKETS, registry=self.registry)
            for h in (kserve_metrics.PRE_HIST_TIME, kserve_metrics.PREDICT_HIST_TIME, kserve_metrics.POST_HIST_TIME)
        )
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.target = ScrapeTarget(job=f"raw-{namespace}-{revision}", targets=[f"127.0.0.1:{self.port}"],
                                   labels={"namespace": namespace, "kanari_dev_revision": revision})

    def serve(self, revision: str, ok: bool, seconds: float) -> None:
        # Model.__call__: preprocess is timed for every request; postprocess only after predict succeeded.
        self.pre.labels(self.model).observe(0.001)
        self.predict.labels(self.model).observe(seconds)
        if ok:
            self.post.labels(self.model).observe(0.001)

    def close(self) -> None:
        self.server.shutdown()


class Traffic(threading.Thread):
    """Sends `rps` requests a second, `canary_weight` percent of them to the canary."""

    def __init__(self, sink_for: dict[str, Any], stable: str, canary: str, rps: float = 200):
        super().__init__(daemon=True)
        self.sinks = sink_for
        self.stable, self.canary = stable, canary
        self.rps = rps
        self.canary_weight = 0
        self.behaviour = {stable: Behaviour(), canary: Behaviour()}
        self._stop_event = threading.Event()
        self._rng = random.Random(7)

    def run(self) -> None:
        tick = 0.05
        owed = 0.0
        while not self._stop_event.wait(tick):
            owed += self.rps * tick
            n, owed = int(owed), owed - int(owed)
            for _ in range(n):
                rev = self.canary if self._rng.random() * 100 < self.canary_weight else self.stable
                b = self.behaviour[rev]
                self.sinks[rev].serve(rev, self._rng.random() >= b.error_ratio, b.latency)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def serving_status(spec_v1: ModelDeploymentSpec) -> ModelDeploymentStatus:
    """v1 deployed and seen serving."""
    d = decide(spec_v1, ModelDeploymentStatus(), RolloutObservation(now=datetime.now(UTC), desired=ref(spec_v1),
                                                                   stable_ready=True, canary_ready=False), 1)
    return d.status


def last(status: ModelDeploymentStatus, metric: str):
    """The newest measurement of `metric` across the analysis runs."""
    found = [(m.finishedAt, m) for r in status.analysisRuns for mr in r.metrics if mr.name == metric
             for m in mr.measurements]
    return max(found, key=lambda x: x[0])[1]


async def drive(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, prom: PrometheusClient,
                variables: dict[str, str], traffic: Traffic | None, until, timeout: float,
                canary_ready: bool = True) -> tuple[ModelDeploymentStatus, list[RolloutDecision]]:
    """The controller's loop against real time and a real Prometheus, until `until(decision)`."""
    import asyncio

    decisions: list[RolloutDecision] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = datetime.now(UTC)

        def decide_on(measurement, now=now, status=status):
            return decide(spec, status, RolloutObservation(now=now, desired=ref(spec), stable_ready=True,
                                                         canary_ready=canary_ready, measurement=measurement), 1)

        # The production loop step: due metrics -> measure -> decide.
        d = await loop.step(spec, status, now, prom, lambda: variables, decide_on)
        decisions.append(d)
        status = ModelDeploymentStatus.model_validate(d.status.model_dump(mode="json"))
        if traffic is not None:
            traffic.canary_weight = d.canary_weight if d.canary is not None else 0
        if until(d):
            return status, decisions
        await asyncio.sleep(min(d.requeue_after if d.requeue_after is not None else 0.5, 0.5))
    raise AssertionError(f"timed out; last status: {status.phase} {status.message}")
