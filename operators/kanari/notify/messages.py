"""What to tell the team, decided from what the controller did: pure functions of Events and status.

The controller emits one Kubernetes Event per state change; each notification here stands for one of those
Events (rollout started, step advanced, paused, promoted, rolled back), or for a new or changed record the
alert receiver wrote in status.retraining (drift alert, retraining run started or failed to start), or for the
rollout of a model that a retraining run produced (retraining finished). Templates use `$field` placeholders
(string.Template: no attribute access, no code).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kanari.api.v1alpha1 import ModelRef, RetrainRecord
from kanari.dashboard.status_view import RolloutStatus, read_status

KINDS = ("rollout_started", "step_advanced", "paused", "promoted", "rolled_back", "drift_alert",
         "retraining_started", "retraining_failed", "retraining_finished")
BY_REASON = {"RolloutStarted": "rollout_started", "StepAdvanced": "step_advanced", "Paused": "paused",
             "Promoted": "promoted", "RolledBack": "rolled_back"}
SEVERITY = {"rolled_back": "error", "retraining_failed": "error", "drift_alert": "warning", "paused": "warning"}

TEMPLATES: dict[str, str] = {
    "rollout_started": "$model: rollout of $canary started (stable $stable). $message",
    "step_advanced": "$model: $message; canary $canary at $weight%",
    "paused": "$model: paused at step $step ($reason): $message",
    "promoted": "$model: $version promoted, it serves all traffic. $message",
    "rolled_back": "$model: rolled back $revision: $metric = $value breached $threshold. $message",
    "drift_alert": "$model: drift alert $alert fired",
    "retraining_started": "$model: retraining run $run started by $alert",
    "retraining_failed": "$model: retraining for $alert could not start ($outcome)",
    "retraining_finished": "$model: retraining run $run finished; $version is rolling out",
}


class TemplateError(ValueError):
    pass


def check_templates(overrides: Mapping[str, str]) -> dict[str, string.Template]:
    """Default templates with `overrides`; a bad kind or placeholder names itself."""
    out = {}
    for kind, text in {**TEMPLATES, **overrides}.items():
        if kind not in KINDS:
            raise TemplateError(f"templates.{kind}: unknown event (one of {', '.join(KINDS)})")
        tpl = string.Template(text)
        if not tpl.is_valid():
            raise TemplateError(f"templates.{kind}: invalid placeholder in {text!r} (use $name or ${{name}})")
        out[kind] = tpl
    return out


@dataclass(frozen=True)
class Notification:
    kind: str
    namespace: str
    name: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.kind, "info")

    def text(self, templates: Mapping[str, string.Template]) -> str:
        values = {"model": f"{self.namespace}/{self.name}", "namespace": self.namespace, "name": self.name,
                  **self.fields}
        return " ".join(templates[self.kind].safe_substitute(values).split())


def _label(ref: ModelRef | None) -> str:
    return (ref.label if ref is not None else "") or "-"


def _base(st: RolloutStatus) -> dict[str, str]:
    return {"stable": _label(st.stable), "canary": _label(st.canary), "weight": str(st.canary_weight),
            "step": str(st.currentStep + 1), "phase": st.phase}


def _record_key(r: RetrainRecord) -> str:
    return f"{r.fingerprint}|{r.startsAt}|{r.at}"


def from_events(namespace: str, name: str, status: Any, events: Iterable[Any]) -> list[Notification]:
    """One notification per controller Event of a notified reason, in order. `status`: the status written."""
    st = read_status(status)
    out = []
    for ev in events:
        kind = BY_REASON.get(getattr(ev, "reason", ""))
        if kind is None:
            continue
        fields = {**_base(st), "message": str(getattr(ev, "message", ""))}
        if kind == "paused":
            pc = st.pauseConditions[-1] if st.pauseConditions else None
            fields["reason"] = pc.reason if pc else "Paused"
        elif kind == "promoted":
            fields["version"] = _label(st.stable)
        elif kind == "rolled_back":
            failing = st.failing()
            fields["revision"] = st.abortedRevision or (failing[0].revision if failing else "-")
            if failing:
                _, metric, m = failing
                fields.update(metric=metric.name, value="-" if m.value is None else f"{m.value:.4g}",
                              threshold=m.threshold or "-")
            else:  # aborted by a person, or a deadline: no metric failed
                fields.update(metric="-", value="-", threshold="-")
        out.append(Notification(kind, namespace, name, fields))
    return out


def from_retraining(namespace: str, name: str, before: Mapping[str, str], status: Any,
                    not_before: str) -> tuple[list[Notification], dict[str, str]]:
    """Notifications for retraining records that appeared or changed outcome since `before` ({key: outcome});
    records older than `not_before` (ISO time the notifier started) are taken as already told. Returns the
    notifications and the new {key: outcome}."""
    st = read_status(status)
    seen = dict(before)
    out = []
    for r in st.retraining:
        key, outcome = _record_key(r), r.outcome
        if r.at < not_before:
            seen[key] = outcome
            continue
        fields = {"alert": r.alert or "-", "run": r.run or "-", "outcome": outcome or "-"}
        if key not in seen:
            out.append(Notification("drift_alert", namespace, name, fields))
        if seen.get(key) != outcome:
            if outcome == "Started":
                out.append(Notification("retraining_started", namespace, name, fields))
            elif outcome not in ("", "Starting"):
                out.append(Notification("retraining_failed", namespace, name, fields))
        seen[key] = outcome
    return out, seen


def retraining_finished(namespace: str, name: str, status: Any, events: Iterable[Any]) -> list[Notification]:
    """A rollout started for a model whose lineage names a run the receiver started: that run finished."""
    if not any(getattr(ev, "reason", "") == "RolloutStarted" for ev in events):
        return []
    st = read_status(status)
    run = (st.lineage.pipelineRun if st.lineage else None) or ""
    started = [r for r in st.retraining if r.outcome == "Started" and r.run]
    if not run or not any(r.run == run for r in started):
        return []
    return [Notification("retraining_finished", namespace, name,
                         {**_base(st), "run": run, "version": _label(st.canary)})]
