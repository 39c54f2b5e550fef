"""Notifications to Slack, Microsoft Teams and a generic webhook, from the controller, never in its way.

`publish()` is the controller's one call, made where it emits Events: it decides what to tell (pure,
`messages`), puts it on a bounded queue and returns. A background task drains the queue: per-sink rate limit,
one retry, every failure counted in `kanari_notifications_failed_total{sink,reason}` and logged. A slow or
failing webhook delays only other notifications; when the queue is full a notification is dropped and
counted, never waited for.

Configuration (environment; the chart sets it from a Secret for the URLs and from values for the rest):
  KANARI_NOTIFY_SLACK_URL       Slack incoming-webhook URL
  KANARI_NOTIFY_TEAMS_URL       Microsoft Teams workflow (or incoming) webhook URL
  KANARI_NOTIFY_WEBHOOK_URL     generic webhook: JSON {kind, severity, namespace, name, text, fields, time}
  KANARI_NOTIFY_WEBHOOK_TOKEN   optional bearer token for the generic webhook
  KANARI_NOTIFY_EVENTS          comma-separated kinds to send (default: all of messages.KINDS)
  KANARI_NOTIFY_RATE_PER_MINUTE per sink (default 30); above it a notification is dropped and counted
  KANARI_NOTIFY_TEMPLATES       YAML or JSON {kind: template} overriding messages.TEMPLATES
  KANARI_NOTIFY_DASHBOARD_URL   base URL of the dashboard, linked from each message
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from kanari.api.conditions import now_iso
from kanari.notify.messages import Notification, from_events, from_retraining, retraining_finished
from kanari.notify.sinks import ConfigError, Notifier, NotifyConfig

__all__ = ["ConfigError", "Notification", "Notifier", "NotifyConfig", "publish", "reset"]
log = logging.getLogger("kanari.notify")

_NOTIFIER: Notifier | None = None
_DISABLED = False
_RETRAINING: dict[tuple[str, str], dict[str, str]] = {}
_STARTED = now_iso()


def _notifier(env: Mapping[str, str] | None = None) -> Notifier | None:
    global _NOTIFIER, _DISABLED
    if _NOTIFIER is None and not _DISABLED:
        try:
            config = NotifyConfig.from_env(os.environ if env is None else env)
        except ConfigError as exc:
            log.error("notifications disabled: %s", exc)
            _DISABLED = True
            return None
        if not config.sinks:
            _DISABLED = True
            return None
        _NOTIFIER = Notifier(config)
    return _NOTIFIER


def publish(namespace: str, name: str, status: Any, events: Iterable[Any]) -> None:
    """Queue the notifications for what one reconcile did; returns at once, never raises.

    `status`: the ModelDeployment's status after the reconcile (the controller's model or its JSON);
    `events`: the Events the reconcile emitted."""
    try:
        notifier = _notifier()
        if notifier is None:
            return
        doc = status.model_dump(mode="json") if hasattr(status, "model_dump") else status
        events = list(events)
        found = from_events(namespace, name, doc, events)
        key = (namespace, name)
        retrain, _RETRAINING[key] = from_retraining(namespace, name, _RETRAINING.get(key, {}), doc, _STARTED)
        for n in [*found, *retrain, *retraining_finished(namespace, name, doc, events)]:
            notifier.submit(n)
    except Exception:  # a notification problem must never fail a reconcile
        log.exception("notifications for %s/%s", namespace, name)


def reset() -> None:
    """Forget the notifier (tests; a changed environment)."""
    global _NOTIFIER, _DISABLED, _STARTED
    if _NOTIFIER is not None:
        _NOTIFIER.stop()
    _NOTIFIER, _DISABLED, _STARTED = None, False, now_iso()
    _RETRAINING.clear()


async def drain(timeout: float = 5.0) -> None:
    """Wait until queued notifications are delivered (or `timeout`); for tests and shutdown."""
    if _NOTIFIER is not None:
        await asyncio.wait_for(_NOTIFIER.idle(), timeout)
