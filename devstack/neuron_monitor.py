"""A STAND-IN for AWS neuron-monitor's Prometheus exporter (neuron-monitor-prometheus.py), for the demo and tests.

No Inferentia here: this serves, on loopback, the series the real exporter publishes for the Neuron runtimes
on a node, with the same names and labels, from values the caller sets:
- `neuroncore_utilization_ratio` (gauge, 0..1): one series per NeuronCore a runtime holds, labelled
  availability_zone, instance_id, instance_name, instance_type, neuroncore, region, runtime_tag, subnet_id.
  `runtime_tag` is the runtime's NEURON_PROCESS_TAG (Kanari sets `<namespace>.<name>.<revision>`).
- `neuron_runtime_memory_used_bytes` (gauge), labelled as above without neuroncore, plus memory_location
  (host, neuron_device).
- `instance_info` (info: `instance_info{...} 1`), the instance labels.
Everything it serves is made up; it is never part of the product image.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from devstack.stack import ScrapeTarget, free_port

INSTANCE_LABELS = ("availability_zone", "instance_id", "instance_name", "instance_type", "region", "subnet_id")


@dataclass
class Runtime:
    """One Neuron runtime (one model server process) holding `cores` NeuronCores from `first_core`."""

    tag: str
    cores: int
    first_core: int = 0
    utilization: float = 0.5
    device_memory_bytes: float = 8e9


@dataclass
class Instance:
    instance_type: str
    instance_id: str = "i-0standin000000000"
    availability_zone: str = "us-east-1a"
    region: str = "us-east-1"
    subnet_id: str = "subnet-standin"
    instance_name: str = ""
    runtimes: dict[str, Runtime] = field(default_factory=dict)

    def labels(self) -> dict[str, str]:
        return {k: str(getattr(self, k)) for k in INSTANCE_LABELS}


class _Collector(Collector):
    def __init__(self, instance: Instance, lock: threading.Lock):
        self.instance = instance
        self.lock = lock

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            base = self.instance.labels()
            runtimes = list(self.instance.runtimes.values())
        util = GaugeMetricFamily("neuroncore_utilization_ratio", "NeuronCore utilization ratio",
                                 labels=[*INSTANCE_LABELS, "neuroncore", "runtime_tag"])
        mem = GaugeMetricFamily("neuron_runtime_memory_used_bytes", "Runtime memory used bytes",
                                labels=[*INSTANCE_LABELS, "memory_location", "runtime_tag"])
        for rt in runtimes:
            for core in range(rt.first_core, rt.first_core + rt.cores):
                util.add_metric([*base.values(), str(core), rt.tag], rt.utilization)
            mem.add_metric([*base.values(), "host", rt.tag], 2.5e8)
            mem.add_metric([*base.values(), "neuron_device", rt.tag], rt.device_memory_bytes)
        info = InfoMetricFamily("instance", "EC2 instance information")
        info.add_metric([], base)
        yield util
        yield mem
        yield info


class NeuronMonitorStandIn:
    """One node's exporter on 127.0.0.1; `set_runtime`/`remove_runtime` change what it reports."""

    def __init__(self, instance_type: str, **instance: Any):
        self.instance = Instance(instance_type, **instance)
        self.lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self.instance, self.lock))
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def set_runtime(self, tag: str, cores: int, first_core: int = 0, utilization: float = 0.5) -> None:
        with self.lock:
            self.instance.runtimes[tag] = Runtime(tag, cores, first_core, utilization)

    def remove_runtime(self, tag: str) -> None:
        with self.lock:
            self.instance.runtimes.pop(tag, None)

    def target(self, job: str = "neuron-monitor-standin") -> ScrapeTarget:
        return ScrapeTarget(job=job, targets=[f"127.0.0.1:{self.port}"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
