"""A small, synchronous KServe stand-in for property tests: it takes each desired InferenceService the
controller emits, does what KServe (and Knative, in Serverless mode) would do with it, and reports the
resulting traffic per model and the status KServe would write.

Serverless reuses devstack's pure Knative routing (`plan_traffic`, `build_status`, `template_hash`): a new
revision per template change; with canaryTrafficPercent, that percent to the latest *ready* revision and
the rest to the last rolled-out one; without it, everything to the latest ready revision.
RawDeployment: two Deployments (predictor, canary); each keeps serving its last Ready template while a new
one rolls out (a rolling update), the canary's share goes to the canary Deployment's pods.

Readiness is in the test's hands: `settle(ready=...)` makes the newest templates Ready (unless the model is
one the test declared broken, which never becomes Ready).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from devstack.kserve_standin import Revision, Service, build_status, plan_traffic, template_hash


def _model(pred: dict[str, Any]) -> str:
    return str((pred.get("model") or {}).get("storageUri") or "")


@dataclass
class _Deployment:
    """A RawDeployment Deployment: the template asked for, and the last template whose pods are Ready."""

    template: dict[str, Any] | None = None
    ready_template: dict[str, Any] | None = None


@dataclass
class KServeSim:
    mode: str  # Serverless | RawDeployment
    broken: set[str] = field(default_factory=set)  # storageUris that never become Ready
    isvc: dict[str, Any] | None = None
    observed: int = 0
    svc: Service = field(default_factory=lambda: Service("ml", "fraud"))
    raw: dict[str, _Deployment] = field(default_factory=lambda: {"predictor": _Deployment(), "canary": _Deployment()})

    # ------------------------------------------------------------------ what the controller writes
    def apply(self, desired: dict[str, Any] | None) -> None:
        if desired is None:
            return
        if self.isvc is None:
            self.isvc = copy.deepcopy(desired)
            self.isvc["metadata"]["generation"] = 1
            self.isvc["status"] = {}
            return
        before = json.dumps(self.isvc["spec"], sort_keys=True)
        after = json.dumps(desired["spec"], sort_keys=True)
        self.isvc["metadata"] = {**copy.deepcopy(desired["metadata"]), "generation": self.isvc["metadata"]["generation"]}
        if before != after:
            self.isvc["spec"] = copy.deepcopy(desired["spec"])
            self.isvc["metadata"]["generation"] += 1

    # ------------------------------------------------------------------ what KServe does
    def settle(self, ready: bool) -> None:
        """KServe observes the current spec; with `ready`, the newest templates' pods become Ready."""
        if self.isvc is None:
            return
        self.observed = self.isvc["metadata"]["generation"]
        if self.mode == "Serverless":
            self._serverless(ready)
        else:
            self._raw(ready)

    def _serverless(self, ready: bool) -> None:
        assert self.isvc is not None
        pred = self.isvc["spec"]["predictor"]
        digest = template_hash(pred)
        latest = self.svc.revisions[-1] if self.svc.revisions else None
        if latest is None or latest.template_hash != digest:
            latest = Revision(name=f"fraud-predictor-{len(self.svc.revisions) + 1:05d}", template_hash=digest,
                              storage_uri=_model(pred), version="", logger=None)
            self.svc.revisions.append(latest)
        if ready:
            if latest.storage_uri in self.broken:
                latest.failed = "model failed to load"
            else:
                latest.ready = True
                self.svc.latest_ready = latest.name
        canary = pred.get("canaryTrafficPercent")
        traffic = plan_traffic(self.svc, canary)
        if not (canary is not None and self.svc.rolled_out and self.svc.rolled_out != self.svc.latest_ready):
            full = next((t for t in traffic if t.percent == 100), None)
            if full and self.svc.rolled_out != full.revision:
                self.svc.previous_rolled_out, self.svc.rolled_out = self.svc.rolled_out, full.revision
                traffic = plan_traffic(self.svc, canary)
        status = build_status(self.svc, self.isvc, traffic, "http://fraud.ml.example.com")
        for t, entry in zip(traffic, status["components"]["predictor"]["traffic"], strict=True):
            if t.tag == "latest" and len(traffic) == 2:
                entry["url"] = "http://latest-fraud-predictor.ml.example.com"
        self.isvc["status"] = status

    def _raw(self, ready: bool) -> None:
        assert self.isvc is not None
        spec = self.isvc["spec"]
        canaries = spec.get("canary") or []
        self.raw["predictor"].template = spec["predictor"]
        self.raw["canary"].template = canaries[0]["predictor"] if canaries else None
        if not canaries:
            self.raw["canary"].ready_template = None
        for dep in self.raw.values():
            if ready and dep.template is not None and _model(dep.template) not in self.broken:
                dep.ready_template = dep.template
        predictor_ok = self.raw["predictor"].ready_template == self.raw["predictor"].template
        conds = [{"type": t, "status": "True" if predictor_ok else "False", "lastTransitionTime": "t"}
                 for t in ("PredictorReady", "IngressReady", "Ready")]
        status: dict[str, Any] = {"observedGeneration": self.observed, "conditions": conds,
                                  "modelStatus": {"transitionStatus": "UpToDate" if predictor_ok else "InProgress"}}
        if canaries:
            canary_ok = self.raw["canary"].ready_template is not None and \
                self.raw["canary"].ready_template == self.raw["canary"].template
            status["canaryStatuses"] = [{"name": "canary-0", "ready": canary_ok}]
            if not canary_ok:
                conds[-1]["status"] = "False"
        self.isvc["status"] = status

    # ------------------------------------------------------------------ what users see
    def traffic(self) -> dict[str, int]:
        """Percent of requests each model (storageUri) answers, as things stand."""
        if self.isvc is None:
            return {}
        out: dict[str, int] = {}
        if self.mode == "Serverless":
            pred = (self.isvc.get("status") or {}).get("components", {}).get("predictor") or {}
            for t in pred.get("traffic") or []:
                rev = self.svc.revision(t["revisionName"])
                if rev is not None and t["percent"]:
                    out[rev.storage_uri] = out.get(rev.storage_uri, 0) + int(t["percent"])
            return out
        spec = self.isvc["spec"]
        canaries = spec.get("canary") or []
        share = int(canaries[0]["trafficPercent"]) if canaries and self.raw["canary"].ready_template else 0
        stable = self.raw["predictor"].ready_template
        if stable is not None and 100 - share:
            out[_model(stable)] = out.get(_model(stable), 0) + 100 - share
        canary = self.raw["canary"].ready_template
        if canary is not None and share:
            out[_model(canary)] = out.get(_model(canary), 0) + share
        return out

    def ready_preview(self) -> str | None:
        """The model a Ready canary/preview template serves, whatever its share (a BlueGreen preview at 0%)."""
        if self.isvc is None:
            return None
        if self.mode == "Serverless":
            pred = self.isvc["spec"]["predictor"]
            latest = self.svc.revision(self.svc.latest_ready)
            if "canaryTrafficPercent" in pred and latest is not None:
                return latest.storage_uri
            return None
        canary = self.raw["canary"].ready_template
        return _model(canary) if canary is not None else None
