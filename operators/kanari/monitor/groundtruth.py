"""Delayed ground truth and CBPE inside the drift monitor.

The payload logger already brings every prediction here with its inference id (the CloudEvent id) and its
score; for a ModelDeployment with `spec.monitoring.groundTruth`, each scored row goes into that model's
JoinStore under the revision the event was bound to (never one the event names). Labels arrive later,
through `POST /v1/labels/<namespace>/<name>` (bearer token) or the S3 label drop (kanari.monitor.labeldrop),
and join by id. Row i of an event with several rows has the id `<ce-id>/<i>`; a one-row event keeps `<ce-id>`.

CBPE (kanari.judging.cbpe) estimates precision, recall, F1 and ROC-AUC per revision from the last
`window_size` scores, with the isotonic calibration the pipeline registered with the model package
(status.stableModel.calibrationUri and calibrationSha256, from the registry's kanari:calibration-uri and
kanari:calibration-sha256), read through the one reader, kanari.registry_metadata.read_calibration: a file
whose bytes are not the ones registered is refused (logged, counted in kanari_calibration_refused_total, CBPE
unavailable), never used. Without a calibration the
estimate is reported unavailable (kanari_estimated_quality_available 0, no kanari_estimated_quality series):
raw scores are rarely calibrated, and a number computed from them would look like an estimate and not be one.

Memory: one JoinStore per labelled model (bounded by its max_pending and ttl), one bounded score ring per
(model, revision), both dropped with the model; calibrations are a small LRU cache. With --state-dir the join
stores are also on disk (kanari.monitor.joinstate) and survive a restart; the score rings (the last
window_size scores, refilled by the next window_size responses) do not.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from kanari.judging.cbpe import Calibration, estimate
from kanari.judging.groundtruth import JoinStore
from kanari.judging.labels import QualityMetrics
from kanari.monitor.joinstate import JoinState, StateError
from kanari.monitor.payload import MalformedEvent, _tensor_rows

log = logging.getLogger("kanari.monitor.groundtruth")

MAX_CALIBRATIONS = 64
CALIBRATION_RETRY = 60.0


@dataclass(frozen=True)
class GroundTruthConfig:
    """A labelled model's settings, from its ModelDeployment's spec.monitoring.groundTruth."""

    task: str  # "binary" | "regression"
    threshold: float
    ttl: float


def scores(data: Mapping[str, Any], task: str, max_rows: int) -> list[float | None]:
    """The model's score per row of a V1 (`predictions`) or V2 (`outputs`) response: a number, a one-element
    row, or (binary) the positive class's probability of a two-class row; None for a row that has none."""
    if "predictions" in data:
        rows = data["predictions"]
        if not isinstance(rows, list) or len(rows) > max_rows:
            return []
    elif isinstance(data.get("outputs"), list) and data["outputs"]:
        try:
            _, rows, _ = _tensor_rows(data["outputs"][0], "outputs[0]", max_rows)
        except MalformedEvent:
            return []
    else:
        return []
    out: list[float | None] = []
    for r in rows:
        if isinstance(r, list) and len(r) == 1:
            r = r[0]
        elif isinstance(r, list) and len(r) == 2 and task == "binary":
            r = r[1]
        value = float(r) if isinstance(r, int | float) and not isinstance(r, bool) else math.nan
        ok = math.isfinite(value) and (task != "binary" or 0.0 <= value <= 1.0)
        out.append(value if ok else None)
    return out


@dataclass(frozen=True)
class CalibrationRef:
    """A model version's calibration as the controller copied it from the registry into status: the URI and the
    SHA-256 the package was registered with (None when the status carries no digest: refused, never trusted)."""

    uri: str
    sha256: str | None


def load_calibration(ref: CalibrationRef) -> Calibration:
    """The calibration through the one reader (kanari.registry_metadata.read_calibration: the digest checked).
    CalibrationError when refused (malformed, or not the bytes registered), CalibrationUnavailable when the
    document cannot be read now (retried)."""
    from kanari import registry_metadata as keys

    found = keys.read_calibration({keys.CALIBRATION_URI: ref.uri, keys.CALIBRATION_SHA256: ref.sha256 or ""})
    assert found is not None  # a URI is given: read_calibration returns a calibration or raises
    return found


class GroundTruth:
    """Join stores, score rings and calibrations of the labelled models; the gauges they feed.

    With a JoinState (--state-dir) the join stores are loaded from disk at start and saved after every batch:
    a label batch before it is acknowledged (StateError propagates: the caller answers 503), predictions and
    the evaluator's expiries best-effort (a failed save is logged, counted and written by the next one)."""

    def __init__(
        self, registry: CollectorRegistry, *, max_pending: int, window_size: int, min_samples: int,
        clock: Callable[[], float] = time.time, state: JoinState | None = None,
    ):
        # The wall clock: a pending half's arrival time is saved and its TTL runs on across a restart.
        self.metrics = QualityMetrics(registry)
        self.max_pending = max_pending
        self.window_size = window_size
        self.min_samples = min_samples
        self.clock = clock
        self.state = state
        self.state_errors = Counter("kanari_groundtruth_state_errors", "Failed writes of the join state "
                                    "(--state-dir); the changes are kept and written by the next save",
                                    registry=registry)
        self.calibration_refused = Counter(
            "kanari_calibration_refused", "Model versions whose CBPE calibration was refused (malformed, or its bytes "
            "do not match the digest registered: reason=refused) or could not be read (reason=unavailable, retried); "
            "CBPE is unavailable for them meanwhile", ["reason"], registry=registry)
        self.stores: dict[tuple[str, str], tuple[GroundTruthConfig, JoinStore]] = {}
        if state is not None:
            for key, (settings, store) in state.load(max_pending, clock).items():
                self.stores[key] = (GroundTruthConfig(*settings), store)
        self.scores: dict[tuple[str, str, str], deque[float]] = {}
        self.calibration_of: dict[tuple[str, str, str], CalibrationRef | None] = {}
        self.calibrations: OrderedDict[CalibrationRef, Calibration] = OrderedDict()
        self.calibration_failed: dict[CalibrationRef, float] = {}

    def store(self, namespace: str, model: str, config: GroundTruthConfig) -> JoinStore:
        key = (namespace, model)
        found = self.stores.get(key)
        if found is not None and found[0] == config:
            return found[1]
        if found is not None:  # the task or threshold changed: figures under the old ones would mislead
            self.forget(namespace, model)
        store = JoinStore(task=config.task, ttl=config.ttl, max_pending=self.max_pending,  # type: ignore[arg-type]
                          threshold=config.threshold, clock=self.clock, journal=self.state is not None)
        if store.changes is not None:
            # Written whole at its first save: rows a failed forget left on disk (the old task or threshold's
            # pending halves and figures) must not come back at the next restart merged into this store.
            store.changes.append(("rewrite",))
        self.stores[key] = (config, store)
        return store

    def save(self, namespace: str, model: str, *, durable: bool) -> None:
        """Write a store's changes to the state dir (if any). durable: raise StateError when it failed."""
        found = self.stores.get((namespace, model))
        if self.state is None or found is None:
            return
        config, store = found
        try:
            self.state.save((namespace, model), (config.task, config.threshold, config.ttl), store, durable=durable)
        except StateError as exc:
            self.state_errors.inc()
            if durable:
                raise
            log.warning("%s; retried with the next save", exc)

    def predictions(
        self, namespace: str, model: str, revision: str, event_id: str, data: Mapping[str, Any],
        config: GroundTruthConfig, calibration: CalibrationRef | None, max_rows: int,
    ) -> int:
        """Record a response's scored rows; the number joined with a label that was already waiting."""
        values = scores(data, config.task, max_rows)
        store = self.store(namespace, model, config)
        joined = 0
        ring = None
        if config.task == "binary":
            ring = self.scores.setdefault((namespace, model, revision), deque(maxlen=self.window_size))
            self.calibration_of[(namespace, model, revision)] = calibration
        for i, value in enumerate(values):
            if value is None:
                continue
            joined += store.prediction(event_id if len(values) == 1 else f"{event_id}/{i}", revision, value)
            if ring is not None:
                ring.append(value)
        self.save(namespace, model, durable=False)
        return joined

    def labels(self, namespace: str, model: str, config: GroundTruthConfig, pairs: list[tuple[str, float]]) -> int:
        """Apply parsed labels (all checked first by parse_labels); the number that joined now. With a state dir
        they are on disk when this returns (StateError otherwise: not to be acknowledged)."""
        store = self.store(namespace, model, config)
        joined = sum(store.label(i, v) is not None for i, v in pairs)
        self.save(namespace, model, durable=True)
        self.metrics.update(namespace, model, store)
        return joined

    def needs_calibration(self, ref: CalibrationRef | None) -> bool:
        if ref is None or ref in self.calibrations:
            return False
        failed = self.calibration_failed.get(ref)
        return failed is None or self.clock() - failed > CALIBRATION_RETRY

    def add_calibration(self, ref: CalibrationRef, calibration: Calibration | None) -> None:
        if calibration is None:
            self.calibration_failed[ref] = self.clock()
            while len(self.calibration_failed) > MAX_CALIBRATIONS:
                self.calibration_failed.pop(next(iter(self.calibration_failed)))
            return
        self.calibration_failed.pop(ref, None)
        self.calibrations[ref] = calibration
        while len(self.calibrations) > MAX_CALIBRATIONS:
            self.calibrations.popitem(last=False)

    def forget(self, namespace: str, model: str) -> None:
        self.stores.pop((namespace, model), None)
        if self.state is not None:
            self.state.forget((namespace, model))
        for key in [k for k in self.scores if k[:2] == (namespace, model)]:
            self.scores.pop(key)
            self.calibration_of.pop(key, None)
        self.metrics.forget(namespace, model)

    def evaluate(self, served: Callable[[str, str], set[str] | None]) -> None:
        """Refresh every gauge. `served` gives a model's revisions served now (stable, canary), or None when it is
        no longer monitored with ground truth: such a model is dropped, and so are revisions no longer served
        (their figures and score rings), so the state stays bounded over any number of versions. The caller
        calls this only once the monitored models are known (a restarted monitor's first list), or it would
        drop every store it has just loaded."""
        for namespace, model in [k for k in self.stores if served(*k) is None]:
            self.forget(namespace, model)
        for (namespace, model), (_, store) in self.stores.items():
            live = served(namespace, model) or set()
            for revision in [r for r in store.quality if r not in live]:
                store.drop_revision(revision)
                self.metrics.forget_revision(namespace, model, revision)
            for key in [k for k in self.scores if k[:2] == (namespace, model) and k[2] not in live]:
                self.scores.pop(key)
                self.calibration_of.pop(key, None)
                self.metrics.forget_revision(namespace, model, key[2])
            store.expire()  # a scrape reports what is current, not what was pending at the last write
            self.save(namespace, model, durable=False)
            self.metrics.update(namespace, model, store)
        for (namespace, model, revision), ring in self.scores.items():
            ref = self.calibration_of.get((namespace, model, revision))
            calibration = self.calibrations.get(ref) if ref else None
            # A model that answers classes has no scores to estimate from, calibrated or not.
            classes = all(v in (0.0, 1.0) for v in ring)
            if calibration is None or len(ring) < self.min_samples or classes:
                self.metrics.set_estimate(namespace, model, revision, None)
                continue
            config = self.stores[(namespace, model)][0]
            self.metrics.set_estimate(namespace, model, revision, estimate(list(ring), calibration, config.threshold))
