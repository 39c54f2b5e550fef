"""Whether a drift alert starts a retraining run: pure decisions over an Alertmanager alert, the
model's retraining policy and its trigger history.

Alertmanager webhook payload version 4: act only on `status: firing` alerts that carry the retrain
label; an alert is the same alert again while `fingerprint` and `startsAt` are unchanged (Alertmanager
re-sends firing alerts every repeat_interval and retries failed deliveries).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kanari.api.conditions import now_iso
from kanari.api.duration import parse_duration
from kanari.api.v1alpha1 import RetrainRecord, RetrainSpec
from kanari.controller.drift_rules import (
    ANNOTATION_COOLDOWN,
    ANNOTATION_MAX_PER_DAY,
    ANNOTATION_PARAMETERS,
    ANNOTATION_PIPELINE,
    RETRAIN_LABEL,
)

DAY = timedelta(days=1)
# Outcomes of a trigger; a failed launch neither blocks a retry nor counts against cooldown or cap.
STARTING = "Starting"
STARTED = "Started"
FAILED = "Failed"
COUNTED = (STARTING, STARTED)


class MalformedPayload(ValueError):
    """The webhook body is not an Alertmanager v4 payload; the message names the field."""


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    fingerprint: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def namespace(self) -> str:
        return self.labels.get("namespace", "")

    @property
    def model(self) -> str:
        return self.labels.get("model", "")

    def summary(self) -> dict[str, Any]:
        """What the training run gets as its parameter: enough to say why it runs."""
        return {
            "alertname": self.name,
            "status": self.status,
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": self.starts_at,
            "fingerprint": self.fingerprint,
        }


def parse_payload(body: Any) -> list[Alert]:
    if not isinstance(body, dict):
        raise MalformedPayload("body: expected a JSON object")
    if str(body.get("version")) != "4":
        raise MalformedPayload(f"version: expected \"4\" (Alertmanager webhook), got {body.get('version')!r}")
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise MalformedPayload("alerts: expected a list")
    out = []
    for i, raw in enumerate(alerts):
        if not isinstance(raw, dict):
            raise MalformedPayload(f"alerts[{i}]: expected an object")
        for name in ("status", "startsAt", "fingerprint"):
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise MalformedPayload(f"alerts[{i}].{name}: expected a non-empty string")
        labels, annotations = raw.get("labels", {}), raw.get("annotations", {})
        if not isinstance(labels, dict) or not isinstance(annotations, dict):
            raise MalformedPayload(f"alerts[{i}]: labels and annotations must be objects")
        try:
            _parse_time(raw["startsAt"])
        except ValueError:
            raise MalformedPayload(f"alerts[{i}].startsAt: not an RFC 3339 time: {raw['startsAt']!r}") from None
        out.append(
            Alert(
                status=raw["status"],
                labels={str(k): str(v) for k, v in labels.items()},
                annotations={str(k): str(v) for k, v in annotations.items()},
                starts_at=raw["startsAt"],
                fingerprint=raw["fingerprint"],
            )
        )
    return out


def _parse_time(text: str) -> datetime:
    # Alertmanager writes nanoseconds; Python's parser takes at most microseconds.
    head, dot, frac = text.partition(".")
    if dot:
        digits = "".join(ch for ch in frac if ch.isdigit())
        zone = frac[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RetrainPolicy:
    pipeline: str
    cooldown_seconds: float
    max_per_day: int
    parameters: dict[str, str]

    @classmethod
    def from_spec(cls, spec: RetrainSpec) -> RetrainPolicy:
        return cls(spec.pipeline, parse_duration(spec.cooldown), spec.maxPerDay, dict(spec.parameters))


def policy_for(alert: Alert, configured: Mapping[str, RetrainSpec]) -> RetrainPolicy | None:
    """The alert's own policy annotations (generated from spec.monitoring.retrain) or the receiver's
    config for namespace/model; ValueError names a broken annotation."""
    ann = alert.annotations
    if ANNOTATION_PIPELINE in ann:
        raw: dict[str, Any] = {"pipeline": ann[ANNOTATION_PIPELINE]}
        if ANNOTATION_COOLDOWN in ann:
            raw["cooldown"] = ann[ANNOTATION_COOLDOWN]
        if ANNOTATION_MAX_PER_DAY in ann:
            raw["maxPerDay"] = ann[ANNOTATION_MAX_PER_DAY]
        if ANNOTATION_PARAMETERS in ann:
            try:
                raw["parameters"] = json.loads(ann[ANNOTATION_PARAMETERS])
            except json.JSONDecodeError:
                raise ValueError(f"annotation {ANNOTATION_PARAMETERS}: not JSON") from None
        try:
            return RetrainPolicy.from_spec(RetrainSpec.model_validate(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"alert annotations: retrain {field}: {err['msg']}") from None
    spec = configured.get(f"{alert.namespace}/{alert.model}")
    return RetrainPolicy.from_spec(spec) if spec is not None else None


@dataclass(frozen=True)
class TriggerDecision:
    trigger: bool
    reason: str  # trigger | not_firing | not_retrain_alert | no_model | no_policy | bad_policy | duplicate | cooldown | daily_cap
    detail: str


def decide(
    alert: Alert, policy: RetrainPolicy | None, history: Sequence[RetrainRecord], now: datetime
) -> TriggerDecision:
    """Trigger or not, and why. `history` is the model's trigger records, oldest first."""
    if alert.status != "firing":
        return TriggerDecision(False, "not_firing", f"alert is {alert.status}; only firing alerts start training")
    if alert.labels.get(RETRAIN_LABEL) != "true":
        return TriggerDecision(False, "not_retrain_alert", f"alert has no {RETRAIN_LABEL}=\"true\" label")
    if not alert.namespace or not alert.model:
        return TriggerDecision(False, "no_model", "alert has no namespace/model labels")
    if policy is None:
        return TriggerDecision(
            False, "no_policy", f"no retraining pipeline known for {alert.namespace}/{alert.model}"
        )
    counted = [r for r in history if r.outcome in COUNTED]
    for r in counted:
        if r.fingerprint == alert.fingerprint and r.startsAt == alert.starts_at:
            return TriggerDecision(False, "duplicate", f"already triggered at {r.at} (run {r.run or 'starting'})")
    times = sorted(_parse_time(r.at) for r in counted)
    if times and now - times[-1] < timedelta(seconds=policy.cooldown_seconds):
        until = times[-1] + timedelta(seconds=policy.cooldown_seconds)
        return TriggerDecision(False, "cooldown", f"last retraining at {now_iso(times[-1])}; cooldown until {now_iso(until)}")
    recent = [t for t in times if now - t < DAY]
    if len(recent) >= policy.max_per_day:
        return TriggerDecision(
            False, "daily_cap", f"{len(recent)} retraining runs in the last 24h (maxPerDay {policy.max_per_day})"
        )
    return TriggerDecision(True, "trigger", f"starting pipeline {policy.pipeline}")
