"""Kubernetes-style status conditions and the Events that accompany state changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from kanari.api.v1alpha1 import Condition


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Return conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    value = ("True" if status else "False") if isinstance(status, bool) else status
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type != type_:
            out.append(c)
            continue
        found = True
        ltt = c.lastTransitionTime if c.status == value else now_iso(now)
        out.append(
            Condition(
                type=type_, status=value, reason=reason, message=message,
                lastTransitionTime=ltt, observedGeneration=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_, status=value, reason=reason, message=message,
                lastTransitionTime=now_iso(now), observedGeneration=generation,
            )
        )
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to emit on the ModelDeployment; reasons are CamelCase and greppable."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
