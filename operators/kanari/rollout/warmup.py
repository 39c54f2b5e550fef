"""The warm-up gate's decision: may the canary take traffic yet? Pure: no I/O, no clock.

(spec.rollout.warmup, the canary revision, status.warmup, what the prober saw) -> the next status.warmup
and one of: warming (hold the canary at 0%, look again soon), warm (traffic may move), failed (the budget
ran out: the engine rolls back naming the figure).

What counts:
- A pod is warm once it has answered `requests` warm-up requests successfully (the prober decides what a
  success is: a 2xx JSON prediction within timeoutSeconds; errors, timeouts and garbage never count).
- The canary is warm once at least one pod was observed and every pod observed is warm. No pod, no
  samples, no address: not warm (never weight on missing data), and the budget keeps running.
- The budget counts from the first time the gate saw the revision (status.warmup.startedAt, kept across
  restarts): it covers scheduling, the model's load (a Neuron compile at start can take many minutes) and
  the warm-up answers. A canary that is not warm when it runs out is a failed rollout, not a pause: a
  revision that cannot start within its budget would cold-start as slowly again on every scale-up.
- Counts merge by pod as the larger of what status holds and what the prober reports: a restarted
  operator's prober starts counting at zero, and what a pod did answer before the restart stays answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from kanari.api.conditions import now_iso, parse_time
from kanari.api.v1alpha1 import WarmupPod, WarmupSpec, WarmupStatus

REASON = "WarmingUp"
RECHECK_SECONDS = 5.0  # how soon a warming canary is looked at again (the prober wakes the loop sooner)


@dataclass(frozen=True)
class PodObservation:
    name: str
    scheduled_at: datetime | None = None  # the pod's PodScheduled condition time
    answered: int = 0  # successful warm-up answers the prober counted
    failed: int = 0
    first_success_at: datetime | None = None
    latency_seconds: float | None = None  # slowest successful answer
    last_error: str = ""


@dataclass(frozen=True)
class WarmupObservation:
    """What the prober (kanari.controller.warmup) has seen of one canary revision so far."""

    revision: str
    pods: tuple[PodObservation, ...] = ()
    serving_revision: str = ""  # Knative's revision name the requests reached (Serverless)
    source: str = ""  # where the warm-up inputs came from
    error: str | None = None  # why no request could be sent (no pod, no address, no samples)


State = Literal["warming", "warm", "failed"]


@dataclass(frozen=True)
class GateResult:
    state: State
    status: WarmupStatus
    message: str
    wake: datetime | None = None


def _max_opt(a: float | None, b: float | None) -> float | None:
    vals = [v for v in (a, b) if v is not None]
    return max(vals) if vals else None


def _min_time(a: str | None, b: datetime | None) -> str | None:
    times = [t for t in (parse_time(a) if a else None, b) if t is not None]
    return now_iso(min(times)) if times else None


def _merge(previous: list[WarmupPod], obs: WarmupObservation) -> list[WarmupPod]:
    if not obs.pods:
        return previous  # nothing seen of the pods this time (an error, none yet): what was seen stands
    before = {p.name: p for p in previous}
    out = []
    for o in obs.pods[:50]:
        p = before.get(o.name) or WarmupPod(name=o.name)
        out.append(WarmupPod(
            name=o.name,
            scheduledAt=p.scheduledAt or (now_iso(o.scheduled_at) if o.scheduled_at else None),
            firstSuccessAt=_min_time(p.firstSuccessAt, o.first_success_at),
            answered=max(p.answered, o.answered),
            failed=max(p.failed, o.failed),
            latencySeconds=_max_opt(p.latencySeconds, o.latency_seconds),
            lastError=(o.last_error or p.lastError)[:300],
        ))
    return out


def _cold_start(pods: list[WarmupPod]) -> float | None:
    """Worst pod: scheduled -> first successful answer (pods whose scheduling time is unknown are left out)."""
    spans = []
    for p in pods:
        start, first = parse_time(p.scheduledAt), parse_time(p.firstSuccessAt)
        if start is not None and first is not None:
            spans.append(max(0.0, (first - start).total_seconds()))
    return max(spans) if spans else None


def _progress(spec: WarmupSpec, st: WarmupStatus) -> str:
    warm = sum(1 for p in st.pods if p.answered >= spec.requests)
    slowest = min((p.answered for p in st.pods), default=0)
    errors = "; ".join(f"{p.name}: {p.lastError}" for p in st.pods if p.lastError and p.answered < spec.requests)
    text = f"{warm}/{len(st.pods)} canary pods warm (fewest answers {slowest}/{spec.requests})"
    if not st.pods:
        text = "no canary pod answered yet"
    if st.message and not st.pods:
        text += f": {st.message}"
    elif errors:
        text += f"; last errors: {errors[:400]}"
    return text


def gate(
    spec: WarmupSpec, revision: str, previous: WarmupStatus | None, obs: WarmupObservation | None, now: datetime
) -> GateResult:
    st = (
        previous.model_copy(deep=True) if previous is not None and previous.revision == revision
        else WarmupStatus(revision=revision, startedAt=now_iso(now), budgetSeconds=spec.budgetSeconds)
    )
    if st.succeededAt:
        return GateResult("warm", st, st.message or f"warm since {st.succeededAt}")
    if st.failedAt:
        return GateResult("failed", st, st.message)
    st.budgetSeconds = spec.budgetSeconds
    if obs is not None and obs.revision == revision:
        st.pods = _merge(st.pods, obs)
        st.source = obs.source or st.source
        st.servingRevision = obs.serving_revision or st.servingRevision
        st.message = obs.error or ""
        st.answered = sum(p.answered for p in st.pods)
        st.failed = sum(p.failed for p in st.pods)
        st.latencySeconds = max((p.latencySeconds for p in st.pods if p.latencySeconds is not None), default=None)
        st.coldStartSeconds = _cold_start(st.pods)
    if st.pods and all(p.answered >= spec.requests for p in st.pods):
        st.succeededAt = now_iso(now)
        cold = f", cold start {st.coldStartSeconds:.1f} s" if st.coldStartSeconds is not None else ""
        lat = f", slowest answer {st.latencySeconds:.2f} s" if st.latencySeconds is not None else ""
        msg = f"{len(st.pods)} canary pod(s) answered {spec.requests} warm-up requests each{lat}{cold}"
        st.message = msg
        return GateResult("warm", st, msg)
    started = parse_time(st.startedAt) or now
    deadline = started + timedelta(seconds=spec.budgetSeconds)
    elapsed = (now - started).total_seconds()
    if now >= deadline:
        msg = (f"warm-up not done within budgetSeconds {spec.budgetSeconds} ({elapsed:.0f} s since the canary was "
               f"created): {_progress(spec, st)}")
        st.failedAt = now_iso(now)
        st.message = msg[:1000]
        return GateResult("failed", st, st.message)
    # No running clock in the message: it is stored in status, and a message that changed every pass would
    # rewrite the status every few seconds while nothing happened.
    msg = f"warming up (budgetSeconds {spec.budgetSeconds}, until {now_iso(deadline)}): {_progress(spec, st)}"
    return GateResult("warming", st, msg[:1000], min(deadline, now + timedelta(seconds=RECHECK_SECONDS)))
