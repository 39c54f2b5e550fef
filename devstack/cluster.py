"""The cluster stand-in: a Kubernetes API (kmock's KubernetesEmulator) on loopback, for the embedded defaults.

kmock stores objects and serves list/watch/get/create/patch/delete, but merges JSON naively and keeps no
API-server bookkeeping. A controller that is correct against a real API server relies on some of it, so
`ClusterEmulator` adds the parts Kanari's operator and the KServe stand-in depend on:

- metadata.name from generateName (kopf's Events need it);
- metadata.uid, creationTimestamp, resourceVersion (bumped on every write) and generation (bumped when
  anything but metadata/status changes), as the API server sets them;
- the status subresource: a patch of the object ignores `status`, a patch of `/status` changes only
  `status`, so a controller writing status can never clobber a user's spec and vice versa;
- optimistic concurrency: a patch that carries metadata.resourceVersion must match the stored one (409).

It validates no schemas: what the operator writes is validated by the tests against the upstream CRDs.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import logging
import secrets
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kanari import mergepatch
from kanari.api.conditions import now_iso
from kmock import KubernetesEmulator, KubernetesError
from typing_extensions import override

log = logging.getLogger("devstack.cluster")

# The kinds the operator, the KServe stand-in and the prometheus-operator stand-in use, besides the bundled
# core kinds (namespaces, events, ...). Verbs and the status subresource are what kopf needs to start watchers.
VERBS = ["list", "watch", "get", "create", "patch", "update", "delete"]
CUSTOM_RESOURCES: dict[str, dict[str, Any]] = {
    "kanari.dev/v1alpha1/modeldeployments": {
        "kind": "ModelDeployment", "singular": "modeldeployment", "namespaced": True,
        "shortnames": ["md"], "verbs": VERBS, "subresources": ["status"],
    },
    "serving.kserve.io/v1beta1/inferenceservices": {
        "kind": "InferenceService", "singular": "inferenceservice", "namespaced": True,
        "shortnames": ["isvc"], "verbs": VERBS, "subresources": ["status"],
    },
    "monitoring.coreos.com/v1/prometheusrules": {
        "kind": "PrometheusRule", "singular": "prometheusrule", "namespaced": True,
        "verbs": VERBS, "subresources": [],
    },
    "kopf.dev/v1/kopfpeerings": {
        "kind": "KopfPeering", "singular": "kopfpeering", "namespaced": True, "verbs": VERBS, "subresources": [],
    },
}


REQUEST_LOG = 40
HISTORY = 4


class Conflict(KubernetesError):
    pass


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


@attrs.define(kw_only=True)
class ClusterEmulator(KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _inflight: dict[int, kmock.Request] = attrs.field(factory=dict, init=False)

    def declare(self, resources: dict[str, dict[str, Any]] = CUSTOM_RESOURCES) -> None:
        self.resources.load_bundled()
        for key, info in resources.items():
            self.resources[key] = kmock.ResourceInfo(**info)

    @override
    async def _serve_list(self, request: kmock.Request) -> Any:
        """kmock's list, with the apiVersion and kind a real list carries (kubectl insists on them)."""
        payload: dict[str, Any] = await super()._serve_list(request)  # type: ignore[assignment]
        resource = request.resource
        assert resource is not None
        info = self.resources.get(resource, None)
        kind = getattr(info, "kind", None) or "Unknown"
        group_version = f"{resource.group}/{resource.version}" if resource.group else str(resource.version)
        return {"apiVersion": group_version, "kind": f"{kind}List", **payload}

    def _has_status(self, resource: Any) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def _current(self, resource: Any, namespace: str | None, name: str | None) -> dict[str, Any] | None:
        key: Any = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    @override
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self._inflight[id(request)] = request
        try:
            return await self._handle_api(request)
        finally:
            del self._inflight[id(request)]
            self._trim_log()

    def _trim_log(self) -> None:
        """kmock keeps every request and scans that log for each new one (it serves test assertions): a
        long-running API would slow down quadratically. Requests still being served stay (kmock matches them
        by identity); of the rest, only the latest few."""
        if len(self._requests) <= REQUEST_LOG:
            return
        live = {id(r) for r in self._inflight.values()}
        keep = REQUEST_LOG // 2
        self._requests[:] = [r for r in self._requests[:-keep] if id(r) in live] + self._requests[-keep:]

    async def _handle_api(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.method == kmock.method.PUT and request.name:
            async with self._write_lock:
                try:
                    return aiohttp.web.json_response(await self._replace(request))
                except KubernetesError as exc:
                    return await self._render_error(exc)
        if request.resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            return await super()._handle(request)
        # Writes are serialised so that the bookkeeping below sees the state the write applies to.
        async with self._write_lock:
            try:
                data = self._prepare(request)
            except KubernetesError as exc:
                return await self._render_error(exc)
            prepared = attrs.evolve(request, data=data)
            # kmock matches reactions against its request log by identity: log the request it applies.
            at = next(i for i in range(len(self._requests) - 1, -1, -1) if self._requests[i] is request)
            self._requests[at] = self._inflight[id(request)] = prepared
            try:
                return await super()._handle(prepared)
            finally:
                name = request.name or ((data or {}).get("metadata") or {}).get("name")
                self._trim_history((request.resource, request.namespace, name))

    def _trim_history(self, key: Any) -> None:
        """kmock keeps every version of every object; the API serves only the last one."""
        if key in self.objects and len(self.objects[key].history) > HISTORY:
            del self.objects[key].history[:-HISTORY]

    async def _replace(self, request: kmock.Request) -> dict[str, Any]:
        """PUT: replace the object (kmock only knows merge patches); status survives unless PUT to /status."""
        resource: Any = request.resource
        key: Any = (resource, request.namespace, request.name)
        current = self._current(*key)
        if current is None:
            raise KubernetesError(status=404, reason="NotFound", message=f"{request.name!r} not found")
        body = request.data if isinstance(request.data, dict) else {}
        expected = (body.get("metadata") or {}).get("resourceVersion")
        stored = current["metadata"].get("resourceVersion")
        if expected is not None and str(expected) != str(stored):
            raise Conflict(status=409, reason="Conflict", message=f"{request.name!r} has been modified; "
                           "apply your changes to the latest version and try again")
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        for kept in ("uid", "creationTimestamp", "generation", "name", "namespace"):
            if kept in current["metadata"]:
                meta[kept] = current["metadata"][kept]
        if self._has_status(request.resource):
            if request.subresource == "status":
                new = {**current, "status": body.get("status")}
                meta = new["metadata"] = dict(current["metadata"])
            elif "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        meta["resourceVersion"] = str(next(self._versions))
        if request.subresource != "status" and _without(new, "metadata", "status") != _without(current, "metadata", "status"):
            meta["generation"] = int(current["metadata"].get("generation") or 1) + 1
        self.objects[key].create(new)  # a new version of the object, as a whole
        self._trim_history(key)
        await self._buses[resource].put({"type": "MODIFIED", "object": self.objects[key].raw})
        return self.objects[key].raw

    def _prepare(self, request: kmock.Request) -> Any:
        data = request.data
        if not isinstance(data, dict):
            return data  # JSON patches (lists) pass through; kmock applies them as they are
        version = str(next(self._versions))
        if request.action == kmock.action.CREATE:
            obj = copy.deepcopy(data)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)}"
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), resourceVersion=version, generation=1)
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            if self._has_status(request.resource):
                obj.pop("status", None)
            return obj
        current = self._current(request.resource, request.namespace, request.name)
        if current is None:
            return data  # kmock answers 404
        patch = copy.deepcopy(data)
        meta = patch.setdefault("metadata", {}) if isinstance(patch.get("metadata", {}), dict) else {}
        expected = meta.pop("resourceVersion", None)
        stored = (current.get("metadata") or {}).get("resourceVersion")
        if expected is not None and str(expected) != str(stored):
            raise Conflict(
                status=409, reason="Conflict",
                message=f"Operation cannot be fulfilled on {getattr(request.resource, 'plural', '')} {request.name!r}: the object "
                "has been modified; please apply your changes to the latest version and try again",
            )
        if self._has_status(request.resource):
            if request.subresource == "status":
                patch = {"status": patch.get("status")} if "status" in patch else {}
                meta = patch.setdefault("metadata", {})
            else:
                patch.pop("status", None)
        for immutable in ("uid", "creationTimestamp", "generation"):
            meta.pop(immutable, None)
        if not meta:
            patch.pop("metadata", None)
        after = mergepatch.apply(current, patch)
        if after == current:
            return patch  # a no-op write changes nothing, not even the resourceVersion
        patch.setdefault("metadata", {})["resourceVersion"] = version
        if request.subresource != "status" and _without(after, "metadata", "status") != _without(
            current, "metadata", "status"
        ):
            patch["metadata"]["generation"] = int((current.get("metadata") or {}).get("generation") or 1) + 1
        return patch


@dataclass
class RunningCluster:
    emulator: ClusterEmulator
    url: str
    kubeconfig: Path
    runner: aiohttp.web.BaseRunner

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.emulator.__aexit__(None, None, None)


def kubeconfig(url: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kanari-local", "cluster": {"server": url}}],
        "users": [{"name": "kanari-local", "user": {"token": "kanari-local"}}],
        "contexts": [{"name": "kanari-local", "context": {"cluster": "kanari-local", "user": "kanari-local",
                                                          "namespace": namespace}}],
        "current-context": "kanari-local",
    }


async def start_cluster(kubeconfig_path: Path, port: int, namespace: str = "default") -> RunningCluster:
    """Serve the emulator on 127.0.0.1:port and write a kubeconfig pointing at it."""
    emulator = ClusterEmulator()
    emulator.declare()
    await emulator.__aenter__()
    # Watches never end by themselves: on shutdown they are cut after a second, not waited for.
    runner = aiohttp.web.ServerRunner(aiohttp.web.Server(emulator), shutdown_timeout=1.0)
    await runner.setup()
    try:
        await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError as exc:
        await runner.cleanup()
        await emulator.__aexit__(None, None, None)
        raise RuntimeError(f"the cluster stand-in cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    url = f"http://127.0.0.1:{port}"
    kubeconfig_path.parent.mkdir(parents=True, exist_ok=True)
    kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(url, namespace)))
    return RunningCluster(emulator, url, kubeconfig_path, runner)


async def serve(args: argparse.Namespace) -> None:
    """The cluster stand-in process: API emulator, router, KServe and prometheus-operator stand-ins."""
    from devstack.kserve_standin import KServeStandIn
    from devstack.kubeapi import KubeApi
    from devstack.router import Router
    from devstack.rule_sync import RuleSync

    workdir = Path(args.workdir)
    cluster = await start_cluster(workdir / "kubeconfig", args.port, args.namespace)
    router = Router()
    runner = aiohttp.web.AppRunner(router.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    api = KubeApi(cluster.url)
    try:
        try:
            await aiohttp.web.TCPSite(runner, "127.0.0.1", args.router_port).start()
        except OSError as exc:
            raise RuntimeError(f"the router cannot listen on 127.0.0.1:{args.router_port}: {exc.strerror}") from None
        router_url = f"http://127.0.0.1:{args.router_port}"
        kserve = KServeStandIn(api, router, workdir, router_url, args.namespace, idle_grace=args.idle_grace)
        tasks.append(asyncio.create_task(kserve.run()))
        if args.prometheus_url:
            tasks.append(asyncio.create_task(RuleSync(api, Path(args.rules_dir), args.prometheus_url, args.namespace).run()))
        log.info("cluster stand-in: API %s, router %s", cluster.url, router_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        done = asyncio.create_task(stop.wait())
        finished, _ = await asyncio.wait([done, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            if task is not done and task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await runner.cleanup()
        await cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="Kubernetes API port (loopback)")
    parser.add_argument("--router-port", type=int, required=True, help="inference router port (loopback)")
    parser.add_argument("--workdir", required=True, help="kubeconfig, downloaded models, predictor logs")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--prometheus-url", help="reload this Prometheus when PrometheusRules change")
    parser.add_argument("--rules-dir", help="where PrometheusRule groups are written (Prometheus rule_files)")
    parser.add_argument("--idle-grace", type=float, default=15.0, help="seconds before a revision without traffic stops")
    args = parser.parse_args(argv)
    if args.prometheus_url and not args.rules_dir:
        parser.error("--rules-dir is needed with --prometheus-url")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(args))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
