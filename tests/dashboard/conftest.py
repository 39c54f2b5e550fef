"""The dashboard's test stack, shared by tests/dashboard: API emulator, exporter + real Prometheus, the real operator,
a KServe stand-in, webhooks for its notifications, and two `kanari dashboard` processes (an admin's and a
read-only user's kubeconfig)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kanari.scrape import DEFAULT_MONITOR_JOB

from devstack.stack import ScrapeTarget, free_port, start_prometheus
from tests.dashboard.dashboard_testlib import (
    ApiServer,
    DashboardProcess,
    KServeLoop,
    Kube,
    WebhookReceiver,
    exporter,
)

ARTIFACTS = Path(os.environ.get("KANARI_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "out" / "test-artifacts")) / "dashboard"


@dataclass
class Stack:
    server: ApiServer
    kube: Kube
    gauges: dict[str, Any]
    prometheus: str
    kserve: KServeLoop
    admin: DashboardProcess
    viewer: DashboardProcess
    workdir: Path
    webhooks: WebhookReceiver


# Package scope: torn down after the last test here, not left running (an operator resyncing every second)
# through the rest of the suite.
@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not shutil.which("prometheus"):
        pytest.fail("prometheus is not installed (scripts/bootstrap.sh installs it)")
    from tests.operator.harness import Operator

    work = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    with ApiServer(work) as server, exporter(port) as gauges, WebhookReceiver() as webhooks:
        prom = start_prometheus(work / "prometheus", [ScrapeTarget(DEFAULT_MONITOR_JOB, [f"127.0.0.1:{port}"])])
        kube = Kube(server)
        kserve = KServeLoop(kube)
        kserve.thread.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "KANARI_", "AWS_"))}
        env.update(
            KUBECONFIG=str(server.admin_kubeconfig), KANARI_NAMESPACES="ml-prod", KANARI_RESYNC_SECONDS="1",
            KANARI_METRICS_PORT=str(free_port()), KANARI_LIVENESS_ENDPOINT=f"http://127.0.0.1:{free_port()}/healthz",
            KANARI_PROMETHEUS_URL=prom.url, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing", PYTHONUNBUFFERED="1",
            # Notifications from the real operator to webhooks on loopback (tests/dashboard/test_notify*.py).
            KANARI_NOTIFY_SLACK_URL=f"{webhooks.url}/slack", KANARI_NOTIFY_TEAMS_URL=f"{webhooks.url}/teams",
            KANARI_NOTIFY_WEBHOOK_URL=f"{webhooks.url}/hook", KANARI_NOTIFY_WEBHOOK_TOKEN="hook-token",
            KANARI_NOTIFY_DASHBOARD_URL="http://127.0.0.1:3100", KANARI_NOTIFY_RATE_PER_MINUTE="600",
        )
        operator = Operator(env, work / "operator.log")
        admin = viewer = None
        try:
            operator.start()
            admin = DashboardProcess(server.admin_kubeconfig, work / "dashboard-admin.log", prom.url)
            viewer = DashboardProcess(server.viewer_kubeconfig, work / "dashboard-viewer.log", prom.url)
            yield Stack(server, kube, gauges, prom.url, kserve, admin, viewer, work, webhooks)
        finally:
            for d in (admin, viewer):
                if d is not None:
                    d.stop()
            kserve.stopped.set()
            operator.stop()
            prom.stop()
            log = operator.tail()
            assert "Traceback" not in log, f"the operator logged a traceback:\n{log}"
            for d in (admin, viewer):
                if d is not None:
                    text = d.log.read_text(errors="replace")
                    assert "Traceback" not in text, f"the dashboard logged a traceback:\n{text[-4000:]}"
