"""Real Prometheus and Alertmanager processes on loopback, for the embedded defaults and the tests.

The binaries are the Debian packages' (`prometheus`, `prometheus-alertmanager`); nothing here fakes them.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


class MissingBinary(RuntimeError):
    pass


def find_binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise MissingBinary(
        f"none of {', '.join(names)} is on PATH; install the Debian packages prometheus and "
        "prometheus-alertmanager (`make bootstrap` does it)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text()[-2000:] if log and log.exists() else ""
            program = proc.args[0] if isinstance(proc.args, list) else proc.args
            raise RuntimeError(f"{program!s} exited with {proc.returncode} before it was ready:\n{detail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@dataclass
class ManagedProcess:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    workdir: Path
    log: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class ScrapeTarget:
    job: str
    targets: Sequence[str]
    metrics_path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class PrometheusProcess(ManagedProcess):
    config_path: Path = Path()

    def reload(self) -> None:
        """Re-read config and rule files (needs --web.enable-lifecycle, which start_prometheus sets)."""
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"prometheus reload answered {resp.status}")


def prometheus_config(
    targets: Sequence[ScrapeTarget],
    rule_files: Sequence[str | Path] = (),
    alertmanager: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "scrape_configs": [
            {
                "job_name": t.job,
                "metrics_path": t.metrics_path,
                "static_configs": [{"targets": list(t.targets), "labels": dict(t.labels)}],
            }
            for t in targets
        ],
    }
    if rule_files:
        cfg["rule_files"] = [str(p) for p in rule_files]
    if alertmanager:
        cfg["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]
        }
    return cfg


def start_prometheus(
    workdir: Path,
    targets: Sequence[ScrapeTarget] = (),
    rule_files: Sequence[str | Path] = (),
    alertmanager: str | None = None,
    port: int | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> PrometheusProcess:
    binary = find_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if port_in_use(port):
        raise RuntimeError(f"port {port} is in use; Prometheus cannot listen there")
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(prometheus_config(targets, rule_files, alertmanager, scrape_interval, evaluation_interval))
    )
    log = workdir / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    return _ready(PrometheusProcess("prometheus", proc, url, port, workdir, log, config_path=config))


def start_alertmanager(
    workdir: Path, config: dict[str, Any], port: int | None = None
) -> ManagedProcess:
    binary = find_binary("prometheus-alertmanager", "alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if port_in_use(port):
        raise RuntimeError(f"port {port} is in use; Alertmanager cannot listen there")
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(yaml.safe_dump(config))
    log = workdir / "alertmanager.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # a single instance: no gossip port to collide on
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    return _ready(ManagedProcess("alertmanager", proc, url, port, workdir, log))


P = TypeVar("P", bound=ManagedProcess)


def _ready(p: P) -> P:
    """Wait for the process's /-/ready; a process that never gets there is stopped, not left behind."""
    try:
        wait_ready(f"{p.url}/-/ready", p.proc, log=p.log)
    except BaseException:
        p.stop()
        raise
    return p


@contextlib.contextmanager
def running(*procs: ManagedProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()
