"""The operator under test: `python -m kanari.controller` as its own process against the API stand-in
(devstack.apiserver), what a user (kubectl) and KServe do to the cluster, and the permissions behind the
operator's requests. Shared by tests/operator, tests/cli and bench/operator_bench.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from kanari.api import v1alpha1 as api
from kubernetes import client

from devstack import apiserver, kserve_standin
from devstack.apiserver import ISVC, MD, PROMETHEUS_RULE, TEST_AGENT, ApiServer, Call, write_kubeconfig
from devstack.stack import wait_ready

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT.parent / "shared" / "upstream"
# The CRDs the tests' and benchmarks' API serves (with their schemas' subresources); the demo declares its
# kinds without the upstream files (devstack.apiserver.CUSTOM_RESOURCES).
CRD_FILES = (
    ROOT / "manifests" / "crds" / "kanari.dev_modeldeployments.yaml",
    ROOT / "charts" / "kanari" / "crds" / "kopf.dev_peerings.yaml",
    UPSTREAM / "crds" / "serving.kserve.io_inferenceservices.yaml",
    UPSTREAM / "crds" / "monitoring.coreos.com_prometheusrules.yaml",
)
T = TypeVar("T")
__all__ = ["ISVC", "MD", "PROMETHEUS_RULE", "TEST_AGENT", "ApiServer", "Call", "Cluster", "write_kubeconfig"]


class Cluster(apiserver.Cluster):
    """The API stand-in serving Kanari's and the upstream CRDs (KServe's, the Prometheus operator's)."""

    def __init__(self, workdir: Path, crds: Iterable[Path] = CRD_FILES):
        super().__init__(workdir, crds)


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 15.0, interval: float = 0.1) -> T:
    """Poll until `check()` is truthy; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


class Operator:
    """`python -m kanari.controller` as its own process, the way the chart runs it."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_url = env["KANARI_LIVENESS_ENDPOINT"]
        self.starts = 0

    def start(self, timeout: float = 40.0) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start #{self.starts} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kanari.controller"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        assert self.proc is not None
        try:
            wait_ready(self.health_url, self.proc, timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"operator not healthy: {exc}\n{self.tail()}") from None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def operator_env(cluster: Cluster, namespaces: Iterable[str], **extra: str) -> dict[str, str]:
    from devstack.stack import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "KANARI_", "AWS_"))}
    env.update(
        KUBECONFIG=str(cluster.kubeconfig),
        KANARI_NAMESPACES=",".join(namespaces),
        KANARI_RESYNC_SECONDS="1",
        KANARI_METRICS_PORT=str(free_port()),
        KANARI_LIVENESS_ENDPOINT=f"http://127.0.0.1:{free_port()}/healthz",
        # Nothing listens there: analysis must report Prometheus as unavailable, never pass.
        KANARI_PROMETHEUS_URL=f"http://127.0.0.1:{free_port()}",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Kube:
    """What a user (kubectl) and KServe do to the cluster, through the official client."""

    def __init__(self, cluster: Cluster, namespace: str):
        self.cluster = cluster
        self.namespace = namespace
        self.api_client = cluster.client()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    def create_md(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        body = {
            "apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations or {}},
            "spec": spec,
        }
        return self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, body)

    def get(self, gvr: tuple[str, str, str], name: str) -> dict[str, Any] | None:
        group, version, plural = gvr
        try:
            return self.custom.get_namespaced_custom_object(group, version, self.namespace, plural, name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def md(self, name: str) -> dict[str, Any] | None:
        return self.get(MD, name)

    def isvc(self, name: str) -> dict[str, Any] | None:
        return self.get(ISVC, name)

    def wait(
        self, gvr: tuple[str, str, str], name: str, check: Callable[[dict[str, Any]], Any], what: str,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Poll the object until `check(obj)` holds; on timeout show the object as last seen."""
        last: dict[str, Any] = {}

        def probe() -> dict[str, Any] | None:
            obj = self.get(gvr, name)
            last["obj"] = obj
            return obj if obj is not None and check(obj) else None

        try:
            return wait_for(probe, what, timeout)
        except AssertionError as exc:
            shown = {k: v for k, v in (last.get("obj") or {}).items() if k in ("spec", "status")}
            raise AssertionError(f"{exc}\n{name} as last seen: {json.dumps(shown, indent=1)[:6000]}") from None

    def wait_md(self, name: str, check: Callable[[dict[str, Any]], Any], what: str, timeout: float = 15.0) -> Any:
        return self.wait(MD, name, check, what, timeout)

    def wait_isvc(self, name: str, check: Callable[[dict[str, Any]], Any], what: str, timeout: float = 15.0) -> Any:
        return self.wait(ISVC, name, check, what, timeout)

    def merge_patch(self, gvr: tuple[str, str, str], name: str, patch: dict[str, Any], status: bool = False) -> Any:
        group, version, plural = gvr
        path = f"/apis/{group}/{version}/namespaces/{self.namespace}/{plural}/{name}" + ("/status" if status else "")
        return self.api_client.call_api(
            path, "PATCH", header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
            body=patch, response_type="object", _return_http_data_only=True,
        )

    def patch_md(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.merge_patch(MD, name, patch)

    def delete_md(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, name)

    def set_isvc_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.merge_patch(ISVC, name, {"status": status}, status=True)

    def events(self, uid: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.namespace, _preload_content=False)
        return [
            e for e in json.loads(items.data).get("items", [])
            if (e.get("involvedObject") or {}).get("uid") == uid
        ]

    def reasons(self, uid: str) -> list[str]:
        return [e.get("reason", "") for e in self.events(uid)]

    def wait_reasons(self, uid: str, *wanted: str, timeout: float = 15.0) -> list[str]:
        """The object's Event reasons once every `wanted` one is there. kopf posts Events from a queue of its own,
        after the status patch of the same reconcile, so a status seen is no proof its Event is posted yet."""
        def seen() -> list[str] | None:
            reasons = self.reasons(uid)
            return reasons if set(wanted) <= set(reasons) else None

        return wait_for(seen, f"the Events {sorted(wanted)}", timeout)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


class KServe:
    """The KServe controller's part, Serverless mode, driven by the test: `reconcile(name)` is one pass of KServe
    over the InferenceService as it is now, with the newest revision ready (or not).

    Revisions, traffic and status are the demo's KServe stand-in's own (devstack.kserve_standin: observe_template,
    advance, build_status), without its model-server processes: one model of KServe for the demo, the tests and
    the benchmarks.
    """

    def __init__(self, kube: Kube):
        self.kube = kube
        self.services: dict[str, kserve_standin.Service] = {}

    def reconcile(self, name: str, ready: bool = True, latest_url: str | None = None) -> dict[str, Any]:
        """`latest_url`: where the tag route of the latest revision answers (Knative's `latest-...` URL)."""
        isvc = self.kube.isvc(name)
        assert isvc is not None, f"InferenceService {name} does not exist"
        svc = self.services.setdefault(name, kserve_standin.Service(self.kube.namespace, name))
        latest, _ = kserve_standin.observe_template(svc, isvc)
        latest.ready = latest.ready or ready
        canary = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
        traffic = kserve_standin.advance(svc, canary)
        url = f"http://{name}.{self.kube.namespace}.example.com"
        status = kserve_standin.build_status(svc, isvc, traffic, url)
        for entry in status["components"]["predictor"].get("traffic") or []:
            if latest_url and entry.get("tag") == "latest":
                entry["url"] = latest_url
        return self.kube.set_isvc_status(name, status)


def permissions(calls: Iterable[Call]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every request the operator made."""
    out = set()
    for c in calls:
        if not c.by_operator or c.plural is None or c.verb is None:
            continue
        resource = f"{c.plural}/{c.subresource}" if c.subresource else c.plural
        out.add((c.group or "", resource, c.verb))
    return out
