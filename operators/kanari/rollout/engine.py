"""The rollout engine: (spec, status, observation) -> next status, traffic and events. Pure: no I/O.

Everything the engine knows between calls lives in the status it returns, so a restarted controller
resumes exactly where it was, and calling decide() again with its own output changes nothing.

The controller's loop: resolve the desired ModelRef; if analysis_due(), run one measurement
(kanari.rollout.analysis.measure, for due_metrics()); call decide(); apply stable/canary/canary_weight
to the InferenceService; write the status; emit the events; requeue after requeue_after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from kanari.api.conditions import Event, now_iso, parse_time, set_condition
from kanari.api.duration import parse_duration
from kanari.api.v1alpha1 import (
    ACTION_ANNOTATION,
    ACTIONS,
    AnalysisRecord,
    CanaryStep,
    MetricProgress,
    MetricResult,
    MetricSpec,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelRef,
    RolloutState,
)
from kanari.capacity import gate as capacity_gate
from kanari.rollout.judge import UNAVAILABLE
from kanari.rollout.templates import metric_interval

HISTORY_CAP = 20
# Pauses that wait for a person (resume/promote); the progress deadline does not run during them.
HUMAN_PAUSES = ("PausedByUser", "PauseStep", "AnalysisInconclusive")
# Pauses the engine leaves by itself at the next measurement that works.
ERROR_PAUSES = ("PrometheusUnavailable", "AnalysisError")


@dataclass(frozen=True)
class RolloutObservation:
    now: datetime
    desired: ModelRef
    stable_ready: bool
    canary_ready: bool
    measurement: list[MetricResult] | None = None
    action: str | None = None
    # NeuronCore room for the canary (Inferentia deployments); None: the rollout is not capacity-gated.
    capacity: capacity_gate.CapacityView | None = None


@dataclass(frozen=True)
class RolloutDecision:
    status: ModelDeploymentStatus
    stable: ModelRef | None
    canary: ModelRef | None
    canary_weight: int
    events: list[Event]
    requeue_after: float | None


@dataclass
class _Pass:
    spec: ModelDeploymentSpec
    st: ModelDeploymentStatus
    obs: RolloutObservation
    generation: int | None
    events: list[Event] = field(default_factory=list)
    wake: list[datetime] = field(default_factory=list)

    @property
    def now(self) -> datetime:
        return self.obs.now

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def condition(self, type_: str, status: bool | Literal["Unknown"], reason: str, message: str) -> None:
        self.st.conditions = set_condition(self.st.conditions, type_, status, reason, message, self.now, self.generation)


# ------------------------------------------------------------------------------------------ queries
def _in_flight(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> bool:
    ro = status.rollout
    return (
        status.canaryModel is not None
        and ro.revision == status.canaryModel.revision == spec.rollout_revision()
        and status.phase not in ("Succeeded", "RolledBack", "Failed")
    )


def _step(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> CanaryStep | None:
    steps = spec.rollout.effective_steps()
    return steps[status.currentStep] if status.currentStep < len(steps) else None


def _count(spec: ModelDeploymentSpec, step: CanaryStep, metric: MetricSpec) -> int:
    assert spec.rollout.analysis is not None
    step_count = step.analysis.count if step.analysis else None
    return metric.count or step_count or spec.rollout.analysis.count


def _progress(status: ModelDeploymentStatus, name: str) -> MetricProgress:
    return next((p for p in status.rollout.metrics if p.name == name), MetricProgress(name=name))


def _next_due(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, metric: MetricSpec) -> datetime:
    started = parse_time(status.rollout.stepStartedAt)
    last = parse_time(_progress(status, metric.name).lastMeasuredAt)
    base = max(t for t in (started, last) if t is not None) if (started or last) else datetime.min
    return base + timedelta(seconds=metric_interval(spec, metric))


def due_metrics(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> list[str]:
    """Metrics to measure now: the current step analyses, and each one's interval has elapsed."""
    if not _in_flight(spec, status) or status.rollout.pausedReason in HUMAN_PAUSES:
        return []
    step = _step(spec, status)
    if step is None or step.analysis is None or spec.rollout.analysis is None:
        return []
    return [
        m.name
        for m in spec.rollout.analysis.metrics
        if _progress(status, m.name).successes < _count(spec, step, m) and now >= _next_due(spec, status, m)
    ]


def analysis_due(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> bool:
    return bool(due_metrics(spec, status, now))


# ------------------------------------------------------------------------------------------ decide
def decide(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, obs: RolloutObservation, generation: int | None
) -> RolloutDecision:
    run = _Pass(spec, status.model_copy(deep=True), obs, generation)
    st = run.st
    action = _take_action(run)
    desired = obs.desired
    if st.rollout.abortedRevision and st.rollout.abortedRevision != desired.revision:
        st.rollout.abortedRevision = None  # the spec moved on: a later return to it is a new attempt
    if st.stableModel is None or (_first_deploy_pending(st) and st.stableModel.revision != desired.revision):
        _deploy(run)
    elif desired.revision == st.stableModel.revision:
        _steady(run, action)
    else:
        _rollout(run, action)
    if generation is not None:
        st.observedGeneration = generation
    _summary_conditions(run)
    return RolloutDecision(
        status=st,
        stable=st.stableModel,
        canary=st.canaryModel,
        canary_weight=st.canaryWeight,
        events=run.events,
        requeue_after=_requeue(run),
    )


def _take_action(run: _Pass) -> str | None:
    raw = run.obs.action
    ro = run.st.rollout
    if not raw or raw == ro.lastAction:
        return None
    ro.lastAction = raw
    name = raw.split("/", 1)[0].strip()
    if name not in ACTIONS:
        run.event("InvalidAction", f"{ACTION_ANNOTATION}={raw!r}: unknown action (one of {', '.join(ACTIONS)})", True)
        return None
    run.event("ActionConsumed", f"{ACTION_ANNOTATION}={raw}")
    return name


def _first_deploy_pending(st: ModelDeploymentStatus) -> bool:
    return st.canaryModel is None and st.phase in ("Pending", "Progressing", "Failed")


def _deploy(run: _Pass) -> None:
    """First deployment: nothing serves yet, so there is nothing to protect with a canary."""
    st, d = run.st, run.obs.desired
    st.stableModel = d
    st.canaryModel = None
    st.canaryWeight = 0
    st.currentStep = 0
    st.rollout = RolloutState(
        revision=d.revision, startedAt=now_iso(run.now), lastProgressAt=now_iso(run.now),
        lastAction=st.rollout.lastAction,
    )
    st.phase = "Progressing"
    run.event("Deploying", f"deploying {_name(d)} (revision {d.revision})")
    _steady(run, None)


def _steady(run: _Pass, action: str | None) -> None:
    st, d = run.st, run.obs.desired
    first = _first_deploy_pending(st)
    if st.canaryModel is not None:
        if st.canaryWeight:
            run.event("WeightChanged", f"canary weight {st.canaryWeight} -> 0")
        run.event("RolloutSuperseded", f"spec returned to the stable {_name(d)}; dropped canary {_name(st.canaryModel)}")
        st.canaryModel = None
        st.canaryWeight = 0
        st.currentStep = 0
        st.rollout = RolloutState(revision=d.revision, lastAction=st.rollout.lastAction)
    if action:
        run.event("ActionIgnored", f"{action}: no rollout in progress ({_name(d)} is stable)")
    if run.obs.stable_ready:
        if st.phase != "Succeeded":
            st.phase, st.message = "Succeeded", f"{_name(d)} serves all traffic"
            run.event("Deployed", st.message)
            run.condition("Progressing", False, "RolloutComplete", st.message)
        return
    if not first:
        _degraded(run)
        return
    if st.phase == "Failed":
        return
    deadline = _deadline(run)
    if run.now >= deadline:
        st.phase = "Failed"
        st.message = f"{_name(d)} did not become Ready within progressDeadline {run.spec.rollout.progressDeadline}"
        run.event("ProgressDeadlineExceeded", st.message, True)
        run.condition("Progressing", False, "ProgressDeadlineExceeded", st.message)
        return
    st.phase, st.message = "Progressing", f"waiting for {_name(d)} to become Ready"
    run.condition("Progressing", True, "Deploying", st.message)
    run.wake.append(deadline)


def _rollout(run: _Pass, action: str | None) -> None:
    st, d, ro = run.st, run.obs.desired, run.st.rollout
    if ro.abortedRevision == d.revision:
        if action != "retry":
            if action:
                run.event("ActionIgnored", f"{action}: revision {d.revision} was rolled back; use retry")
            _hold_rolled_back(run)
            return
        ro.abortedRevision = None
        run.event("Retrying", f"retrying revision {d.revision} on request")
        _start(run)
        action = None
    elif not _in_flight(run.spec, st) or not (st.canaryModel and st.canaryModel.revision == d.revision):
        _start(run)
    if action:
        _apply_action(run, action)
        if st.phase == "RolledBack":
            return
    progress_before = st.rollout.lastProgressAt
    _advance(run, full=action == "promote-full")
    if st.phase in ("RolledBack", "Succeeded"):
        return
    if _deadline_applies(run):
        deadline = _deadline(run)
        if run.now >= deadline and st.rollout.lastProgressAt == progress_before:
            _rollback(
                run, "ProgressDeadlineExceeded",
                f"no progress at step {st.currentStep} for progressDeadline {run.spec.rollout.progressDeadline}",
            )
            return
        run.wake.append(deadline)


def _start(run: _Pass) -> None:
    st, d = run.st, run.obs.desired
    previous = st.canaryModel
    if st.canaryWeight:
        run.event("WeightChanged", f"canary weight {st.canaryWeight} -> 0")
    st.rollout = RolloutState(
        revision=d.revision, startedAt=now_iso(run.now), stepStartedAt=now_iso(run.now),
        lastProgressAt=now_iso(run.now), lastAction=st.rollout.lastAction,
    )
    st.currentStep = 0
    st.canaryModel = d
    st.canaryWeight = 0
    st.lastAnalysis = []
    st.phase = "Progressing"
    steps = run.spec.rollout.effective_steps()
    replaced = f", replacing canary {_name(previous)}" if previous and previous.revision != d.revision else ""
    assert st.stableModel is not None
    run.event(
        "RolloutStarted",
        f"{run.spec.rollout.strategy} rollout of {_name(d)} over {len(steps)} steps; "
        f"stable {_name(st.stableModel)}{replaced}",
    )
    run.condition("AnalysisPassing", "Unknown", "NotMeasured", "no analysis of this revision yet")


def _apply_action(run: _Pass, action: str) -> None:
    st, ro = run.st, run.st.rollout
    if action == "abort":
        _rollback(run, "Aborted", "aborted by an operator")
    elif action == "pause":
        if ro.pausedReason != "PausedByUser":
            ro.pausedReason = "PausedByUser"
            run.event("Paused", f"paused by an operator at step {st.currentStep}")
    elif action == "resume":
        if not ro.pausedReason:
            run.event("ActionIgnored", "resume: the rollout is not paused")
            return
        was = ro.pausedReason
        ro.pausedReason = None
        ro.lastProgressAt = now_iso(run.now)
        for p in ro.metrics:
            p.inconclusives = 0
        run.event("Resumed", f"resumed at step {st.currentStep} (was paused: {was})")
        if was == "PauseStep":
            _next_step(run, "resumed by an operator")
    elif action in ("promote", "promote-full"):
        ro.pausedReason = None
        if action == "promote":
            _next_step(run, "promoted by an operator")
        else:
            st.currentStep = len(run.spec.rollout.effective_steps())
            run.event("StepAdvanced", "full promotion requested by an operator")
    else:
        run.event("ActionIgnored", f"{action}: revision {run.obs.desired.revision} is not rolled back")


def _advance(run: _Pass, full: bool) -> None:
    st, ro = run.st, run.st.rollout
    steps = run.spec.rollout.effective_steps()
    # Each pass returns or moves currentStep forward (a pause step sets its reason, then returns).
    while True:
        if ro.pausedReason in HUMAN_PAUSES:
            _hold_paused(run)
            return
        if run.obs.capacity is not None and not _capacity_admits(run, steps):
            return
        if not run.obs.canary_ready:
            st.phase = "Paused" if ro.pausedReason else "Progressing"
            assert st.canaryModel is not None
            st.message = f"waiting for canary {_name(st.canaryModel)} to become Ready (weight {st.canaryWeight})"
            return
        if st.currentStep >= len(steps):
            _complete(run, full)
            return
        step = steps[st.currentStep]
        if step.setWeight is not None:
            _set_weight(run, step.setWeight)
            _next_step(run, f"weight {step.setWeight}")
            continue
        if step.pause is not None:
            if step.pause.duration is None:
                ro.pausedReason = "PauseStep"
                run.event("Paused", f"step {st.currentStep}: paused until an operator resumes or promotes")
                continue
            started = parse_time(ro.stepStartedAt) or run.now
            end = started + timedelta(seconds=parse_duration(step.pause.duration))
            if run.now < end:
                st.phase = "Progressing"
                st.message = f"step {st.currentStep}/{len(steps)}: pausing until {now_iso(end)}"
                run.wake.append(end)
                return
            _next_step(run, f"pause {step.pause.duration} elapsed")
            continue
        if not _analysis_step(run, step):
            return
        _next_step(run, "analysis passed")


def _capacity_admits(run: _Pass, steps: list[CanaryStep]) -> bool:
    """Size the canary for the weight about to be set; wait (never fail) while the NeuronCores are not there."""
    st, ro = run.st, run.st.rollout
    assert run.obs.capacity is not None
    target = capacity_gate.next_weight(steps, st.currentStep, st.canaryWeight)
    result = capacity_gate.check(run.spec, st, run.obs.capacity, target)
    st.capacity = result.status
    recheck = run.now + timedelta(seconds=run.obs.capacity.recheck_seconds)
    if not result.admitted:
        if ro.pausedReason != capacity_gate.REASON:
            ro.pausedReason = capacity_gate.REASON
            run.event(capacity_gate.REASON, f"step {st.currentStep}: {result.message}", True)
        run.condition("CapacityAvailable", False, capacity_gate.REASON, result.message)
        st.phase = "Paused"
        st.message = f"step {st.currentStep}: waiting for NeuronCores: {result.message}"
        run.wake.append(recheck)
        return False
    if ro.pausedReason == capacity_gate.REASON:
        ro.pausedReason = None
        ro.lastProgressAt = now_iso(run.now)  # the wait was not the rollout's fault: the deadline starts again
        run.event("CapacityAvailable", f"step {st.currentStep}: {result.message}")
    run.condition("CapacityAvailable", True, "CapacityAvailable", result.message)
    if not result.ready:
        st.phase = "Progressing"
        st.message = f"step {st.currentStep}: scaling canary to {result.status.canaryReplicas} replica(s) for weight {target}"
        run.wake.append(recheck)
        return False
    return True


def _hold_paused(run: _Pass) -> None:
    st = run.st
    st.phase = "Paused"
    total = len(run.spec.rollout.effective_steps())
    st.message = f"paused at step {st.currentStep}/{total}: {st.rollout.pausedReason}"


def _analysis_step(run: _Pass, step: CanaryStep) -> bool:
    """True when every metric has its count of Successful measurements for this step."""
    st, ro, spec = run.st, run.st.rollout, run.spec
    analysis = spec.rollout.analysis
    assert analysis is not None
    due = due_metrics(spec, st, run.now)
    if run.obs.measurement is not None and due:
        _consume(run, due)
        if st.phase == "RolledBack":
            return False
    pending = [m for m in analysis.metrics if _progress(st, m.name).successes < _count(spec, step, m)]
    if not pending:
        return True
    if ro.pausedReason in HUMAN_PAUSES:
        _hold_paused(run)
        return False
    done = ", ".join(f"{m.name} {_progress(st, m.name).successes}/{_count(spec, step, m)}" for m in analysis.metrics)
    st.phase = "Paused" if ro.pausedReason else "Progressing"
    reason = f" ({ro.pausedReason})" if ro.pausedReason else ""
    st.message = f"step {st.currentStep}: analysing at weight {st.canaryWeight}{reason}: {done}"
    run.wake.append(min(_next_due(spec, st, m) for m in pending))
    return False


def _consume(run: _Pass, due: list[str]) -> None:
    st, ro, spec = run.st, run.st.rollout, run.spec
    analysis = spec.rollout.analysis
    assert analysis is not None and run.obs.measurement is not None
    at = now_iso(run.now)
    got = {r.name: r for r in run.obs.measurement}
    index = {m.name: i for i, m in enumerate(analysis.metrics)}
    results: list[MetricResult] = []
    for m in analysis.metrics:
        if m.name not in due:
            continue
        r = got.get(m.name) or MetricResult(
            name=m.name, verdict="Inconclusive", message=f"{m.name}: no result in this measurement"
        )
        r = r.model_copy(update={"at": r.at or at})
        results.append(r)
        p = _progress(st, m.name)
        p.lastMeasuredAt = at
        p.measurements += 1
        if r.verdict == "Successful":
            p.successes += 1
        elif r.verdict == "Failed":
            p.failures += 1
        elif r.verdict == "Inconclusive":
            p.inconclusives += 1
        ro.metrics = [q for q in ro.metrics if q.name != m.name] + [p]
    ro.metrics.sort(key=lambda q: index.get(q.name, len(index)))
    ro.lastMeasuredAt = at
    ro.measurements += 1
    verdicts = {r.verdict for r in results}
    overall = next(v for v in ("Failed", "Error", "Inconclusive", "Successful") if v in verdicts or v == "Successful")
    merged = {r.name: r for r in st.lastAnalysis}
    merged.update({r.name: r for r in results})
    st.lastAnalysis = [merged[m.name] for m in analysis.metrics if m.name in merged]
    record = AnalysisRecord(at=at, step=st.currentStep, revision=ro.revision or "", verdict=overall, metrics=results)
    st.analysisHistory = [*st.analysisHistory, record][-HISTORY_CAP:]

    failed = [r for r in results if r.verdict == "Failed"]
    if failed:
        ro.failures += 1
        over = [r for r in failed if _progress(st, r.name).failures > _limit(analysis.failureLimit, _metric(run, r.name).failureLimit)]
        text = "; ".join(f"{_where(index, r.name)}: {_result_text(r)}" for r in failed)
        run.condition("AnalysisPassing", False, "AnalysisFailed", text)
        run.event("AnalysisFailed", text, True)
        if over:
            worst = over[0]
            limit = _limit(analysis.failureLimit, _metric(run, worst.name).failureLimit)
            _rollback(
                run, "AnalysisFailed",
                f"metric {worst.name} ({_where(index, worst.name)}) value {_fmt(worst.value)} breached "
                f"threshold {worst.threshold} ({_progress(st, worst.name).failures} failures > failureLimit {limit})",
            )
        return
    errors = [r for r in results if r.verdict == "Error"]
    if errors:
        reason = "PrometheusUnavailable" if any(UNAVAILABLE in r.message for r in errors) else "AnalysisError"
        text = "; ".join(f"{_where(index, r.name)}: {r.message}" for r in errors)
        if ro.pausedReason not in HUMAN_PAUSES:
            ro.pausedReason = reason
        run.condition("AnalysisPassing", False, reason, text)
        run.event(reason, f"{text}; retrying at the next interval; traffic unchanged", True)
        return
    if ro.pausedReason in ERROR_PAUSES:
        run.event("Resumed", f"analysis works again (was {ro.pausedReason})")
        ro.pausedReason = None
    unsure = [r for r in results if r.verdict == "Inconclusive"]
    if unsure:
        ro.inconclusives += 1
        text = "; ".join(r.message for r in unsure)
        run.condition("AnalysisPassing", "Unknown", "AnalysisInconclusive", text)
        over = [
            r for r in unsure
            if _progress(st, r.name).inconclusives > _limit(analysis.inconclusiveLimit, _metric(run, r.name).inconclusiveLimit)
        ]
        run.event("AnalysisInconclusive", text, True)
        if over:
            ro.pausedReason = "AnalysisInconclusive"
            run.event("Paused", f"inconclusive analysis beyond inconclusiveLimit: {text}; resume to measure again", True)
        return
    ro.lastProgressAt = at
    text = "; ".join(r.message for r in results)
    run.condition("AnalysisPassing", True, "AnalysisSuccessful", text)
    run.event("AnalysisPassed", text)


def _set_weight(run: _Pass, weight: int) -> None:
    st = run.st
    if st.canaryWeight != weight:
        run.event("WeightChanged", f"canary weight {st.canaryWeight} -> {weight}")
        st.canaryWeight = weight


def _next_step(run: _Pass, why: str) -> None:
    st, ro = run.st, run.st.rollout
    total = len(run.spec.rollout.effective_steps())
    st.currentStep = min(st.currentStep + 1, total)
    ro.stepStartedAt = ro.lastProgressAt = now_iso(run.now)
    ro.metrics = [MetricProgress(name=p.name, lastMeasuredAt=p.lastMeasuredAt) for p in ro.metrics]
    run.event("StepAdvanced", f"step {st.currentStep}/{total} ({why})")


def _complete(run: _Pass, full: bool) -> None:
    st, ro, spec = run.st, run.st.rollout, run.spec
    assert st.canaryModel is not None and st.stableModel is not None
    bake = parse_duration(spec.rollout.blueGreen.bakeDuration) if spec.rollout.blueGreen else 0.0
    if spec.rollout.strategy == "BlueGreen" and bake and not full:
        _set_weight(run, 100)
        if ro.bakeUntil is None:
            ro.bakeUntil = now_iso(run.now + timedelta(seconds=bake))
            run.event("Switched", f"all traffic on {_name(st.canaryModel)}; {_name(st.stableModel)} kept warm until {ro.bakeUntil}")
        until = parse_time(ro.bakeUntil)
        assert until is not None
        if run.now < until:
            st.phase = "Promoting"
            st.message = f"{_name(st.canaryModel)} serves all traffic; {_name(st.stableModel)} kept warm until {ro.bakeUntil}"
            run.wake.append(until)
            return
    previous = st.stableModel
    st.stableModel = st.canaryModel
    st.canaryModel = None
    st.canaryWeight = 0
    ro.bakeUntil = None
    ro.pausedReason = None
    ro.lastProgressAt = now_iso(run.now)
    st.phase = "Succeeded"
    st.message = f"promoted {_name(st.stableModel)} (was {_name(previous)})"
    run.event("Promoted", st.message)
    run.condition("Progressing", False, "RolloutComplete", st.message)
    if not run.obs.stable_ready:
        _degraded(run)


def _degraded(run: _Pass) -> None:
    st = run.st
    assert st.stableModel is not None
    st.phase, st.message = "Degraded", f"stable {_name(st.stableModel)} is not Ready"
    run.condition("Progressing", False, "StableNotReady", st.message)


def _rollback(run: _Pass, reason: str, message: str) -> None:
    st, ro = run.st, run.st.rollout
    if st.canaryWeight:
        run.event("WeightChanged", f"canary weight {st.canaryWeight} -> 0")
    canary = st.canaryModel
    st.canaryWeight = 0
    st.canaryModel = None
    ro.abortedRevision = run.obs.desired.revision
    ro.pausedReason = None
    ro.bakeUntil = None
    st.phase = "RolledBack"
    assert st.stableModel is not None
    st.message = f"rolled back {_name(canary) if canary else run.obs.desired.revision}: {message}; {_name(st.stableModel)} serves"
    if reason != "AnalysisFailed":
        run.event(reason, message, True)
    run.event("RolledBack", f"{reason}: {st.message}", True)
    run.condition("Progressing", False, reason, st.message)


def _hold_rolled_back(run: _Pass) -> None:
    st = run.st
    st.canaryModel = None
    st.canaryWeight = 0
    st.phase = "RolledBack"
    st.rollout.pausedReason = None


def _deadline_applies(run: _Pass) -> bool:
    st, ro = run.st, run.st.rollout
    if ro.pausedReason in (*HUMAN_PAUSES, capacity_gate.REASON) or ro.bakeUntil:
        return False
    step = _step(run.spec, st)
    return not (step is not None and step.pause is not None and run.obs.canary_ready)


def _deadline(run: _Pass) -> datetime:
    since = parse_time(run.st.rollout.lastProgressAt) or run.now
    return since + timedelta(seconds=parse_duration(run.spec.rollout.progressDeadline))


def _summary_conditions(run: _Pass) -> None:
    st = run.st
    reason = st.rollout.pausedReason
    paused = st.phase == "Paused" and bool(reason)
    run.condition("Paused", paused, reason if paused and reason else "NotPaused", st.message if paused else "")
    if st.phase in ("Progressing", "Promoting", "Paused") and st.canaryModel is not None:
        why = "RolloutPaused" if st.phase == "Paused" else "RolloutInProgress"
        run.condition("Progressing", True, why, st.message)


def _requeue(run: _Pass) -> float | None:
    if not run.wake:
        return None
    return max(0.0, (min(run.wake) - run.now).total_seconds())


def _metric(run: _Pass, name: str) -> MetricSpec:
    assert run.spec.rollout.analysis is not None
    return next(m for m in run.spec.rollout.analysis.metrics if m.name == name)


def _limit(default: int, override: int | None) -> int:
    return default if override is None else override


def _where(index: dict[str, int], name: str) -> str:
    return f"spec.rollout.analysis.metrics[{index.get(name, '?')}]"


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def _result_text(r: MetricResult) -> str:
    return r.message or f"{r.name} value {_fmt(r.value)} threshold {r.threshold}"


def _name(ref: ModelRef) -> str:
    return f"{ref.version or ref.revision}"
