"""The one Kubernetes API stand-in: kmock's KubernetesEmulator, made to keep the API-server promises Kanari's
operator relies on, for the demo (devstack.cluster serves it), the tests and the benchmarks.

What kmock's emulator does not do and a real API server does (so a test could not see the difference):
uid, creationTimestamp, resourceVersion and generation on objects; generateName; the status subresource
(a status write changes only .status, a main-resource write never .status, generation moves only with
the spec); optimistic concurrency (a merge patch or PUT carrying a stale metadata.resourceVersion is a 409);
PUT replaces the object; lists carry apiVersion and kind (kubectl insists). Every request is recorded as a
`Call` (what RBAC and write counting need), and kmock's own request log and object history are kept short,
so a long demo or a thousand-object benchmark stays fast.

Still missing on purpose: the garbage collector (tests look at ownerReferences instead), validation (tests
validate what the operator wrote against the upstream CRD schemas) and server-side apply (the controller
writes merge patches, see kanari.controller.kube.Kube.apply).

kmock's public API is used (KubernetesEmulator, Server, ResourceInfo, KubernetesError); the emulator's
request handlers (_handle, _serve_*) are overridden here and only here: the one documented wrapper.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import itertools
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import yaml
from kanari import mergepatch
from kanari.api import v1alpha1 as api
from kubernetes import client

TEST_AGENT = "kanari-operator-tests"  # the tests' own API calls carry it; everything else is the operator's
MD = (api.GROUP, api.VERSION, api.PLURAL)
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
PROMETHEUS_RULE = ("monitoring.coreos.com", "v1", "prometheusrules")
VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch", "DELETE": "delete"}
HISTORY = 4  # object versions kmock keeps (the API serves only the last)
T = TypeVar("T")

# The kinds the operator, the KServe stand-in and the prometheus-operator stand-in use, besides the bundled
# core kinds, when no CRD files are given (the demo: it has no upstream CRDs to read).
RESOURCE_VERBS = ["list", "watch", "get", "create", "patch", "update", "delete"]
CUSTOM_RESOURCES: dict[str, dict[str, Any]] = {
    "kanari.dev/v1alpha1/modeldeployments": {
        "kind": "ModelDeployment", "singular": "modeldeployment", "namespaced": True,
        "shortnames": ["md"], "verbs": RESOURCE_VERBS, "subresources": ["status"],
    },
    "serving.kserve.io/v1beta1/inferenceservices": {
        "kind": "InferenceService", "singular": "inferenceservice", "namespaced": True,
        "shortnames": ["isvc"], "verbs": RESOURCE_VERBS, "subresources": ["status"],
    },
    "monitoring.coreos.com/v1/prometheusrules": {
        "kind": "PrometheusRule", "singular": "prometheusrule", "namespaced": True,
        "verbs": RESOURCE_VERBS, "subresources": [],
    },
    # Karpenter's kinds, for the demo's CapacityPending phase (simulated NodePools; nothing provisions nodes).
    "karpenter.sh/v1/nodepools": {
        "kind": "NodePool", "singular": "nodepool", "namespaced": False, "verbs": RESOURCE_VERBS,
        "subresources": ["status"],
    },
    "karpenter.sh/v1/nodeclaims": {
        "kind": "NodeClaim", "singular": "nodeclaim", "namespaced": False, "verbs": RESOURCE_VERBS,
        "subresources": ["status"],
    },
    "kopf.dev/v1/kopfpeerings": {
        "kind": "KopfPeering", "singular": "kopfpeering", "namespaced": True, "verbs": RESOURCE_VERBS,
        "subresources": [],
    },
}


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
    # Every request as a Call (tests, benchmarks). The demo runs for minutes and records nothing.
    record: bool = attrs.field(default=True)

    def declare(self, crd_files: Iterable[Path] = (), resources: dict[str, dict[str, Any]] | None = None) -> None:
        """The bundled core kinds, plus the CRDs in `crd_files`, or else the demo's kinds (CUSTOM_RESOURCES)."""
        self.resources.load_bundled()
        files = tuple(crd_files)
        for path in files:
            self.declare_crd(path)
        for key, info in (resources if resources is not None else ({} if files else CUSTOM_RESOURCES)).items():
            self.resources[key] = kmock.ResourceInfo(**info)
            if "status" in info.get("subresources", []):
                group, version, plural = key.split("/")
                self._status_subresource.add((group, version, plural))

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
        if res is not None and request.method == kmock.method.PUT and request.name:
            async with self._writes:
                try:
                    replaced = await self._replace(request)
                except kmock.KubernetesError as exc:
                    self._record(request, exc.status)
                    raise
                self._record(request, 200)
                return aiohttp.web.json_response(replaced)
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
            try:
                return await super()._handle(request)
            finally:
                data = request.data if isinstance(request.data, dict) else {}
                self._trim_history((res, request.namespace, request.name or (data.get("metadata") or {}).get("name")))

    def _trim_history(self, key: Any) -> None:
        """kmock keeps every version of every object; the API serves only the last one."""
        if key in self.objects and len(self.objects[key].history) > HISTORY:
            del self.objects[key].history[:-HISTORY]

    async def _serve_list(self, request: kmock.Request) -> Any:
        """kmock's list, with the apiVersion and kind a real list carries (kubectl insists on them)."""
        payload: dict[str, Any] = await super()._serve_list(request)  # type: ignore[assignment]
        resource = request.resource
        assert resource is not None
        info = self.resources.get(resource, None)
        kind = getattr(info, "kind", None) or "Unknown"
        group_version = f"{resource.group}/{resource.version}" if resource.group else str(resource.version)
        return {"apiVersion": group_version, "kind": f"{kind}List", **payload}

    async def _replace(self, request: kmock.Request) -> dict[str, Any]:
        """PUT: replace the object (kmock only knows merge patches); status survives unless PUT to /status."""
        res = request.resource
        assert res is not None
        gvr = (res.group, res.version, res.plural)
        current = self._current(request, request.name)
        if current is None:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.name!r} not found")
        body = request.data if isinstance(request.data, dict) else {}
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected is not None and str(expected) != str(current["metadata"].get("resourceVersion")):
            raise kmock.KubernetesError(status=409, reason="Conflict", message=f"{request.name!r} has been modified; "
                                        "apply your changes to the latest version and try again")
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        for kept in ("uid", "creationTimestamp", "generation", "name", "namespace"):
            if kept in current["metadata"]:
                meta[kept] = current["metadata"][kept]
        if gvr in self._status_subresource:
            if request.subresource == "status":
                new = {**current, "status": body.get("status")}
                meta = new["metadata"] = dict(current["metadata"])
            elif "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        meta["resourceVersion"] = str(next(self._counter))
        if request.subresource != "status" and {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in current.items() if k not in ("metadata", "status")
        }:
            meta["generation"] = int(current["metadata"].get("generation") or 1) + 1
        key: Any = (request.resource, request.namespace, request.name)
        self.objects[key].create(new)  # a new version of the object, as a whole
        self._trim_history(key)
        resource: Any = request.resource
        await self._buses[resource].put({"type": "MODIFIED", "object": self.objects[key].raw})
        return dict(self.objects[key].raw)

    def _record(self, request: kmock.Request, status: int) -> None:
        if not self.record:
            return
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
        key: Any = (request.resource, namespace, name)
        try:
            return self.objects[key]
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
        key: Any = (request.resource, request.namespace, name)
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
            obj = self.objects[request.resource, request.namespace, request.name]  # type: ignore[index]
            obj.patch(mergepatch.apply(interleaved, {"metadata": {"resourceVersion": str(next(self._counter))}}))
        current = self._current(request, request.name)
        if current is None:
            return  # kmock answers 404
        cur_meta = current.get("metadata") or {}
        sent_rv = (data.get("metadata") or {}).get("resourceVersion")
        if sent_rv is not None and str(sent_rv) != str(cur_meta.get("resourceVersion")):
            raise kmock.KubernetesError(
                status=409, reason="Conflict",
                message=f'Operation cannot be fulfilled on {res.plural}.{res.group} "{request.name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
                details={"name": request.name, "group": res.group, "kind": res.plural},
            )
        if isinstance(data.get("metadata"), dict):
            for immutable in ("uid", "creationTimestamp", "generation"):  # the server's, never the client's
                data["metadata"].pop(immutable, None)
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

    def __init__(self, workdir: Path, crds: Iterable[Path] = ()):
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
        apiserver.declare(crd_files=self.crds)
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


def kubeconfig(url: str, namespace: str | None = None, name: str = "kanari-local") -> dict[str, Any]:
    """A kubeconfig for the stand-in: any token is accepted; the context's namespace is the default one."""
    context: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": name, "user": {"token": "the-stand-in-accepts-any-token"}}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }


def write_kubeconfig(path: Path, url: str, namespace: str | None = None) -> Path:
    """The one kubeconfig writer (demo, tests, benchmarks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig(url, namespace)))
    return path
