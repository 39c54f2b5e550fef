"""Helpers for the drift tests: CloudEvents exactly as KServe's payload logger sends them, the monitor
and receiver as real processes, and Prometheus text parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pandas as pd
import yaml
from kanari.api.v1alpha1 import ModelDeployment
from kanari.controller.drift_rules import rule_groups
from kanari.scrape import ScrapeJobs
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_breast_cancer

from devstack.stack import free_port

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
T = TypeVar("T")


def cancer_frame() -> pd.DataFrame:
    """A real tabular dataset shipped with scikit-learn (bundled, not downloaded): 569 rows, 30 features."""
    return load_breast_cancer(as_frame=True).frame


def kserve_headers(
    *,
    ce_id: str,
    ce_type: str,
    model: str,
    namespace: str,
    endpoint: str = "default",
    annotations: dict[str, str] | None = None,
    metadata: dict[str, list[str]] | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """Headers of one binary-mode CloudEvent as kserve/pkg/logger/worker.go sends it through sdk-go:
    Go canonicalises header names (Ce-Inferenceservicename), `metadata` is always sent (json.Marshal of
    map[string][]string), `annotations` only when there are any (json.Marshal of map[string]string,
    keys sorted), and Content-Type is the inference request's own content type."""
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Id": ce_id,
        "Ce-Source": "http://localhost:9081/",
        "Ce-Type": ce_type,
        "Ce-Time": "2026-11-27T08:00:00.123456789Z",
        "Ce-Inferenceservicename": model,
        "Ce-Namespace": namespace,
        "Ce-Component": "predictor",
        "Ce-Endpoint": endpoint,
        "Ce-Metadata": json.dumps(metadata or {}, separators=(",", ":"), sort_keys=True),
        "Content-Type": content_type,
    }
    if annotations:
        headers["Ce-Annotations"] = json.dumps(annotations, separators=(",", ":"), sort_keys=True)
    return headers


def structured_body(headers: dict[str, str], payload: dict[str, Any]) -> bytes:
    """The same event in structured mode (application/cloudevents+json)."""
    doc: dict[str, Any] = {"datacontenttype": "application/json", "data": payload}
    for k, v in headers.items():
        if k.lower().startswith("ce-"):
            doc[k[3:].lower()] = v
    return json.dumps(doc).encode()


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""


def start_service(module: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> Service:
    """`python -m <module> --port P --host 127.0.0.1 ...` as a real process; waits for /healthz."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{module.rsplit('.', 1)[-1]}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), "--host", "127.0.0.1", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    svc = Service(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{module} exited with {proc.returncode}:\n{svc.tail()}")
        try:
            if httpx.get(f"{svc.url}/healthz", timeout=1).status_code == 200:
                return svc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    svc.stop()
    raise TimeoutError(f"{module} not ready:\n{svc.tail()}")


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out.append((dict(s.labels), s.value))
    return out


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 20.0, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def new_id() -> str:
    return str(uuid.uuid4())


def rule_file(mds: Iterable[ModelDeployment]) -> dict[str, Any]:
    """The controller's drift rule groups as a plain Prometheus rule file (the tests' Prometheus has no operator)."""
    return {"groups": [g for md in mds for g in rule_groups(md, ScrapeJobs())]}


def write_rule_file(mds: Iterable[ModelDeployment], path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(rule_file(mds), sort_keys=False))
    return out
