"""Whether a drift alert starts a retraining run: pure decisions over an Alertmanager alert, the
model's retraining policy and its trigger history.

Alertmanager webhook payload version 4: act only on `status: firing` alerts that carry the retrain
label; an alert is the same alert again while `fingerprint` and `startsAt` are unchanged (Alertmanager
re-sends firing alerts every repeat_interval and retries failed deliveries).

An alert only names which ModelDeployment fired (its `namespace` and `model` labels). Everything that
decides what runs and how often (pipeline, parameters, cooldown, daily cap) comes from the
ModelDeployment's spec.monitoring.retrain or the receiver's own config: anyone who can post to
Alertmanager's API can make an alert say anything, so its annotations are never read as policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kanari.api.conditions import now_iso
from kanari.api.duration import parse_duration
from kanari.api.v1alpha1 import RetrainRecord, RetrainSpec
from kanari.controller.drift_rules import RETRAIN_LABEL

DAY = timedelta(days=1)
# What a namespace or a ModelDeployment can be called (DNS-1123 label); nothing else names one.
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Outcomes of a trigger; a failed launch neither blocks a retry nor counts against cooldown or cap.
STARTING = "Starting"
STARTED = "Started"
FAILED = "Failed"
# A Starting record older than this is a claim whose process died before it launched (or recorded the
# launch): the alert is retried, not answered "duplicate" forever.
STARTING_TIMEOUT = timedelta(minutes=10)
# After a failed launch the same alert is retried (on Alertmanager's redelivery) no sooner than this,
# doubling per consecutive failure, up to RETRY_MAX; after MAX_ATTEMPTS failures it is given up.
RETRY_BASE = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=1)
MAX_ATTEMPTS = 8


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


MAX_FINGERPRINT = 64  # Alertmanager's are 16 hex digits
MAX_ALERTNAME = 253


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
        # What is recorded in status.retraining stays small: an unbounded name or fingerprint, written into
        # the ModelDeployment, could push the object past etcd's size limit and stop every later status write.
        if len(raw["fingerprint"]) > MAX_FINGERPRINT:
            raise MalformedPayload(f"alerts[{i}].fingerprint: longer than {MAX_FINGERPRINT} characters")
        if len(str(labels.get("alertname", ""))) > MAX_ALERTNAME:
            raise MalformedPayload(f"alerts[{i}].labels.alertname: longer than {MAX_ALERTNAME} characters")
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


def policy_from_model_deployment(obj: Mapping[str, Any]) -> RetrainPolicy | None:
    """spec.monitoring.retrain of a ModelDeployment object; None when monitoring or retraining is off.
    The API server validated the spec against the CRD; a spec that still does not parse is treated as
    having no policy (the controller reports it as InvalidSpec)."""
    monitoring = ((obj.get("spec") or {}).get("monitoring")) or {}
    if not monitoring.get("enabled", True) or not monitoring.get("retrain"):
        return None
    try:
        return RetrainPolicy.from_spec(RetrainSpec.model_validate(monitoring["retrain"]))
    except (ValidationError, ValueError):
        return None


def policy_for(alert: Alert, configured: Mapping[str, RetrainSpec]) -> RetrainPolicy | None:
    """The receiver's configured policy for the ModelDeployment the alert names (never the alert's own
    annotations)."""
    spec = configured.get(f"{alert.namespace}/{alert.model}")
    return RetrainPolicy.from_spec(spec) if spec is not None else None


@dataclass(frozen=True)
class TriggerDecision:
    trigger: bool
    # trigger | not_firing | not_retrain_alert | no_model | no_policy | duplicate | cooldown | daily_cap
    # | backoff | gave_up | rate_limited
    reason: str
    detail: str

    @property
    def retry_later(self) -> bool:
        """Not now, but the alert must not be lost: answer 5xx so Alertmanager delivers it again."""
        return self.reason in ("backoff", "rate_limited")


def _live(r: RetrainRecord, now: datetime) -> bool:
    """A record that holds a slot: a started run, or a claim recent enough that its launch may be running."""
    return r.outcome == STARTED or (r.outcome == STARTING and now - _parse_time(r.at) < STARTING_TIMEOUT)


def retry_delay(failures: int) -> timedelta:
    return min(RETRY_BASE * (2 ** max(failures - 1, 0)), RETRY_MAX)


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
    if not (_K8S_NAME.fullmatch(alert.namespace) and _K8S_NAME.fullmatch(alert.model)):
        return TriggerDecision(False, "no_model", "labels namespace/model are not Kubernetes object names")
    if policy is None:
        return TriggerDecision(
            False, "no_policy", f"no retraining pipeline known for {alert.namespace}/{alert.model}"
        )
    counted = [r for r in history if _live(r, now)]
    for r in counted:
        if r.fingerprint == alert.fingerprint and r.startsAt == alert.starts_at:
            return TriggerDecision(False, "duplicate", f"already triggered at {r.at} (run {r.run or 'starting'})")
    same = [r for r in history if r.fingerprint == alert.fingerprint and r.startsAt == alert.starts_at]
    failures = 0
    for r in reversed(same):  # consecutive failed (or abandoned) attempts, newest first
        if r.outcome == STARTED:
            break
        failures += 1
    if failures >= MAX_ATTEMPTS:
        return TriggerDecision(False, "gave_up", f"{failures} launches of this alert failed; not retrying")
    if failures:
        retry_at = _parse_time(same[-1].at) + retry_delay(failures)
        if now < retry_at:
            return TriggerDecision(
                False, "backoff", f"{failures} failed launch(es) of this alert; next try after {now_iso(retry_at)}"
            )
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
