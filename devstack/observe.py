"""What the demo watches while it runs, the way an SRE would: the ModelDeployment's status and Events, the
InferenceService's revisions, firing alerts in Prometheus, and the retraining receiver's trigger history.

Each new thing seen becomes a DemoEvent (printed as it arrives and kept for the report).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kanari.api import v1alpha1 as api

from devstack.kubeapi import KubeApi
from devstack.report import DemoEvent

# How the operator's Event reasons read in the timeline.
REASON_KIND = {
    "Promoted": "promoted",
    "RolledBack": "rolled-back",
    "Deployed": "deployed",
}
QUIET_REASONS = {"InferenceServiceReady", "ActionConsumed"}


@dataclass
class Snapshot:
    phase: str = ""
    step: int = 0
    weight: int = 0
    stable: str = ""
    canary: str = ""
    message: str = ""
    spec_arn: str = ""
    observed_generation: int | None = None
    generation: int | None = None


@dataclass
class Observer:
    kube: KubeApi
    namespace: str
    name: str
    prometheus: str
    triggers: Path
    say: Callable[[DemoEvent], None]
    events: list[DemoEvent] = field(default_factory=list)
    md: dict[str, Any] | None = None
    snapshot: Snapshot = field(default_factory=Snapshot)
    status_history: list[tuple[float, Snapshot]] = field(default_factory=list)
    revisions: dict[str, str] = field(default_factory=dict)  # model version -> Knative revision
    firing: dict[str, float] = field(default_factory=dict)  # alertname -> when it last started firing
    _active: set[tuple[str, str]] = field(default_factory=set)
    retrains: list[dict[str, Any]] = field(default_factory=list)
    _seen_events: set[str] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None

    def add(self, kind: str, text: str, t: float | None = None) -> DemoEvent:
        event = DemoEvent(t or time.time(), kind, text)
        self.events.append(event)
        self.say(event)
        return event

    async def run(self, interval: float = 0.5) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            while True:
                for poll in (self._poll_md, self._poll_events, self._poll_isvc, self._poll_alerts, self._poll_retrains):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
                        await poll()
                await asyncio.sleep(interval)
        finally:
            await self._session.close()

    # ----------------------------------------------------------------------------------- polls
    async def _poll_md(self) -> None:
        md = await self.kube.get(KubeApi.path(api.GROUP, api.VERSION, api.PLURAL, self.namespace, self.name))
        if md is None:
            return
        self.md = md
        status = md.get("status") or {}
        snap = Snapshot(
            phase=str(status.get("phase") or ""),
            step=int(status.get("currentStep") or 0),
            weight=int(status.get("canaryWeight") or 0),
            stable=str((status.get("stableModel") or {}).get("version") or ""),
            canary=str((status.get("canaryModel") or {}).get("version") or ""),
            message=str(status.get("message") or ""),
            spec_arn=str(((md.get("spec") or {}).get("model") or {}).get("modelPackageArn") or ""),
            observed_generation=status.get("observedGeneration"),
            generation=(md.get("metadata") or {}).get("generation"),
        )
        if snap != self.snapshot:
            self.snapshot = snap
            self.status_history.append((time.time(), snap))

    async def _poll_events(self) -> None:
        doc = await self.kube.get(KubeApi.path("", "v1", "events", self.namespace))
        items = sorted((doc or {}).get("items") or [], key=lambda e: str((e.get("metadata") or {}).get("creationTimestamp")))
        for e in items:
            key = str((e.get("metadata") or {}).get("name") or (e.get("metadata") or {}).get("uid"))
            involved = e.get("involvedObject") or {}
            if key in self._seen_events or involved.get("name") != self.name:
                continue
            self._seen_events.add(key)
            reason = str(e.get("reason") or "")
            if reason in QUIET_REASONS:
                continue
            kind = REASON_KIND.get(reason, "decision" if e.get("type") != "Warning" else "warning")
            self.add(kind, f"{reason}: {e.get('message', '')}")

    async def _poll_isvc(self) -> None:
        isvc = await self.kube.get(KubeApi.path("serving.kserve.io", "v1beta1", "inferenceservices", self.namespace,
                                                self.name))
        if not isvc:
            return
        version = ((isvc.get("metadata") or {}).get("annotations") or {}).get("kanari.dev/model-version")
        latest = (((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}).get(
            "latestCreatedRevision"
        )
        if version and latest and (isvc.get("status") or {}).get("observedGeneration") == (
            isvc.get("metadata") or {}
        ).get("generation"):
            self.revisions.setdefault(version, latest)

    async def _poll_alerts(self) -> None:
        assert self._session is not None
        query = f'ALERTS{{alertstate="firing", namespace="{self.namespace}", model="{self.name}"}}'
        url = f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        async with self._session.get(url) as resp:
            doc = await resp.json()
        active: set[tuple[str, str]] = set()
        started: dict[str, list[dict[str, str]]] = {}
        for r in (doc.get("data") or {}).get("result") or []:
            labels = r.get("metric") or {}
            key = (labels.get("alertname", "?"), labels.get("feature", ""))
            active.add(key)
            if key not in self._active:
                started.setdefault(key[0], []).append(labels)
        for name, alerts in sorted(started.items()):
            self.firing[name] = time.time()
            severity = alerts[0].get("severity", "?")
            features = sorted(a["feature"] for a in alerts if a.get("feature"))
            where = f" for {len(features)} feature(s): {', '.join(features)}" if features else ""
            # Warnings are shown; only critical alerts route to retraining, so only they are markers.
            self.add("alert" if severity == "critical" else "warning",
                     f"{name} firing in Prometheus{where} (severity {severity})")
        self._active = active

    async def _poll_retrains(self) -> None:
        if not self.triggers.exists():
            return
        doc = json.loads(self.triggers.read_text())
        self.retrains = list((doc.get("models") or {}).get(f"{self.namespace}/{self.name}") or [])
        for i, r in enumerate(self.retrains):
            key = f"{i}:{r.get('outcome')}"
            if r.get("outcome") not in (None, "", "Starting") and key not in self._seen_events:
                self._seen_events.add(key)
                self.add("retrain", f"receiver {r.get('outcome')} retraining run {r.get('run') or '?'} for alert "
                                    f"{r.get('alert')}")

    # ----------------------------------------------------------------------------------- waiting
    async def until(self, check: Callable[[Snapshot], bool], timeout: float, what: str) -> Snapshot:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.md is not None and check(self.snapshot):
                return self.snapshot
            await asyncio.sleep(0.25)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; the ModelDeployment is "
                           f"{self.snapshot.phase or 'not there'}: {self.snapshot.message}")
