"""The drift monitor: receives KServe payload-logger CloudEvents, keeps a sliding window per
InferenceService, endpoint (default = stable, canary) and model version, and exports drift as
Prometheus metrics.

Run it as `python -m kanari.monitor.server --port 8080` (or `kanari drift monitor`). KServe posts
events to `/`; Prometheus scrapes `/metrics`.

Memory is bounded whatever the load: a window is a ring of sketches, at most `max_models` windows are
tracked (least recently used dropped), the map that pairs a request with its response (by `ce-id`) is
bounded in entries and bytes, and an event body larger than `max_event_bytes` is refused unread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
from kanari.monitor.baseline_store import (
    BaselineCache,
    BaselineRef,
    BaselineUnavailable,
    StaticBaselines,
    normalise_uri,
)
from kanari.monitor.payload import (
    BASELINE_ANNOTATION,
    VERSION_ANNOTATION,
    WINDOW_ANNOTATION,
    Arrays,
    LoggedEvent,
    MalformedEvent,
    Rows,
    parse_event,
    request_rows,
    response_values,
    to_arrays,
)
from kanari.monitor.settings import MonitorSettings, monitor_arguments

log = logging.getLogger("kanari.monitor.server")

GAUGE_METHODS = tuple(m for m in dict.fromkeys(NUMERIC_METHODS + CATEGORICAL_METHODS) if m not in P_VALUE_METHODS)
DIVERGENCE_METHODS = ("psi", "js", "linf")
PREDICTION = "prediction"
UNVERSIONED = "unversioned"


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
            "Values (row x feature) that break the baseline's schema, by kind.",
            ["namespace", "model", "kind"],
            registry=registry,
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
        registry: CollectorRegistry | None = None,
        cache: BaselineCache | None = None,
        static: StaticBaselines | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.cache = cache or BaselineCache()
        self.static = static or StaticBaselines({})
        self.clock = clock
        self.windows: OrderedDict[WindowKey, ModelWindow] = OrderedDict()
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.pending_bytes = 0
        self._inflight: dict[BaselineRef, asyncio.Future[Baseline]] = {}
        self._samples_labels: set[tuple[str, str, str]] = set()
        self._divergence_labels: set[tuple[str, str, str]] = set()

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
        ref = self._baseline_ref(event)
        if ref is None:
            return self.record(
                "unknown_model",
                404,
                error=f"no baseline for {event.namespace}/{event.model}: the event carries no "
                f"{BASELINE_ANNOTATION} annotation and the monitor's config has no entry",
            )
        try:
            baseline = await self._baseline(ref)
        except BaselineUnavailable as exc:
            return self.record("baseline_unavailable", 503, error=str(exc))
        try:
            state = self._window(event, ref, baseline)
            paired = self._intake(event, state)
        except MalformedEvent as exc:
            return self.record("malformed", 400, error=str(exc), id=event.id)
        self._expire_pending()
        return self.record("accepted", 200, id=event.id, paired=paired)

    def _baseline_ref(self, event: LoggedEvent) -> BaselineRef | None:
        uri = event.annotations.get(BASELINE_ANNOTATION)
        if uri:
            return BaselineRef(normalise_uri(uri), event.annotations.get(VERSION_ANNOTATION, ""))
        return self.static.lookup(event.namespace, event.model)

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

    def _window(self, event: LoggedEvent, ref: BaselineRef, baseline: Baseline) -> ModelWindow:
        key = WindowKey(event.namespace, event.model, event.endpoint, ref.version or UNVERSIONED)
        state = self.windows.get(key)
        if state is not None and state.ref == ref:
            self.windows.move_to_end(key)
            return state
        if state is not None:
            self._drop(key)
        size = self.settings.window_size
        raw_size = event.annotations.get(WINDOW_ANNOTATION)
        if raw_size:
            try:
                size = int(raw_size)
                if size < 1:
                    raise ValueError
            except ValueError:
                raise MalformedEvent(f"annotation {WINDOW_ANNOTATION}: {raw_size!r} is not a positive integer") from None
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

    def _intake(self, event: LoggedEvent, state: ModelWindow) -> bool:
        """Parse the payload and pair it with its other half; True if the pair is complete."""
        now = self.clock()
        state.updated = now
        if event.kind == "request":
            arrays = to_arrays(request_rows(event.data), state.features, state.domains, state.required)
            for kind, n in arrays.violations.items():
                self.metrics.schema_violations.labels(event.namespace, event.model, kind).inc(n)
            half: dict[str, Any] = {"request": arrays}
            size = _arrays_bytes(arrays)
        else:
            values = response_values(event.data)
            half = {"response": values}
            size = 16 * len(values)
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
                self.metrics.schema_violations.labels(state.key.namespace, state.key.model, f"prediction_{kind}").inc(n)
            window.add(arrays.numeric, arrays.categorical, arrays.n)

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
        for key in [k for k, st in self.windows.items() if now - st.updated > self.settings.idle_timeout]:
            self._drop(key)
        for state in self.windows.values():
            versions = (state.window.version, state.predictions.version if state.predictions else -1)
            if versions == state.evaluated:
                continue
            state.evaluated = versions
            self._evaluate_features(state)
            self._evaluate_predictions(state)
        self._evaluate_samples()
        self._evaluate_divergence()

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
def build_app(monitor: DriftMonitor) -> web.Application:
    max_bytes = monitor.settings.max_event_bytes

    async def receive(request: web.Request) -> web.Response:
        declared = request.content_length
        if declared is not None and declared > max_bytes:
            status, body = monitor.oversized(declared)
            return web.json_response(body, status=status)
        try:
            raw = await request.content.read(max_bytes + 1)
        except (ConnectionError, asyncio.IncompleteReadError):
            status, body = monitor.record("malformed", 400, error="the body could not be read")
            return web.json_response(body, status=status)
        if len(raw) > max_bytes:
            status, body = monitor.oversized(None)
            return web.json_response(body, status=status)
        status, body = await monitor.handle(dict(request.headers), raw)
        return web.json_response(body, status=status)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(monitor.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "models": len(monitor.windows), "pending": len(monitor.pending)})

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

    app = web.Application(client_max_size=max_bytes + 1)
    app.router.add_post("/", receive)
    app.router.add_post("/events", receive)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(evaluator)
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
        )
        static = StaticBaselines.from_file(args.config) if args.config else None
    except ValueError as exc:
        print(f"kanari drift monitor: {exc}", file=sys.stderr)
        return 2
    from kanari import logs

    logs.configure()
    monitor = DriftMonitor(settings, static=static)
    web.run_app(build_app(monitor), host=args.host, port=args.port, print=None, access_log=None)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kanari.monitor.server", description=__doc__.split("\n\n")[0])
    monitor_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
