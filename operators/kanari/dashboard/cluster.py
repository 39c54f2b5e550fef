"""The dashboard's Kubernetes access, always with one user's credentials, through the official client.

Local mode uses the user's kubeconfig and context (exec plugins such as `aws eks get-token` included), so the
dashboard can read and do exactly what that user can with kubectl. In the cluster, each signed-in user brings
a token; the dashboard's own service account only reviews tokens. Watches run in threads (the client is
synchronous) and hand their events to the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from kanari.api.v1alpha1 import ACTION_ANNOTATION, GROUP, PLURAL, VERSION

log = logging.getLogger("kanari.dashboard")
MERGE_PATCH = "application/merge-patch+json"
WATCH_SECONDS = 50  # the server ends a watch after this; the thread starts the next one
REQUEST_TIMEOUT = (5, 65)


class ClusterError(Exception):
    """The API server said no or could not be reached; `status` is the HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(exc: Exception, what: str) -> ClusterError:
    if isinstance(exc, ApiException):
        reason = exc.reason or ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            reason = json.loads(exc.body or "{}").get("message", reason)
        return ClusterError(int(exc.status or 0), f"{what}: {reason}")
    return ClusterError(0, f"{what}: the Kubernetes API is unreachable ({type(exc).__name__})")


def kubeconfig_client(path: str | None, context: str | None) -> tuple[client.ApiClient, str, str]:
    """(client, default namespace, context name) from a kubeconfig, as kubectl would read it."""
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        if context and chosen is None:
            raise ClusterError(0, f"--context {context}: no such context in the kubeconfig")
        api = config.new_client_from_config(config_file=path, context=context)
    except (ConfigException, OSError) as exc:
        raise ClusterError(0, f"no Kubernetes connection: {exc}") from None
    ns = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return api, ns, (chosen or {}).get("name", "")


def token_client(base: client.Configuration, token: str) -> client.ApiClient:
    """A client that acts as the holder of `token` (in-cluster mode: a signed-in user)."""
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert, cfg.verify_ssl = base.host, base.ssl_ca_cert, base.verify_ssl
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


class Cluster:
    """Reads and acts as one identity. Every method is safe to call from the event loop."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.api = api
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.cluster_wide: bool | None = None  # learnt from the first list: may this user list everywhere?

    async def list(self) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> builtins.list[dict[str, Any]]:
        if self.cluster_wide is not False:
            try:
                out = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                self.cluster_wide = True
                return list(out.get("items") or [])
            except ApiException as exc:
                if exc.status != 403:
                    raise _error(exc, "list modeldeployments") from None
                self.cluster_wide = False  # allowed in its own namespace only, like `kubectl get md`
            except Exception as exc:
                raise _error(exc, "list modeldeployments") from None
        try:
            out = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        except Exception as exc:
            raise _error(exc, f"list modeldeployments in {self.namespace}") from None
        return list(out.get("items") or [])

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            try:
                return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
            except Exception as exc:
                raise _error(exc, f"modeldeployment {namespace}/{name}") from None

        return await asyncio.to_thread(get)

    async def events(self, namespace: str, name: str | None = None) -> builtins.list[dict[str, Any]]:
        # The server filters by object when it can; the views filter again (by uid) whatever it returns.
        selector = f"involvedObject.kind=ModelDeployment,involvedObject.name={name}" if name else ""

        def events() -> builtins.list[dict[str, Any]]:
            try:
                resp = self.core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False,
                                                       _request_timeout=REQUEST_TIMEOUT)
                return list(json.loads(resp.data).get("items") or [])
            except ApiException as exc:
                if exc.status == 403:
                    return []  # may read the rollout but not Events: show it without them
                raise _error(exc, f"events in {namespace}") from None
            except Exception as exc:
                raise _error(exc, f"events in {namespace}") from None

        return await asyncio.to_thread(events)

    async def act(self, namespace: str, name: str, action: str) -> str:
        """Request `action` the way `kanari promote|...` does: the action annotation, patched as this user."""
        value = f"{action}/{uuid.uuid4().hex[:8]}"
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"

        def patch() -> None:
            try:
                self.api.call_api(
                    path, "PATCH", header_params={"Content-Type": MERGE_PATCH, "Accept": "application/json"},
                    body={"metadata": {"annotations": {ACTION_ANNOTATION: value}}}, response_type="object",
                    auth_settings=["BearerToken"], _return_http_data_only=True, _request_timeout=REQUEST_TIMEOUT,
                )
            except Exception as exc:
                raise _error(exc, f"{action} modeldeployment {namespace}/{name}") from None

        await asyncio.to_thread(patch)
        return value

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api.close()


class Watcher:
    """Watches ModelDeployments and Events in a thread each, calling `emit(kind, type, object)` on the loop."""

    def __init__(self, cluster: Cluster, loop: asyncio.AbstractEventLoop,
                 emit: Callable[[str, str, dict[str, Any]], None]):
        self.cluster = cluster
        self.loop = loop
        self.emit = emit
        self.stopped = threading.Event()
        self._responses: list[Any] = []
        self.threads = [threading.Thread(target=self._run, args=(kind,), daemon=True, name=f"watch-{kind}")
                        for kind in ("md", "event")]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stopped.set()
        for resp in list(self._responses):
            # Shut the socket down under the reading thread: that ends its read at once. (Closing the response
            # from here would wait for the lock the blocked reader holds.)
            conn: Any = getattr(resp, "_connection", None) or getattr(resp, "connection", None)
            with contextlib.suppress(Exception):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _path(self, kind: str) -> str:
        c = self.cluster
        where = "" if c.cluster_wide is not False else f"/namespaces/{c.namespace}"
        if kind == "md":
            return f"/apis/{GROUP}/{VERSION}{where}/{PLURAL}"
        return f"/api/v1{where}/events"

    def _run(self, kind: str) -> None:
        delay = 0.5
        while not self.stopped.is_set():
            try:
                # The client's own call (auth, TLS, exec plugins), streamed; `watch=true` spelled as the API
                # documents it (the client's Watch helper sends "True", which not every server accepts).
                resp = self.cluster.api.call_api(
                    self._path(kind), "GET", query_params=[("watch", "true"), ("timeoutSeconds", WATCH_SECONDS)],
                    header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                    _preload_content=False, _return_http_data_only=True, _request_timeout=REQUEST_TIMEOUT,
                )
                self._responses.append(resp)
                try:
                    for line in iter_resp_lines(resp):
                        if self.stopped.is_set():
                            break
                        ev = json.loads(line)
                        obj = ev.get("object") if isinstance(ev, dict) else None
                        if isinstance(obj, dict) and ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            self.loop.call_soon_threadsafe(self.emit, kind, str(ev["type"]), obj)
                        elif isinstance(obj, dict) and ev.get("type") == "ERROR":
                            break  # e.g. 410 Gone: watch again from now
                finally:
                    self._responses.remove(resp)
                    resp.release_conn()
                delay = 0.5
                continue  # the server ended the watch (timeoutSeconds): the next one replays current state
            except ApiException as exc:
                if exc.status == 403 and self.cluster.cluster_wide is not False:
                    self.cluster.cluster_wide = False
                    continue
                log.warning("watch %s: API error %s; retrying in %.1fs", kind, exc.status, delay)
            except Exception as exc:  # a dropped connection: watch again, after a pause that grows
                if self.stopped.is_set():
                    return
                log.warning("watch %s interrupted (%s); retrying in %.1fs", kind, type(exc).__name__, delay)
            self.stopped.wait(delay)
            delay = min(delay * 2, 10.0)
