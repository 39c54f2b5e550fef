"""The drift monitor: receives KServe payload-logger CloudEvents, keeps a sliding window per
InferenceService, endpoint (default = stable, canary) and model version, and exports drift as
Prometheus metrics.

Run it as `python -m kanari.monitor.server --port 8080` (or `kanari drift monitor`). KServe posts
events to `/`; Prometheus scrapes `/metrics`.

Who may feed it: events are taken only for ModelDeployments that exist with monitoring enabled (see
registry.py); the baseline, the model version and the window size come from the ModelDeployment, never
from the event. Anything else gets a 4xx, is counted in kanari_drift_events_total{outcome}, and leaves no
state behind: unknown names create no window, no metric series and no cache entry.

Memory is bounded whatever the load: a window is a ring of sketches, at most `max_models` windows are
tracked (least recently used dropped; only monitored models get one), the map that pairs a request with
its response (by `ce-id`) is bounded in entries and bytes, baselines and failed fetches are LRU caches,
an event holds at most `max_rows_per_event` rows, and a body larger than `max_event_bytes` is refused
(413) however it is sent. The bounds are exported as kanari_drift_limit{kind}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# scipy's first import takes about a second; done here, at start, not inside the first evaluation where
# it would stall the event loop (and /healthz) for everyone.
import scipy.spatial.distance  # noqa: F401
import scipy.stats  # noqa: F401
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from kanari.drift.compare import drift_values
from kanari.drift.methods import (
    CATEGORICAL_METHODS,
    NUMERIC_METHODS,
    P_VALUE_METHODS,
    categorical_drift,
    numeric_drift,
)
from kanari.drift.model_monitor import Baseline
from kanari.drift.profile import Feature, Profile
from kanari.drift.window import SlidingWindow
from kanari.monitor.baseline_store import BaselineCache, BaselineRef, BaselineUnavailable
from kanari.monitor.groundtruth import CalibrationRef, GroundTruth, load_calibration
from kanari.monitor.joinstate import JoinState, StateError
from kanari.monitor.labeldrop import LabelDrop, LabelFile
from kanari.monitor.payload import (
    REVISION_ANNOTATION,
    Arrays,
    LoggedEvent,
    MalformedEvent,
    RowLimit,
    Rows,
    parse_event,
    request_rows,
    response_values,
    to_arrays,
)
from kanari.monitor.recent import REPLAY_ID_PREFIX, RecentRequests
from kanari.monitor.registry import (
    Binding,
    KubernetesWatcher,
    ModelRegistry,
    from_static_file,
    kubernetes_api,
)
from kanari.monitor.replay import (
    DEFAULT_DOMAINS,
    PreviewTarget,
    Replayer,
    aiohttp_sender,
    kubernetes_reporter,
)
from kanari.monitor.settings import API_TOKEN_ENV, MonitorSettings, monitor_arguments
from kanari.monitor.sharding import FORWARDED_HEADER, Shards, ShardSettings
from kanari.registry_metadata import CalibrationError, CalibrationUnavailable
from kanari.webguard import BodyRejected, bearer_token, loads, read_body, ssl_context
from kanari.webguard import run_app as serve

log = logging.getLogger("kanari.monitor.server")

GAUGE_METHODS = tuple(m for m in dict.fromkeys(NUMERIC_METHODS + CATEGORICAL_METHODS) if m not in P_VALUE_METHODS)
DIVERGENCE_METHODS = ("psi", "js", "linf")
PREDICTION = "prediction"
UNVERSIONED = "unversioned"
MAX_RECENT_LIMIT = 1000


@dataclass(frozen=True)
class WindowKey:
    namespace: str
    model: str
    endpoint: str
    revision: str


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.feature_drift = Gauge(
            "kanari_feature_drift",
            "Drift of one input feature: live window vs training baseline.",
            ["namespace", "model", "endpoint", "revision", "feature", "method"],
            registry=registry,
        )
        self.prediction_drift = Gauge(
            "kanari_prediction_drift",
            "Drift of the predictions vs the training target's distribution.",
            ["namespace", "model", "endpoint", "revision", "method"],
            registry=registry,
        )
        self.canary_divergence = Gauge(
            "kanari_canary_divergence",
            "Divergence of canary predictions from stable predictions (PSI on the stable window's deciles).",
            ["namespace", "model", "method"],
            registry=registry,
        )
        self.window_samples = Gauge(
            "kanari_drift_window_samples",
            "Requests in the live window behind the drift values.",
            ["namespace", "model", "endpoint"],
            registry=registry,
        )
        self.events = Counter(
            "kanari_drift_events", "Payload-logger events received, by outcome.", ["outcome"], registry=registry
        )
        self.schema_violations = Counter(
            "kanari_schema_violations",
            "Values (row x feature) that break the baseline's schema, by kind (series removed with the window).",
            ["namespace", "model", "kind"],
            registry=registry,
        )
        self.size = Gauge(
            "kanari_drift_state", "Entries in each bounded structure of the monitor.", ["kind"], registry=registry
        )
        self.limit = Gauge(
            "kanari_drift_limit", "The bound of each structure in kanari_drift_state.", ["kind"], registry=registry
        )


@dataclass
class ModelWindow:
    key: WindowKey
    ref: BaselineRef
    baseline: Baseline
    features: list[Feature]
    window: SlidingWindow
    domains: dict[str, set[str] | None]
    required: dict[str, float]
    window_size: int
    predictions: SlidingWindow | None = None
    updated: float = 0.0
    evaluated: tuple[int, int] = (-1, -1)
    feature_labels: set[tuple[str, str]] = field(default_factory=set)
    prediction_labels: set[str] = field(default_factory=set)

    def prediction_window(self, values: list[Any]) -> SlidingWindow:
        if self.predictions is None:
            target = self.baseline.target_feature
            if target is not None:
                feature = Feature(PREDICTION, target.inferred_type)
            else:
                numeric = all(isinstance(v, int | float) for v in values if v is not None)
                feature = Feature(PREDICTION, "Fractional" if numeric else "String")
            self.predictions = SlidingWindow([feature], self.window_size)
        return self.predictions


@dataclass
class Pending:
    key: WindowKey
    arrived: float
    size: int
    request: Arrays | None = None
    response: list[Any] | None = None


def _arrays_bytes(a: Arrays) -> int:
    return int(a.numeric.nbytes) + sum(64 * len(v) for v in a.categorical.values())


class DriftMonitor:
    """All monitor state and decisions; the HTTP layer only hands it bodies and headers."""

    def __init__(
        self,
        settings: MonitorSettings,
        models: ModelRegistry,
        registry: CollectorRegistry | None = None,
        cache: BaselineCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        labels_token: str = "",
        state: JoinState | None = None,
    ):
        self.settings = settings
        self.labels_token = labels_token.encode()
        self.models = models
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.cache = cache or BaselineCache(max_entries=settings.max_baselines,
                                            max_failures=settings.max_baseline_failures)
        self.clock = clock
        self.windows: OrderedDict[WindowKey, ModelWindow] = OrderedDict()
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.pending_bytes = 0
        self.recent = RecentRequests(settings.recent_per_model, settings.max_models, settings.recent_max_body_bytes,
                                     settings.recent_max_model_bytes)
        self._inflight: dict[BaselineRef, asyncio.Future[Baseline]] = {}
        self._calibrating: dict[CalibrationRef, asyncio.Future[Any]] = {}
        # Whether this replica owns a model (sharding; run() sets it from --peers). A model another replica owns
        # is not kept here: reloaded from --state-dir after a scale change, its frozen figures exported beside the
        # owner's would hide a drop from max() over replicas (the retro-verdict, the realised-quality alert).
        self.owns: Callable[[str, str], bool] = lambda namespace, model: True
        self.truth = GroundTruth(self.registry, max_pending=settings.max_label_pending,
                                 window_size=settings.window_size, min_samples=settings.min_samples, state=state)
        self.label_batches = Counter("kanari_label_batches", "Label batches (HTTP posts and S3 files), by outcome.",
                                     ["source", "outcome"], registry=self.registry)
        self._samples_labels: set[tuple[str, str, str]] = set()
        self._divergence_labels: set[tuple[str, str, str]] = set()
        self._violation_labels: set[tuple[str, str, str]] = set()
        for kind, bound in (("windows", settings.max_models), ("pending", settings.max_pending),
                            ("pending_bytes", settings.max_pending_bytes), ("baselines", settings.max_baselines),
                            ("baseline_failures", settings.max_baseline_failures),
                            ("rows_per_event", settings.max_rows_per_event), ("event_bytes", settings.max_event_bytes),
                            ("recent_per_model", settings.recent_per_model),
                            ("recent_bytes", settings.max_models * settings.recent_max_model_bytes)):
            self.metrics.limit.labels(kind).set(bound)

    # ------------------------------------------------------------------------------------------ intake
    def record(self, outcome: str, status: int, **body: Any) -> tuple[int, dict[str, Any]]:
        self.metrics.events.labels(outcome).inc()
        return status, {"outcome": outcome, **body}

    def oversized(self, size: int | None) -> tuple[int, dict[str, Any]]:
        limit = self.settings.max_event_bytes
        return self.record("oversized", 413, error=f"event body larger than {limit} bytes", size=size)

    async def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """Process one delivery; returns (HTTP status, JSON body). Never raises on bad input."""
        if len(body) > self.settings.max_event_bytes:
            return self.oversized(len(body))
        try:
            event = parse_event(headers, body)
        except MalformedEvent as exc:
            return self.record("malformed", 400, error=str(exc))
        binding = self.models.bind(event.namespace, event.model, event.endpoint,
                                   event.annotations.get(REVISION_ANNOTATION))
        if binding is None:
            name = f"{event.namespace[:63]}/{event.model[:63]}"
            return self.record(
                "unknown_model", 404,
                error=f"{name} is not a ModelDeployment with monitoring enabled and a model being served",
            )
        try:
            baseline = await self._baseline(binding.ref)
        except BaselineUnavailable as exc:
            # The detail names buckets, keys or paths: the log gets it, the caller does not.
            log.warning("baseline of %s/%s unavailable: %s", event.namespace, event.model, exc)
            return self.record("baseline_unavailable", 503,
                               error=f"the baseline of {event.namespace}/{event.model} is unavailable; see the monitor's log")
        found = self.models.lookup(event.namespace, event.model)
        stable = found is not None and binding == found.stable
        replayed = event.id.startswith(REPLAY_ID_PREFIX)
        if replayed and stable:
            # A replayed request logged as the stable model's (a preview misrouted or mislabelled): it is a copy
            # of a request the stable window already counted, so it is not counted again.
            return self.record("replayed", 200, id=event.id)
        try:
            state = self._window(event, binding, baseline)
            paired = self._intake(event, state, len(body))
        except RowLimit as exc:
            return self.record("oversized", 413, error=str(exc), id=event.id)
        except MalformedEvent as exc:
            return self.record("malformed", 400, error=str(exc), id=event.id)
        if event.kind == "request" and stable and not replayed:
            # Only the stable model's own requests, after the intake took them, are kept for replay.
            self.recent.add(event.namespace, event.model, event.data)
        self._expire_pending()
        model = self.models.lookup(event.namespace, event.model)
        if event.kind == "response" and model is not None and model.ground_truth is not None:
            calibration = (CalibrationRef(binding.calibration_uri, binding.calibration_sha256)
                           if binding.calibration_uri else None)
            await self._calibration(calibration, f"{event.namespace}/{event.model}")
            self.truth.predictions(event.namespace, event.model, state.key.revision, event.id, event.data,
                                   model.ground_truth, calibration, self.settings.max_rows_per_event)
        return self.record("accepted", 200, id=event.id, paired=paired)

    async def _calibration(self, ref: CalibrationRef | None, model: str) -> None:
        """Fetch a model version's CBPE calibration once (off the loop) through the one reader, which checks the
        registered digest; a refusal or a failed read is logged, counted and retried later, and meanwhile the
        estimate is reported unavailable (never computed from raw scores)."""
        if ref is None or not self.truth.needs_calibration(ref):
            return
        future = self._calibrating.get(ref)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(None, load_calibration, ref)
            self._calibrating[ref] = future
            future.add_done_callback(lambda _f: self._calibrating.pop(ref, None))
        try:
            self.truth.add_calibration(ref, await asyncio.shield(future))
        except (CalibrationError, CalibrationUnavailable) as exc:
            reason = "refused" if isinstance(exc, CalibrationError) else "unavailable"
            log.warning("CBPE calibration of %s %s: %s", model, reason, exc)
            self.truth.calibration_refused.labels(reason).inc()
            self.truth.add_calibration(ref, None)

    # ------------------------------------------------------------------------------------ labels
    def _labelled(self, namespace: str, model: str) -> str | None:
        found = self.models.lookup(namespace, model)
        return found.ground_truth.task if found is not None and found.ground_truth is not None else None

    def _served_revisions(self, namespace: str, model: str) -> set[str] | None:
        found = self.models.lookup(namespace, model)
        if found is None or found.ground_truth is None or not self.owns(namespace, model):
            return None
        return {b.version for b in (found.stable, found.canary, *found.by_revision.values()) if b is not None}

    def labels_authorized(self, authorization: str | None) -> bool:
        import hmac

        scheme, _, given = (authorization or "").partition(" ")
        return bool(self.labels_token) and scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.labels_token)

    def handle_labels(self, namespace: str, model: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """One authorized label batch: all of it or, with a bad item, none of it."""
        from kanari.judging.labels import parse_labels

        found = self.models.lookup(namespace, model)
        if found is None or found.ground_truth is None:
            self.label_batches.labels("http", "unknown_model").inc()
            return 404, {"error": f"{namespace[:63]}/{model[:63]} is not a ModelDeployment with "
                                  "spec.monitoring.groundTruth"}
        try:
            doc = loads(body)
            if not isinstance(doc, dict):
                raise ValueError("body: expected an object with a labels list")
            pairs = parse_labels(doc.get("labels"), found.ground_truth.task)  # type: ignore[arg-type]
        except ValueError as exc:
            self.label_batches.labels("http", "refused").inc()
            return 400, {"error": str(exc)}
        try:
            joined = self.truth.labels(namespace, model, found.ground_truth, pairs)
        except StateError as exc:
            # Not on disk: not acknowledged. The batch is kept in memory and written by the next save; a re-sent
            # batch counts nothing twice (its ids have joined) and is acknowledged once the write succeeds.
            log.error("label batch for %s/%s not saved: %s", namespace, model, exc)
            self.label_batches.labels("http", "unsaved").inc()
            return 503, {"error": "the labels could not be saved; send the batch again later"}
        self.label_batches.labels("http", "accepted").inc()
        return 200, {"accepted": len(pairs), "joined": joined}

    def apply_label_files(self, files: list[LabelFile]) -> None:
        for f in files:
            found = self.models.lookup(f.namespace, f.model)
            if f.error is not None or found is None or found.ground_truth is None:
                self.label_batches.labels("s3", "refused").inc()
                continue
            try:
                self.truth.labels(f.namespace, f.model, found.ground_truth, f.pairs)
            except StateError as exc:
                # The file stays read at its ETag; its labels are in memory and written by the next save.
                log.error("label file %s not saved: %s", f.key, exc)
                self.label_batches.labels("s3", "unsaved").inc()
                continue
            self.label_batches.labels("s3", "accepted").inc()

    async def _baseline(self, ref: BaselineRef) -> Baseline:
        cached = self.cache.cached(ref)
        if cached is not None:
            return cached
        # One fetch per baseline however many events wait for it; the fetch blocks, so off the loop.
        future = self._inflight.get(ref)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(None, self.cache.get, ref)
            self._inflight[ref] = future
            future.add_done_callback(lambda _f: self._inflight.pop(ref, None))
        return await asyncio.shield(future)

    def _window(self, event: LoggedEvent, binding: Binding, baseline: Baseline) -> ModelWindow:
        ref = binding.ref
        # Two endpoints exist (KServe's default and canary; bind() reads anything else as the stable one): the
        # name as sent would let made-up endpoints open windows and evict real models from the LRU.
        endpoint = "canary" if event.endpoint == "canary" else "default"
        key = WindowKey(event.namespace, event.model, endpoint, binding.version or UNVERSIONED)
        state = self.windows.get(key)
        if state is not None and state.ref == ref:
            self.windows.move_to_end(key)
            return state
        if state is not None:
            self._drop(key)
        size = binding.window_size or self.settings.window_size
        features = baseline.input_features
        state = ModelWindow(
            key=key,
            ref=ref,
            baseline=baseline,
            features=features,
            window=SlidingWindow(features, size),
            domains={f.name: baseline.domain(f.name) for f in features if not f.numeric},
            required={f.name: float(baseline.constraint(f.name).get("completeness", 0.0)) for f in features},
            window_size=size,
        )
        self.windows[key] = state
        while len(self.windows) > self.settings.max_models:
            oldest = next(iter(self.windows))
            log.warning("tracking more than %d models; dropping the window of %s", self.settings.max_models, oldest)
            self._drop(oldest)
        return state

    def _intake(self, event: LoggedEvent, state: ModelWindow, body_size: int = 0) -> bool:
        """Parse the payload and pair it with its other half; True if the pair is complete.

        A waiting half is counted against max_pending_bytes at no less than the size of the event it came
        from: the per-value estimates below do not see long strings (a 4 MB prediction would count 16 bytes)."""
        now = self.clock()
        state.updated = now
        max_rows = self.settings.max_rows_per_event
        if event.kind == "request":
            arrays = to_arrays(request_rows(event.data, max_rows), state.features, state.domains, state.required)
            for kind, n in arrays.violations.items():
                self._violation(event.namespace, event.model, kind, n)
            half: dict[str, Any] = {"request": arrays}
            size = _arrays_bytes(arrays)
        else:
            values = response_values(event.data, max_rows)
            half = {"response": values}
            size = 16 * len(values)
        size = max(size, body_size)
        entry = self.pending.pop(event.id, None)
        if entry is not None:
            self.pending_bytes -= entry.size
            partner = entry.response if event.kind == "request" else entry.request
            if entry.key == state.key and partner is not None:
                self._commit(state, half.get("request", entry.request), half.get("response", entry.response))
                return True
            # The same id twice (a client reusing Ce-Id): the earlier half goes in on its own.
            self._commit_entry(entry)
        self.pending[event.id] = Pending(state.key, now, size, **half)
        self.pending_bytes += size
        return False

    def _commit_entry(self, entry: Pending) -> None:
        state = self.windows.get(entry.key)
        if state is not None:
            self._commit(state, entry.request, entry.response)

    def _commit(self, state: ModelWindow, request: Arrays | None, response: list[Any] | None) -> None:
        if request is not None and request.n:
            state.window.add(request.numeric, request.categorical, request.n)
        if response:
            window = state.prediction_window(response)
            feature = window.features[0]
            rows = Rows(len(response), positional=[[v] for v in response])
            arrays = to_arrays(rows, [feature], {}, {})
            for kind, n in arrays.violations.items():
                self._violation(state.key.namespace, state.key.model, f"prediction_{kind}", n)
            window.add(arrays.numeric, arrays.categorical, arrays.n)

    def _violation(self, namespace: str, model: str, kind: str, n: int) -> None:
        # Only monitored models reach here, and kinds are a fixed set: the series are bounded, and
        # evaluate() removes those of models that no longer have a window.
        self.metrics.schema_violations.labels(namespace, model, kind).inc(n)
        self._violation_labels.add((namespace, model, kind))

    def _expire_pending(self) -> None:
        """A half whose partner never comes (logger mode request/response, a failed request, a lost
        event) still counts: after pending_ttl, or when the map is full, it goes in on its own."""
        now = self.clock()
        s = self.settings
        while self.pending:
            key, entry = next(iter(self.pending.items()))
            full = len(self.pending) > s.max_pending or self.pending_bytes > s.max_pending_bytes
            if not full and now - entry.arrived < s.pending_ttl:
                break
            del self.pending[key]
            self.pending_bytes -= entry.size
            self._commit_entry(entry)

    # -------------------------------------------------------------------------------------- evaluation
    def _drop(self, key: WindowKey) -> None:
        state = self.windows.pop(key, None)
        if state is None:
            return
        self._clear_feature_gauges(state)
        self._clear_prediction_gauges(state)

    def _clear_feature_gauges(self, state: ModelWindow) -> None:
        k = state.key
        for feature, method in state.feature_labels:
            self.metrics.feature_drift.remove(k.namespace, k.model, k.endpoint, k.revision, feature, method)
        state.feature_labels.clear()

    def _clear_prediction_gauges(self, state: ModelWindow) -> None:
        k = state.key
        for method in state.prediction_labels:
            self.metrics.prediction_drift.remove(k.namespace, k.model, k.endpoint, k.revision, method)
        state.prediction_labels.clear()

    def evaluate(self) -> None:
        """Recompute the gauges of windows that changed; drop idle windows. Below min_samples a
        window exports no drift value at all: a missing series is inconclusive, never a pass."""
        now = self.clock()
        self._expire_pending()
        for key in [
            k for k, st in self.windows.items()
            if now - st.updated > self.settings.idle_timeout or (k.namespace, k.model) not in self.models
        ]:
            self._drop(key)
        for ns, model in [k for k in self.recent.models() if k not in self.models]:
            self.recent.drop(ns, model)
        tracked = {(k.namespace, k.model) for k in self.windows}
        for labels in [lab for lab in self._violation_labels if lab[:2] not in tracked]:
            self.metrics.schema_violations.remove(*labels)
            self._violation_labels.discard(labels)
        for kind, size in (("windows", len(self.windows)), ("pending", len(self.pending)),
                           ("pending_bytes", self.pending_bytes), ("baselines", len(self.cache)),
                           ("baseline_failures", self.cache.failures), ("models", len(self.models)),
                           ("violation_series", len(self._violation_labels)), ("recent", len(self.recent)),
                           ("recent_bytes", self.recent.bytes())):
            self.metrics.size.labels(kind).set(size)
        for state in self.windows.values():
            versions = (state.window.version, state.predictions.version if state.predictions else -1)
            if versions == state.evaluated:
                continue
            state.evaluated = versions
            self._evaluate_features(state)
            self._evaluate_predictions(state)
        self._evaluate_samples()
        self._evaluate_divergence()
        if self.models.synced:
            # Before the first list of ModelDeployments every model looks unmonitored: evaluating then would
            # drop, on disk too, every join store a restarted monitor has just loaded.
            self.truth.evaluate(self._served_revisions)

    def _evaluate_features(self, state: ModelWindow) -> None:
        k = state.key
        if state.window.samples < self.settings.min_samples:
            self._clear_feature_gauges(state)
            return
        values = drift_values(state.baseline, state.window.profile(), state.features)
        for feature, by_method in values.items():
            for method, value in by_method.items():
                if method not in GAUGE_METHODS:
                    continue
                labels = (k.namespace, k.model, k.endpoint, k.revision, feature, method)
                if np.isfinite(value):
                    self.metrics.feature_drift.labels(*labels).set(value)
                    state.feature_labels.add((feature, method))
                elif (feature, method) in state.feature_labels:
                    self.metrics.feature_drift.remove(*labels)
                    state.feature_labels.discard((feature, method))

    def _evaluate_predictions(self, state: ModelWindow) -> None:
        target = state.baseline.target_feature
        window = state.predictions
        if target is None or window is None or window.samples < self.settings.min_samples:
            self._clear_prediction_gauges(state)
            return
        base = state.baseline.profile
        values = _profile_drift(_single(base, target.name), window.profile())
        k = state.key
        for method, value in values.items():
            if np.isfinite(value):
                self.metrics.prediction_drift.labels(k.namespace, k.model, k.endpoint, k.revision, method).set(value)
                state.prediction_labels.add(method)

    def _latest(self) -> dict[tuple[str, str, str], ModelWindow]:
        """The most recently fed window per (namespace, model, endpoint): the revision serving now."""
        latest: dict[tuple[str, str, str], ModelWindow] = {}
        for st in self.windows.values():
            k = (st.key.namespace, st.key.model, st.key.endpoint)
            if k not in latest or st.updated > latest[k].updated:
                latest[k] = st
        return latest

    def _evaluate_samples(self) -> None:
        latest = self._latest()
        for labels in self._samples_labels - set(latest):
            self.metrics.window_samples.remove(*labels)
        for labels, st in latest.items():
            self.metrics.window_samples.labels(*labels).set(st.window.samples)
        self._samples_labels = set(latest)

    def _evaluate_divergence(self) -> None:
        latest = self._latest()
        exported: set[tuple[str, str, str]] = set()
        for (ns, model, endpoint), canary in latest.items():
            if endpoint != "canary":
                continue
            stable = latest.get((ns, model, "default"))
            if stable is None or stable.predictions is None or canary.predictions is None:
                continue
            if min(stable.predictions.samples, canary.predictions.samples) < self.settings.min_samples:
                continue
            base, cur = stable.predictions.profile(), canary.predictions.profile()
            if base.features[0].numeric != cur.features[0].numeric:
                continue
            for method, value in _profile_drift(base, cur).items():
                if method in DIVERGENCE_METHODS and np.isfinite(value):
                    self.metrics.canary_divergence.labels(ns, model, method).set(value)
                    exported.add((ns, model, method))
        for labels in self._divergence_labels - exported:
            self.metrics.canary_divergence.remove(*labels)
        self._divergence_labels = exported


def _single(profile: Profile, name: str) -> Profile:
    """One feature of a profile, renamed `prediction`, to compare predictions with."""
    feature = next(f for f in profile.features if f.name == name)
    out = Profile.empty([Feature(PREDICTION, feature.inferred_type)])
    out.rows = profile.rows
    if feature.numeric:
        j = [f.name for f in profile.numeric_features].index(name)
        out.sketch = profile.sketch.select([j])
        out.moments.count[:] = profile.moments.count[j]
        out.moments.m2[:] = profile.moments.m2[j]
    else:
        out.categories[PREDICTION] = profile.categories[name].copy()
    return out


def _profile_drift(base: Profile, cur: Profile) -> dict[str, float]:
    """Distances between two one-feature profiles (the feature's type decides the methods)."""
    feature = base.features[0]
    if feature.numeric:
        values = numeric_drift(base.sketch, cur.sketch, base.moments.std(), NUMERIC_METHODS)
        return {m: float(v[0]) for m, v in values.items()}
    methods = tuple(m for m in CATEGORICAL_METHODS if m not in P_VALUE_METHODS)
    return categorical_drift(base.categories[feature.name], cur.categories[feature.name], methods)


# ------------------------------------------------------------------------------------------------ HTTP
def build_app(
    monitor: DriftMonitor, watchers: list[KubernetesWatcher] | None = None, shards: Shards | None = None,
    label_drop: LabelDrop | None = None, api_token: str | None = None, replayer: Replayer | None = None,
) -> web.Application:
    max_bytes = monitor.settings.max_event_bytes
    secret = api_token.encode() if api_token else None

    async def recent_requests(request: web.Request) -> web.Response:
        # Logged request bodies are users' data: only a holder of the API token (the controller) reads them;
        # with no token configured the endpoint is closed, never open.
        if secret is None:
            return web.json_response({"error": "the monitor was started without an API token; "
                                                "recent requests are not served"}, status=403)
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), secret):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        raw = request.query.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_RECENT_LIMIT:
            return web.json_response({"error": f"limit: an integer from 1 to {MAX_RECENT_LIMIT}"}, status=400)
        ns, name = request.match_info["namespace"], request.match_info["name"]
        forwarded = any(k.lower() == FORWARDED_HEADER.lower() for k in request.headers)
        if shards is not None and not forwarded and (target := shards.owner_of(ns, name)) is not None:
            # Another replica keeps this model's requests: asked once, with the caller's token.
            status, body = await shards.fetch(target, request.path_qs, dict(request.headers))
            return web.json_response(body, status=status)
        if (ns, name) not in monitor.models:
            return web.json_response({"error": f"{ns[:63]}/{name[:63]}: not a ModelDeployment with monitoring "
                                               "enabled"}, status=404)
        return web.json_response({"requests": monitor.recent.recent(ns, name, int(raw))})

    async def labels(request: web.Request) -> web.Response:
        # The token is checked before the body is read: an unauthenticated caller costs no body.
        if not monitor.labels_authorized(request.headers.get("Authorization")):
            monitor.label_batches.labels("http", "unauthorized").inc()
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            raw = await read_body(request, monitor.settings.max_label_bytes, monitor.settings.body_timeout)
        except BodyRejected as exc:
            monitor.label_batches.labels("http", exc.outcome).inc()
            return web.json_response({"error": exc.detail}, status=exc.status)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if shards is not None and (target := shards.owner_of(namespace, name, request.headers)) is not None:
            status, body = await shards.forward(target, dict(request.headers), raw, path=request.path)
            return web.json_response(body, status=status)
        status, body = monitor.handle_labels(namespace, name, raw)
        return web.json_response(body, status=status)

    async def receive(request: web.Request) -> web.Response:
        try:
            raw = await read_body(request, max_bytes, monitor.settings.body_timeout)
        except BodyRejected as exc:
            status, body = monitor.record(exc.outcome, exc.status, error=exc.detail)
            return web.json_response(body, status=status)
        headers = dict(request.headers)
        if shards is not None and (target := shards.route_to(headers, raw)) is not None:
            # Another replica keeps this model's window: one hop there.
            status, body = await shards.forward(target, headers, raw)
            return web.json_response(body, status=status)
        status, body = await monitor.handle(headers, raw)
        return web.json_response(body, status=status)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(monitor.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        # Liveness: the loop answers. Whether the ModelDeployment list has been read is reported, not
        # fatal: a restart would not make the API server reachable.
        return web.json_response({
            "status": "ok", "windows": len(monitor.windows), "pending": len(monitor.pending),
            "models": len(monitor.models), "modelsSynced": monitor.models.synced,
            "watchErrors": sum(w.errors for w in watchers or []),
            "labelledModels": len(monitor.truth.stores),
            # Failed writes of the --state-dir join state (kept in memory and retried by the next save).
            **({"stateWriteFailures": monitor.truth.state.failures} if monitor.truth.state is not None else {}),
            **({"labelDrop": {"polls": label_drop.polls, "failures": label_drop.failures,
                              "refused": label_drop.errors}} if label_drop is not None else {}),
        })

    async def evaluator(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(monitor.settings.evaluate_interval)
                try:
                    monitor.evaluate()
                except Exception:  # one bad window must not stop the metrics of every other model
                    log.exception("drift evaluation failed")

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def poller(app: web.Application) -> Any:
        assert label_drop is not None

        async def loop() -> None:
            while True:
                try:
                    files = await asyncio.get_running_loop().run_in_executor(None, label_drop.poll)
                    monitor.apply_label_files(files)
                except Exception as exc:  # noqa: BLE001 - S3 unreachable or denied: counted, retried next interval
                    label_drop.failures += 1
                    log.warning("label drop poll failed (%s); retrying in %gs", type(exc).__name__,
                                monitor.settings.labels_s3_interval)
                await asyncio.sleep(monitor.settings.labels_s3_interval)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def replaying(app: web.Application) -> Any:
        assert replayer is not None
        task = asyncio.create_task(replayer.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = web.Application(client_max_size=max(max_bytes, monitor.settings.max_label_bytes) + 1)
    if monitor.labels_token:
        app.router.add_post("/v1/labels/{namespace}/{name}", labels)
    if label_drop is not None:
        app.cleanup_ctx.append(poller)
    app.router.add_post("/", receive)
    app.router.add_post("/events", receive)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/recent-requests/{namespace}/{name}", recent_requests)
    app.cleanup_ctx.append(evaluator)
    if replayer is not None:
        app.cleanup_ctx.append(replaying)
    if shards is not None:
        app.cleanup_ctx.append(shards.context)
    return app


def run(args: argparse.Namespace) -> int:
    try:
        settings = MonitorSettings(
            window_size=args.window_size,
            min_samples=args.min_samples,
            max_models=args.max_models,
            max_event_bytes=args.max_event_bytes,
            evaluate_interval=args.evaluate_interval,
            idle_timeout=args.idle_timeout,
            max_rows_per_event=args.max_rows_per_event,
            max_pending=args.max_pending,
            max_baselines=args.max_baselines,
            max_baseline_failures=args.max_baseline_failures,
            body_timeout=args.body_timeout,
            max_label_bytes=args.max_label_bytes,
            max_label_pending=args.max_label_pending,
            labels_s3_interval=args.labels_s3_interval,
            recent_per_model=args.recent_per_model,
            recent_max_body_bytes=args.recent_max_body_bytes,
            recent_max_model_bytes=args.recent_max_model_bytes,
            max_replay_rate=args.max_replay_rate,
            max_replays=args.max_replays,
        )
        labels_token = bearer_token("--labels-token-file", args.labels_token_file, LABELS_TOKEN_ENV)
        api_token = bearer_token("--api-token-file", args.api_token_file, API_TOKEN_ENV) or None
        sharding = ShardSettings.from_args(args)
        tls = ssl_context(args.tls_cert_file, args.tls_key_file)
        if args.config:
            models = from_static_file(args.config)
        elif args.kubernetes:
            models = ModelRegistry(tuple(args.preview_domain) or DEFAULT_DOMAINS)
        else:
            raise ValueError("say where monitored models come from: --kubernetes (ModelDeployments) or --config FILE")
    except ValueError as exc:
        print(f"kanari drift monitor: {exc}", file=sys.stderr)
        return 2
    from kanari import logs

    logs.configure()
    watchers = []
    if args.kubernetes:
        models.expect(args.watch_namespace or [None])
        for namespace in args.watch_namespace or [None]:
            watcher = KubernetesWatcher(models, kubernetes_api, namespace=namespace)
            watcher.start()
            watchers.append(watcher)
    state = None
    if args.state_dir:
        try:
            state = JoinState(args.state_dir)
            monitor = DriftMonitor(settings, models, labels_token=labels_token, state=state)  # loads the state
        except StateError as exc:
            print(f"kanari drift monitor: {exc}", file=sys.stderr)
            return 2
    else:
        monitor = DriftMonitor(settings, models, labels_token=labels_token, state=state)
    shards = Shards(sharding, monitor.registry, monitor.metrics.events) if sharding else None
    if shards is not None:
        monitor.owns = lambda namespace, name: shards.owner_of(namespace, name, {}) is None
    drop = None
    if args.labels_s3_uri:
        def task_of(namespace: str, name: str) -> str | None:
            # Each replica reads the files of the models it owns (their predictions come to it).
            mine = shards is None or shards.owner_of(namespace, name, {}) is None
            return monitor._labelled(namespace, name) if mine else None

        try:
            drop = LabelDrop(args.labels_s3_uri, task_of, settings.max_label_bytes)
        except ValueError as exc:
            print(f"kanari drift monitor: {exc}", file=sys.stderr)
            return 2
    replayer = None
    if not args.no_replay:
        send, _close = aiohttp_sender()
        def owned_previews() -> list[PreviewTarget]:
            # Only the replica keeping a model's requests feeds its preview (and reports it in status).
            return [t for t in models.previews() if shards is None or shards.owner_of(t.namespace, t.name) is None]

        replayer = Replayer(owned_previews, monitor.recent, send,
                            kubernetes_reporter(kubernetes_api) if args.kubernetes else None,
                            max_rate=settings.max_replay_rate, max_feeds=settings.max_replays)
    serve(build_app(monitor, watchers, shards, drop, api_token, replayer), args.host, args.port,
          header_timeout=args.header_timeout, tls=tls)
    return 0


LABELS_TOKEN_ENV = "KANARI_LABELS_TOKEN"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kanari.monitor.server", description=__doc__.split("\n\n")[0])
    monitor_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
