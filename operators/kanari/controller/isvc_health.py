"""Reading a KServe InferenceService's real status: health as Argo CD judges it, and readiness of each part.

The verdicts agree with Argo CD's own health check for InferenceService on the real statuses in
shared/upstream/argocd-kserve-health (a test checks every case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kanari.controller.inferenceservice import REVISION_ANNOTATION

Health = Literal["Healthy", "Progressing", "Degraded", "Suspended", "Missing"]


@dataclass(frozen=True)
class IsvcReading:
    health: Health
    message: str
    ready: bool
    stable_ready: bool
    canary_ready: bool
    url: str | None = None
    serving_revision: str = ""  # our revision annotation, once KServe has observed that generation ("" before)
    preview_url: str | None = None  # the tag-routed URL of the latest revision (Serverless canary/preview)


def _conditions(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    return list((isvc.get("status") or {}).get("conditions") or [])


def _describe(conds: list[dict[str, Any]], transition: str | None) -> str:
    parts = [f"transitionStatus {transition}"] if transition and transition != "UpToDate" else []
    for c in conds:
        if c.get("type") == "Stopped" or c.get("status") == "True":
            continue
        text = f"{c.get('type')} is {c.get('status')}"
        if c.get("reason"):
            text += f" ({c['reason']})"
        if c.get("message"):
            text += f": {c['message']}"
        parts.append(text)
    return "; ".join(parts)


def health(isvc: dict[str, Any] | None) -> tuple[Health, str]:
    if not isvc:
        return "Missing", "InferenceService does not exist yet"
    status = isvc.get("status") or {}
    conds = _conditions(isvc)
    by_type = {c.get("type"): c.get("status") for c in conds}
    transition = (status.get("modelStatus") or {}).get("transitionStatus")
    if by_type.get("Stopped") == "True":
        return "Suspended", "InferenceService is Stopped"
    if transition in ("BlockedByFailedLoad", "InvalidSpec"):
        return "Degraded", _describe(conds, transition)
    if transition == "InProgress":
        return "Progressing", _describe(conds, transition) or "model transition in progress"
    if not conds:
        return "Progressing", "Waiting for status update"
    if any(c.get("status") == "False" for c in conds if c.get("type") != "Stopped"):
        return "Degraded", _describe(conds, transition)
    if by_type.get("Ready") == "True" and all(
        c.get("status") == "True" for c in conds if c.get("type") != "Stopped"
    ):
        return "Healthy", "InferenceService is healthy"
    return "Progressing", _describe(conds, transition) or "Waiting for conditions"


def read(isvc: dict[str, Any] | None, canary_revision: str | None = None) -> IsvcReading:
    """Readiness of the stable and canary parts.

    The canary counts as Ready only when the InferenceService already carries `canary_revision` (our
    revision annotation) and KServe has observed that generation: right after a new template is written, the
    status still describes the previous latest revision (after a rollback, the failed one), which must not
    be mistaken for the new canary.
    """
    verdict, message = health(isvc)
    if not isvc:
        return IsvcReading(verdict, message, False, False, False)
    status = isvc.get("status") or {}
    spec = isvc.get("spec") or {}
    url = status.get("url")
    by_type = {c.get("type"): c.get("status") for c in _conditions(isvc)}
    observed = status.get("observedGeneration")
    generation = (isvc.get("metadata") or {}).get("generation")
    carries = ((isvc.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    observed_now = observed is None or generation is None or observed >= generation
    current = (canary_revision is None or carries == canary_revision) and observed_now
    serving = str(carries or "") if observed_now else ""

    if spec.get("canary"):  # RawDeployment canary: KServe reports each canary's readiness
        canary_ready = current and any(c.get("ready") is True for c in status.get("canaryStatuses") or [])
        stable_ready = by_type.get("PredictorReady") == "True"
        return IsvcReading(verdict, message, verdict == "Healthy", stable_ready, canary_ready, url, serving)

    predictor = (status.get("components") or {}).get("predictor") or {}
    preview = next((t.get("url") for t in predictor.get("traffic") or [] if t.get("tag") == "latest"), None)
    if "canaryTrafficPercent" in (spec.get("predictor") or {}):
        # Serverless canary: the new revision is the latest created one; the stable one is the last rolled out.
        latest_created = predictor.get("latestCreatedRevision")
        canary_ready = bool(
            current and latest_created and predictor.get("latestReadyRevision") == latest_created
        )
        stable_ready = bool(predictor.get("latestRolledoutRevision")) or by_type.get("PredictorReady") == "True"
        return IsvcReading(verdict, message, verdict == "Healthy", stable_ready, canary_ready, url, serving, preview)

    # No canary: a change KServe has not observed yet (a promotion, a new replica count) does not stop the
    # serving revision (Knative routes to the last ready one until another is ready): its readiness holds.
    ready = verdict == "Healthy"
    return IsvcReading(verdict, message, ready, ready, False, url, serving)
