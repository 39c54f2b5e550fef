"""Which models the drift monitor takes events for, and with which baseline: only ModelDeployments that
exist with monitoring enabled, each event bound to a revision the ModelDeployment declares, the baseline
derived from its spec and status exactly as the controller derives it for the InferenceService.

Nothing an event says can add a model, choose a baseline or reset another model's window: a caller only
names (namespace, model, endpoint) and, among the revisions the ModelDeployment serves, which one.

`ModelRegistry` holds the bindings; `KubernetesWatcher` keeps it in step with the API server (list, then
watch, relisting on expiry and retrying with backoff when the API server cannot be reached), and
`from_static_file` fills it from the monitor's own config file for installs without the operator.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kanari.api.duration import parse_duration
from kanari.api.v1alpha1 import GROUP, PLURAL, VERSION, ModelDeployment, ModelRef
from kanari.controller.model_source import baseline_uri
from kanari.monitor.baseline_store import BaselineRef, normalise_uri
from kanari.monitor.groundtruth import GroundTruthConfig
from kanari.monitor.replay import DEFAULT_DOMAINS, PreviewTarget, preview_target

log = logging.getLogger("kanari.monitor.registry")

WATCH_SECONDS = 300
REQUEST_TIMEOUT = 30.0
BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class Binding:
    """What an accepted event is counted under: the model version the ModelDeployment declares (the
    window's `revision` label) and the baseline it is compared with."""

    version: str
    ref: BaselineRef
    window_size: int | None = None
    calibration_uri: str | None = None  # CBPE's calibration for this model version (kanari:calibration-uri)
    calibration_sha256: str | None = None  # and the digest it was registered with (kanari:calibration-sha256)


@dataclass(frozen=True)
class MonitoredModel:
    """One ModelDeployment with monitoring on, reduced to what binding an event needs."""

    stable: Binding | None
    canary: Binding | None
    by_revision: dict[str, Binding]
    raw_deployment: bool
    ground_truth: GroundTruthConfig | None = None  # labels are taken for it (spec.monitoring.groundTruth)
    preview: PreviewTarget | None = None  # a BlueGreen preview in progress, to be fed replayed requests

    def bind(self, endpoint: str, revision: str | None) -> Binding | None:
        # RawDeployment tells stable from canary by endpoint (the revision annotation is the
        # InferenceService's, the same on both); Serverless canaries log under `default` and differ by
        # the revision annotation their Knative revision carries.
        if endpoint == "canary":
            return self.canary
        if not self.raw_deployment and revision and revision in self.by_revision:
            return self.by_revision[revision]
        return self.stable


def _binding(md: ModelDeployment, ref: ModelRef | None) -> Binding | None:
    if ref is None:
        return None
    uri = baseline_uri(md.spec, ref, None)
    if not uri:
        return None
    assert md.spec.monitoring is not None
    return Binding(ref.monitor_revision, BaselineRef(normalise_uri(uri), ref.version),
                   md.spec.monitoring.drift.windowSize, ref.calibrationUri, ref.calibrationSha256)


def monitored(obj: dict[str, Any], preview_domains: tuple[str, ...] | None = DEFAULT_DOMAINS) -> MonitoredModel | None:
    """The binding of a ModelDeployment object as the API server returns it; None when it is not
    monitored, not serving yet, or not a valid ModelDeployment."""
    try:
        md = ModelDeployment.model_validate(obj)
    except ValidationError:
        return None
    mon = md.spec.monitoring
    if mon is None or not mon.enabled:
        return None
    stable = _binding(md, md.status.stableModel)
    canary = _binding(md, md.status.canaryModel)
    if stable is None and canary is None:
        return None
    by_revision = {
        r.revision: b for r, b in ((md.status.stableModel, stable), (md.status.canaryModel, canary)) if r and b
    }
    gt = mon.groundTruth
    truth = GroundTruthConfig(gt.task, gt.threshold, parse_duration(gt.ttl)) if gt is not None else None
    return MonitoredModel(stable or canary, canary, by_revision, md.spec.serving.deploymentMode == "RawDeployment",
                          truth, preview_target(md, preview_domains))


class ModelRegistry:
    """The monitored models by (namespace, name). Written by the watcher thread, read on the event loop."""

    def __init__(self, preview_domains: tuple[str, ...] | None = DEFAULT_DOMAINS) -> None:
        # The Knative domains a preview's tag URL may be in (None: any host, for devstack's path-based tag URLs).
        self.preview_domains = preview_domains
        self._models: dict[tuple[str, str], MonitoredModel] = {}
        self._lock = threading.Lock()
        # The namespaces (None: all) whose full list must be read before the registry is complete.
        self._expected: set[str | None] = {None}
        self._listed: set[str | None] = set()

    def expect(self, namespaces: Iterable[str | None]) -> None:
        """The namespaces the watchers list: `synced` waits for every one of them."""
        self._expected = set(namespaces) or {None}

    @property
    def synced(self) -> bool:
        """True once every watched namespace has been listed: until then a model missing here may exist (and its
        ground-truth state, loaded from disk, must not be dropped as unmonitored)."""
        return self._expected <= self._listed

    @synced.setter
    def synced(self, value: bool) -> None:
        self._listed = set(self._expected) if value else set()

    def lookup(self, namespace: str, model: str) -> MonitoredModel | None:
        return self._models.get((namespace, model))

    def bind(self, namespace: str, model: str, endpoint: str, revision: str | None) -> Binding | None:
        found = self.lookup(namespace, model)
        return found.bind(endpoint, revision) if found else None

    def previews(self) -> list[PreviewTarget]:
        return [m.preview for m in list(self._models.values()) if m.preview is not None]

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._models

    def __len__(self) -> int:
        return len(self._models)

    def put(self, namespace: str, name: str, model: MonitoredModel | None) -> None:
        with self._lock:
            if model is None:
                self._models.pop((namespace, name), None)
            else:
                self._models[(namespace, name)] = model

    def update(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self.put(str(meta.get("namespace", "")), str(meta.get("name", "")), monitored(obj, self.preview_domains))

    def replace(self, objects: Iterable[dict[str, Any]], namespace: str | None = None) -> None:
        """A full list: of one namespace (one watcher per watched namespace), or of all (None)."""
        fresh: dict[tuple[str, str], MonitoredModel] = {}
        for obj in objects:
            meta = obj.get("metadata") or {}
            m = monitored(obj, self.preview_domains)
            if m is not None:
                fresh[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = m
        with self._lock:
            kept = {k: v for k, v in self._models.items() if namespace is not None and k[0] != namespace}
            self._models = {**kept, **fresh}
            self._listed.add(namespace)


def from_static_file(path: str | Path) -> ModelRegistry:
    """Bindings from the monitor's own config (for installs without the operator):

        baselines:
          ml-prod/fraud-scorer: s3://bucket/fraud/baseline
          ml-prod/churn: {uri: file:///data/churn/baseline, version: "3"}
          ml-prod/fraud: {uri: s3://bucket/fraud/baseline, version: "7", groundTruth: {task: binary, ttl: 24h}}

    groundTruth takes the fields of a ModelDeployment's spec.monitoring.groundTruth (labels are then taken on
    POST /v1/labels/<namespace>/<name> and from the S3 label drop).
    """
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: unreadable: {exc}") from None
    raw = doc.get("baselines", {}) if isinstance(doc, dict) else None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: baselines: expected a mapping of namespace/model to a URI")
    registry = ModelRegistry()
    for key, value in raw.items():
        if not isinstance(key, str) or key.count("/") != 1:
            raise ValueError(f"{path}: baselines.{key}: keys are namespace/model")
        truth = None
        if isinstance(value, str):
            uri, version = value, ""
        elif isinstance(value, dict) and isinstance(value.get("uri"), str):
            uri, version = value["uri"], str(value.get("version", ""))
            if value.get("groundTruth") is not None:
                truth = _ground_truth(value["groundTruth"], f"{path}: baselines.{key}.groundTruth")
        else:
            raise ValueError(f"{path}: baselines.{key}: expected a URI or {{uri, version, groundTruth}}")
        if not uri.startswith(("s3://", "file://")):
            raise ValueError(f"{path}: baselines.{key}: {uri!r} is not an s3:// or file:// URI")
        binding = Binding(version or "unversioned", BaselineRef(normalise_uri(uri), version))
        namespace, name = key.split("/")
        registry.put(namespace, name, MonitoredModel(binding, None, {}, raw_deployment=True, ground_truth=truth))
    registry.synced = True
    return registry


def _ground_truth(raw: Any, where: str) -> GroundTruthConfig:
    from kanari.api.v1alpha1 import GroundTruthSpec

    try:
        spec = GroundTruthSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}{'.' + field if field else ''}: {first['msg']}") from None
    return GroundTruthConfig(spec.task, spec.threshold, parse_duration(spec.ttl))


class KubernetesWatcher:
    """Keeps a ModelRegistry equal to the cluster's ModelDeployments: list, then watch from the list's
    resourceVersion; on 410 Gone or any error, back off and list again. Runs in a daemon thread."""

    def __init__(
        self,
        registry: ModelRegistry,
        api_factory: Callable[[], Any],
        namespace: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.registry = registry
        self._api_factory = api_factory
        self.namespace = namespace
        self._sleep = sleep
        self._stop = threading.Event()
        self.errors = 0
        self.last_error = ""

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="modeldeployment-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _list_call(self, api: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if self.namespace:
            return api.list_namespaced_custom_object, (GROUP, VERSION, self.namespace, PLURAL)
        return api.list_cluster_custom_object, (GROUP, VERSION, PLURAL)

    def sync_once(self, api: Any) -> str:
        """One full list; returns the resourceVersion to watch from."""
        fn, args = self._list_call(api)
        doc = fn(*args, _request_timeout=REQUEST_TIMEOUT)
        self.registry.replace(doc.get("items") or [], self.namespace)
        return str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def _run(self) -> None:
        from kubernetes import watch
        from urllib3.exceptions import ReadTimeoutError

        backoff = 1.0
        api = None
        while not self._stop.is_set():
            try:
                if api is None:
                    api = self._api_factory()
                # Each round lists (a full resync) and then watches until the server ends the watch.
                rv = self.sync_once(api)
                backoff = 1.0
                fn, args = self._list_call(api)

                def watch_call(*a: Any, _fn: Any = fn, **kw: Any) -> Any:
                    # The client sends watch=True; Go's ParseBool takes it, stricter servers (kmock) want "true".
                    return _fn(*a, **{**kw, "watch": "true"})

                w = watch.Watch()
                for event in w.stream(watch_call, *args, resource_version=rv, timeout_seconds=WATCH_SECONDS,
                                      _request_timeout=WATCH_SECONDS + REQUEST_TIMEOUT):
                    if self._stop.is_set():
                        w.stop()
                        return
                    self._apply(event)
            except ReadTimeoutError:
                continue  # a watch outliving its timeout: list again
            except Exception as exc:  # noqa: BLE001 - any failure: keep the last registry, back off, relist
                self.errors += 1
                self.last_error = type(exc).__name__
                if getattr(exc, "status", None) == 410:
                    continue  # the resourceVersion expired: list again at once
                log.warning("watching ModelDeployments failed (%s); retrying in %.0fs", self.last_error, backoff)
                self._stop.wait(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, BACKOFF_MAX)
                if getattr(exc, "status", None) is None:
                    api = None  # e.g. the kubeconfig did not exist yet: load it again

    def _apply(self, event: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("reason")))
        if event.get("type") == "DELETED":
            meta = obj.get("metadata") or {}
            self.registry.put(str(meta.get("namespace", "")), str(meta.get("name", "")), None)
        elif event.get("type") in ("ADDED", "MODIFIED"):
            self.registry.update(obj)


def kubernetes_api() -> Any:
    """The CustomObjectsApi through the project's one client loader."""
    from kubernetes import client

    from kanari.controller.kube import load_config

    load_config()
    return client.CustomObjectsApi()
