"""Delayed ground truth and CBPE inside the drift monitor.

The payload logger already brings every prediction here with its inference id (the CloudEvent id) and its
score; for a ModelDeployment with `spec.monitoring.groundTruth`, each scored row goes into that model's
JoinStore under the revision the event was bound to (never one the event names). Labels arrive later,
through `POST /v1/labels/<namespace>/<name>` (bearer token) or the S3 label drop (kanari.monitor.labeldrop),
and join by id. Row i of an event with several rows has the id `<ce-id>/<i>`; a one-row event keeps `<ce-id>`.

CBPE (kanari.judging.cbpe) estimates precision, recall, F1 and ROC-AUC per revision from the last
`window_size` scores, with the isotonic calibration the pipeline registered with the model package
(status.stableModel.calibrationUri, from the registry's kanari:calibration-uri). Without a calibration the
estimate is reported unavailable (kanari_estimated_quality_available 0, no kanari_estimated_quality series):
raw scores are rarely calibrated, and a number computed from them would look like an estimate and not be one.

Memory: one JoinStore per labelled model (bounded by its max_pending and ttl), one bounded score ring per
(model, revision), both dropped with the model; calibrations are a small LRU cache.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from kanari import awsclient
from kanari.judging.cbpe import Calibration, estimate
from kanari.judging.groundtruth import JoinStore
from kanari.judging.labels import QualityMetrics
from kanari.monitor.payload import MalformedEvent, _tensor_rows

log = logging.getLogger("kanari.monitor.groundtruth")

MAX_CALIBRATIONS = 64
MAX_CALIBRATION_BYTES = 1 << 20
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


def load_calibration(uri: str) -> Calibration:
    """calibration.json from s3:// or file:// (a directory URI means its calibration.json); ValueError."""
    from kanari.judging.cbpe import CALIBRATION

    if not uri.endswith(".json"):
        uri = uri.rstrip("/") + "/" + CALIBRATION
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
        try:
            if path.stat().st_size > MAX_CALIBRATION_BYTES:
                raise ValueError(f"{uri}: larger than {MAX_CALIBRATION_BYTES} bytes")
            raw = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{uri}: unreadable ({exc.strerror})") from None
    elif parsed.scheme == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = awsclient.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
            raw = obj["Body"].read(MAX_CALIBRATION_BYTES + 1)
        except (BotoCoreError, ClientError) as exc:
            raise ValueError(f"{uri}: {type(exc).__name__}: {exc}") from None
        if len(raw) > MAX_CALIBRATION_BYTES:
            raise ValueError(f"{uri}: larger than {MAX_CALIBRATION_BYTES} bytes")
    else:
        raise ValueError(f"{uri}: unsupported scheme (use s3:// or file://)")
    try:
        return Calibration.from_dict(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{uri}: not a calibration: {exc}") from None


class GroundTruth:
    """Join stores, score rings and calibrations of the labelled models; the gauges they feed."""

    def __init__(
        self, registry: CollectorRegistry, *, max_pending: int, window_size: int, min_samples: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.metrics = QualityMetrics(registry)
        self.max_pending = max_pending
        self.window_size = window_size
        self.min_samples = min_samples
        self.clock = clock
        self.stores: dict[tuple[str, str], tuple[GroundTruthConfig, JoinStore]] = {}
        self.scores: dict[tuple[str, str, str], deque[float]] = {}
        self.calibration_of: dict[tuple[str, str, str], str | None] = {}
        self.calibrations: OrderedDict[str, Calibration] = OrderedDict()
        self.calibration_failed: dict[str, float] = {}

    def store(self, namespace: str, model: str, config: GroundTruthConfig) -> JoinStore:
        key = (namespace, model)
        found = self.stores.get(key)
        if found is not None and found[0] == config:
            return found[1]
        if found is not None:  # the task or threshold changed: figures under the old ones would mislead
            self.forget(namespace, model)
        store = JoinStore(task=config.task, ttl=config.ttl, max_pending=self.max_pending,  # type: ignore[arg-type]
                          threshold=config.threshold, clock=self.clock)
        self.stores[key] = (config, store)
        return store

    def predictions(
        self, namespace: str, model: str, revision: str, event_id: str, data: Mapping[str, Any],
        config: GroundTruthConfig, calibration_uri: str | None, max_rows: int,
    ) -> int:
        """Record a response's scored rows; the number joined with a label that was already waiting."""
        values = scores(data, config.task, max_rows)
        store = self.store(namespace, model, config)
        joined = 0
        ring = None
        if config.task == "binary":
            ring = self.scores.setdefault((namespace, model, revision), deque(maxlen=self.window_size))
            self.calibration_of[(namespace, model, revision)] = calibration_uri
        for i, value in enumerate(values):
            if value is None:
                continue
            joined += store.prediction(event_id if len(values) == 1 else f"{event_id}/{i}", revision, value)
            if ring is not None:
                ring.append(value)
        return joined

    def labels(self, namespace: str, model: str, config: GroundTruthConfig, pairs: list[tuple[str, float]]) -> int:
        """Apply parsed labels (all checked first by parse_labels); the number that joined now."""
        store = self.store(namespace, model, config)
        joined = sum(store.label(i, v) is not None for i, v in pairs)
        self.metrics.update(namespace, model, store)
        return joined

    def needs_calibration(self, uri: str | None) -> bool:
        if not uri or uri in self.calibrations:
            return False
        failed = self.calibration_failed.get(uri)
        return failed is None or self.clock() - failed > CALIBRATION_RETRY

    def add_calibration(self, uri: str, calibration: Calibration | None) -> None:
        if calibration is None:
            self.calibration_failed[uri] = self.clock()
            while len(self.calibration_failed) > MAX_CALIBRATIONS:
                self.calibration_failed.pop(next(iter(self.calibration_failed)))
            return
        self.calibration_failed.pop(uri, None)
        self.calibrations[uri] = calibration
        while len(self.calibrations) > MAX_CALIBRATIONS:
            self.calibrations.popitem(last=False)

    def forget(self, namespace: str, model: str) -> None:
        self.stores.pop((namespace, model), None)
        for key in [k for k in self.scores if k[:2] == (namespace, model)]:
            self.scores.pop(key)
            self.calibration_of.pop(key, None)
        self.metrics.forget(namespace, model)

    def evaluate(self, served: Callable[[str, str], set[str] | None]) -> None:
        """Refresh every gauge. `served` gives a model's revisions served now (stable, canary), or None when it is
        no longer monitored with ground truth: such a model is dropped, and so are revisions no longer served
        (their figures and score rings), so the state stays bounded over any number of versions."""
        for namespace, model in [k for k in self.stores if served(*k) is None]:
            self.forget(namespace, model)
        for (namespace, model), (_, store) in self.stores.items():
            live = served(namespace, model) or set()
            for revision in [r for r in store.quality if r not in live]:
                del store.quality[revision]
                self.metrics.forget_revision(namespace, model, revision)
            for key in [k for k in self.scores if k[:2] == (namespace, model) and k[2] not in live]:
                self.scores.pop(key)
                self.calibration_of.pop(key, None)
                self.metrics.forget_revision(namespace, model, key[2])
            store.expire()  # a scrape reports what is current, not what was pending at the last write
            self.metrics.update(namespace, model, store)
        for (namespace, model, revision), ring in self.scores.items():
            uri = self.calibration_of.get((namespace, model, revision))
            calibration = self.calibrations.get(uri) if uri else None
            # A model that answers classes has no scores to estimate from, calibrated or not.
            classes = all(v in (0.0, 1.0) for v in ring)
            if calibration is None or len(ring) < self.min_samples or classes:
                self.metrics.set_estimate(namespace, model, revision, None)
                continue
            config = self.stores[(namespace, model)][0]
            self.metrics.set_estimate(namespace, model, revision, estimate(list(ring), calibration, config.threshold))
