"""A Kubernetes API on loopback for the real operator process: kmock's KubernetesEmulator, made to keep
the API-server promises the controller relies on, served from a thread; plus the operator as a subprocess,
a stand-in for the KServe controller, and the permissions behind the operator's requests.

What kmock's emulator does not do and a real API server does (so a test could not see the difference):
uid, creationTimestamp, resourceVersion and generation on objects; generateName; the status subresource
(a status write changes only .status, a main-resource write never .status, generation moves only with
the spec); optimistic concurrency (a merge patch carrying a stale metadata.resourceVersion is a 409).
Still missing on purpose: the garbage collector (tests look at ownerReferences instead) and validation
(tests validate what the operator wrote against the upstream CRD schemas).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs
import kmock
import yaml
from kanari import mergepatch
from kanari.api import v1alpha1 as api
from kubernetes import client

from devstack.stack import wait_ready

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT.parent / "shared" / "upstream"
CRD_FILES = (
    ROOT / "manifests" / "crds" / "kanari.dev_modeldeployments.yaml",
    ROOT / "charts" / "kanari" / "crds" / "kopf.dev_peerings.yaml",
    UPSTREAM / "crds" / "serving.kserve.io_inferenceservices.yaml",
    UPSTREAM / "crds" / "monitoring.coreos.com_prometheusrules.yaml",
)
TEST_AGENT = "kanari-operator-tests"  # the tests' own API calls carry it; everything else is the operator's

MD = (api.GROUP, api.VERSION, api.PLURAL)
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
PROMETHEUS_RULE = ("monitoring.coreos.com", "v1", "prometheusrules")
VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch", "DELETE": "delete"}
T = TypeVar("T")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Call:
    """One request the emulator answered, reduced to what RBAC and write-counting need."""

    at: float
    agent: str
    method: str
    verb: str | None
    group: str | None
    version: str | None
    plural: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    status: int  # what the emulator answered before the body: 409 when it refused a write
    data: Any

    @property
    def by_operator(self) -> bool:
        return self.agent != TEST_AGENT

    def on(self, gvr: tuple[str, str, str], name: str | None = None, subresource: str | None = "") -> bool:
        return (
            (self.group, self.version, self.plural) == gvr
            and (name is None or self.name == name)
            and (subresource == "" or self.subresource == subresource)
        )


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """KubernetesEmulator plus the API-server behaviour listed in the module docstring."""

    _status_subresource: set[tuple[str, str, str]] = attrs.field(factory=set, init=False)
    _counter: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _interleaved: dict[tuple[tuple[str, str, str], str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    calls: list[Call] = attrs.field(factory=list, init=False)

    def declare_crd(self, path: Path) -> None:
        for crd in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                gvr = (spec["group"], version["name"], spec["names"]["plural"])
                subresources = set((version.get("subresources") or {}).keys())
                self.resources["/".join(gvr)] = kmock.ResourceInfo(
                    namespaced=spec["scope"] == "Namespaced",
                    kind=spec["names"]["kind"],
                    singular=spec["names"].get("singular"),
                    shortnames=spec["names"].get("shortNames") or [],
                    verbs=["get", "list", "watch", "create", "update", "patch", "delete"],
                    subresources=subresources,
                )
                if "status" in subresources:
                    self._status_subresource.add(gvr)

    def interleave_write(self, gvr: tuple[str, str, str], namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Land `patch` (as another writer, e.g. KServe) just before the operator's next write of this object."""
        self._interleaved[(gvr, namespace, name)] = patch

    async def _handle(self, request: kmock.Request) -> Any:
        try:
            return await self._serve(request)
        finally:
            # kmock keeps every request and matches each new one by scanning all earlier ones: quadratic,
            # and minutes per thousand objects. `calls` is the record here; kmock sees requests in flight.
            self._requests.remove(request)
            for payload in self._payloads:
                payload._requests.clear()

    async def _serve(self, request: kmock.Request) -> Any:
        res = request.resource
        if res is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            self._record(request, 200)
            return await super()._handle(request)
        async with self._writes:  # one write at a time, as etcd's compare-and-swap would order them
            try:
                self._admit(request)
            except kmock.KubernetesError as exc:
                self._record(request, exc.status)
                raise
            self._record(request, 200)
            return await super()._handle(request)

    def _record(self, request: kmock.Request, status: int) -> None:
        res = request.resource
        verb = VERBS.get(request.action.name) if request.action is not None else None
        data = request.data if isinstance(request.data, dict) else {}
        self.calls.append(
            Call(
                at=time.monotonic(), agent=request.headers.get("User-Agent", ""), method=str(request.method.value),
                verb=verb, group=res.group if res else None, version=res.version if res else None,
                plural=res.plural if res else None, subresource=request.subresource, namespace=request.namespace,
                name=request.name or (data.get("metadata") or {}).get("name"),
                status=status, data=copy.deepcopy(request.data) if request.action != kmock.action.DELETE else None,
            )
        )

    # kmock finds an object by scanning all of them; with thousands (the benchmark) that, not the operator,
    # would be what is measured. These answer the same from the (resource, namespace, name) index.
    def _lookup(self, request: kmock.Request, namespace: str | None, name: str | None) -> Any:
        try:
            return self.objects[request.resource, namespace, name]
        except KeyError:
            return None

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        obj = self._lookup(request, request.namespace, request.name)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> Any:
        meta = request.data.get("metadata", {}) if isinstance(request.data, dict) else {}
        return self._lookup(request, request.namespace or meta.get("namespace"), meta.get("name")).raw

    async def _serve_update(self, request: kmock.Request) -> Any:
        return self._lookup(request, request.namespace, request.name).last.raw

    async def _serve_delete(self, request: kmock.Request) -> Any:
        return self._lookup(request, request.namespace, request.name).last.raw

    def _current(self, request: kmock.Request, name: str | None) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def _admit(self, request: kmock.Request) -> None:
        res = request.resource
        assert res is not None
        gvr = (res.group, res.version, res.plural)
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.namespace:
                meta["namespace"] = request.namespace
            while not meta.get("name") and meta.get("generateName"):  # retried on a clash, as API servers do
                name = meta["generateName"] + secrets.token_hex(3)
                if self._current(request, name) is None:
                    meta["name"] = name
            meta.update(
                uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=str(next(self._counter)), generation=1
            )
            if gvr in self._status_subresource:
                data.pop("status", None)
            return
        if request.action != kmock.action.UPDATE or not isinstance(data, dict) or request.name is None:
            return
        key = (gvr, request.namespace or "", request.name)
        by_operator = request.headers.get("User-Agent") != TEST_AGENT
        interleaved = self._interleaved.pop(key) if by_operator and key in self._interleaved else None
        if interleaved is not None and self._current(request, request.name) is not None:
            obj = self.objects[request.resource, request.namespace, request.name]
            obj.patch(mergepatch.apply(interleaved, {"metadata": {"resourceVersion": str(next(self._counter))}}))
        current = self._current(request, request.name)
        if current is None:
            return  # kmock answers 404
        cur_meta = current.get("metadata") or {}
        sent_rv = (data.get("metadata") or {}).get("resourceVersion")
        if sent_rv is not None and sent_rv != cur_meta.get("resourceVersion"):
            raise kmock.KubernetesError(
                status=409, reason="Conflict",
                message=f'Operation cannot be fulfilled on {res.plural}.{res.group} "{request.name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
                details={"name": request.name, "group": res.group, "kind": res.plural},
            )
        if gvr in self._status_subresource:
            if request.subresource == "status":
                for key in [k for k in data if k != "status"]:
                    del data[key]
            else:
                data.pop("status", None)
        after = mergepatch.apply(current, data)
        changed = {k for k in set(current) | set(after) if k not in ("metadata", "status") and current.get(k) != after.get(k)}
        meta = data.setdefault("metadata", {})
        if after == current:
            meta.pop("resourceVersion", None)  # a no-op write changes nothing, not even the resourceVersion
            return
        meta["resourceVersion"] = str(next(self._counter))
        if changed:
            meta["generation"] = int(cur_meta.get("generation") or 1) + 1


class Cluster:
    """The emulator served on loopback from its own thread and event loop."""

    def __init__(self, workdir: Path, crds: Iterable[Path] = CRD_FILES):
        self.workdir = workdir
        self.crds = tuple(crds)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.api: ApiServer | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="kmock-apiserver", daemon=True)

    def __enter__(self) -> Cluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API emulator did not start")
        if self._error:
            raise self._error
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to the test thread by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        apiserver = ApiServer()
        apiserver.resources.load_bundled()
        for path in self.crds:
            apiserver.declare_crd(path)
        async with apiserver, kmock.Server(apiserver) as server:
            self.api = apiserver
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[ApiServer], T]) -> T:
        """Run `fn(apiserver)` on the emulator's loop: its state is only ever touched from there."""
        assert self.api is not None
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        api_server = self.api

        def run() -> None:
            try:
                future.set_result(fn(api_server))
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(10)

    def calls(self, since: float = 0.0) -> list[Call]:
        return self.call(lambda a: [c for c in a.calls if c.at >= since])

    def interleave_write(self, gvr: tuple[str, str, str], namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.call(lambda a: a.interleave_write(gvr, namespace, name, patch))

    def client(self) -> client.ApiClient:
        conf = client.Configuration(host=self.url)
        api_client = client.ApiClient(conf)
        api_client.user_agent = TEST_AGENT
        return api_client


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                "users": [{"name": "kanari-controller", "user": {"token": "emulator-accepts-any-token"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kanari-controller"}}],
                "current-context": "kmock",
            }
        )
    )
    return path


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


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


class KServe:
    """The KServe controller's part, Serverless mode: revisions, traffic and the conditions it reports.

    Each change of the predictor template is a new Knative revision. With canaryTrafficPercent the newest
    revision gets that share and the last rolled-out one the rest; without it the newest takes all traffic
    once ready and becomes the rolled-out revision. Conditions are Argo CD's real healthy/progressing cases.
    """

    HEALTHY = UPSTREAM / "argocd-kserve-health" / "testdata" / "healthy.yaml"
    PROGRESSING = UPSTREAM / "argocd-kserve-health" / "testdata" / "progressing.yaml"

    def __init__(self, kube: Kube):
        self.kube = kube
        self.templates: dict[str, list[str]] = {}  # name -> predictor template per revision, in order

    def reconcile(self, name: str, ready: bool = True) -> dict[str, Any]:
        isvc = self.kube.isvc(name)
        assert isvc is not None, f"InferenceService {name} does not exist"
        predictor = dict(isvc["spec"]["predictor"])
        canary = predictor.pop("canaryTrafficPercent", None)
        template = json.dumps(predictor, sort_keys=True)
        revisions = self.templates.setdefault(name, [])
        if not revisions or revisions[-1] != template:
            revisions.append(template)
        latest = f"{name}-predictor-{len(revisions):05d}"
        previous = (
            (isvc.get("status") or {}).get("components", {}).get("predictor", {}).get("latestRolledoutRevision")
        )
        source = self.HEALTHY if ready else self.PROGRESSING
        status: dict[str, Any] = {
            "observedGeneration": isvc["metadata"]["generation"],
            "url": f"http://{name}.{self.kube.namespace}.example.com",
            "conditions": yaml.safe_load(source.read_text())["status"]["conditions"],
        }
        component: dict[str, Any] = {"latestCreatedRevision": latest, "url": status["url"]}
        if ready:
            component["latestReadyRevision"] = latest
        if canary is not None and previous and previous != latest:
            component["latestRolledoutRevision"] = previous
            component["traffic"] = [
                {"revisionName": previous, "percent": 100 - canary, "latestRevision": False},
                {"revisionName": latest, "percent": canary, "latestRevision": True, "tag": "latest"},
            ]
        elif ready:
            component["latestRolledoutRevision"] = latest
            if previous and previous != latest:
                component["previousRolledoutRevision"] = previous
            component["traffic"] = [{"revisionName": latest, "percent": 100, "latestRevision": True}]
        elif previous:
            component["latestRolledoutRevision"] = previous
        status["components"] = {"predictor": component}
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
