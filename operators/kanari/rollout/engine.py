"""The rollout engine: (spec, status, observation) -> next status, traffic and events. Pure: no I/O.

Facts are stored in status (stable and canary model, current step, pause conditions, analysis runs, the
aborted revision, a few timestamps); everything else is derived from them: the rollout state (`state_of`),
the canary weight (`_weight`) and, last, `status.phase` (`derive_phase`). Nothing here reads `phase` to
decide, so no summary written by one code path can steer another (the cause of the old canary bypass).

The rollout states and every allowed move between them are in one table, TRANSITIONS; `decide` checks that
the state the facts end in is the one the table gives for the moves it made, so a path that skips the
canary cannot be added without changing the table.

Everything the engine knows between calls lives in the status it returns: a restarted controller resumes
exactly where it was, and calling decide() again with its own output changes nothing.

The loop (kanari.rollout.loop): due_metrics() -> measure those -> decide() -> apply the traffic -> requeue.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from kanari.api.conditions import Event, get_condition, now_iso, parse_time, set_condition
from kanari.api.duration import parse_duration
from kanari.api.v1alpha1 import (
    ACTION_ANNOTATION,
    ACTIONS,
    AnalysisRun,
    AnalysisSpec,
    CanaryStep,
    Measurement,
    MetricResult,
    MetricRun,
    MetricSpec,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelRef,
    PauseCondition,
    Phase,
    RetroFacts,
    RolloutState,
)
from kanari.capacity import gate as capacity_gate
from kanari.rollout import warmup as warmup_gate
from kanari.rollout.judge import UNAVAILABLE
from kanari.rollout.templates import metric_interval

BACKGROUND = "background"


# ------------------------------------------------------------------------------------------ pause reasons
@dataclass(frozen=True)
class PauseReason:
    """How a pause behaves. One place: a new reason (e.g. CapacityPending) is one line here."""

    waits_for_person: bool  # cleared only by resume/promote (or, for a timed PauseStep, its duration)
    drops_traffic: bool  # the canary gets 0% while it lasts
    blocks_measuring: bool  # no analysis measurement is taken while it lasts


PAUSE_REASONS: dict[str, PauseReason] = {
    "PauseStep": PauseReason(waits_for_person=True, drops_traffic=False, blocks_measuring=False),
    "PausedByUser": PauseReason(waits_for_person=True, drops_traffic=False, blocks_measuring=False),
    # Too little data to judge beyond inconclusiveLimit: a person decides, and meanwhile the canary, which may be
    # failing every one of its few requests, serves nothing.
    "AnalysisInconclusive": PauseReason(waits_for_person=True, drops_traffic=True, blocks_measuring=True),
    # Measurements that could not be taken: retried each interval, cleared by the next that works; more than
    # consecutiveErrorLimit in a row roll back.
    "PrometheusUnavailable": PauseReason(waits_for_person=False, drops_traffic=False, blocks_measuring=False),
    "AnalysisError": PauseReason(waits_for_person=False, drops_traffic=False, blocks_measuring=False),
    # Not enough NeuronCores for the next weight (kanari.capacity): re-checked, cleared once the room is there.
    capacity_gate.REASON: PauseReason(waits_for_person=False, drops_traffic=False, blocks_measuring=False),
    # The canary's pods have not all answered their warm-up requests (kanari.rollout.warmup): it serves nothing
    # and is not measured; cleared once they have, a rollback once the warm-up budget is spent.
    warmup_gate.REASON: PauseReason(waits_for_person=False, drops_traffic=True, blocks_measuring=True),
}
# Pauses the step loop itself re-examines each pass (a timed pause step ends, capacity turns up); every other
# reason holds the rollout where it is until it is cleared.
SELF_CHECKED = ("PauseStep", capacity_gate.REASON, warmup_gate.REASON)
ERROR_PAUSES = ("PrometheusUnavailable", "AnalysisError")


# ------------------------------------------------------------------------------------------ states
class State(StrEnum):
    EMPTY = "Empty"  # nothing deployed
    DEPLOYING = "Deploying"  # first deployment, never seen Ready: nothing to protect with a canary yet
    DEPLOY_FAILED = "DeployFailed"  # first deployment missed its progressDeadline
    STABLE = "Stable"  # the stable model serves all traffic
    ROLLING = "Rolling"  # a canary walks its steps
    BAKING = "Baking"  # BlueGreen: switched to the new model, the old kept warm until bakeUntil
    ROLLED_BACK = "RolledBack"  # the desired revision was rolled back; the stable serves until the spec moves


# (state, move) -> next state. The only moves there are. Note what is absent: nothing leaves STABLE or
# ROLLED_BACK for a new model except "start" (a canary at 0%), and only DEPLOYING/DEPLOY_FAILED, where no
# model has ever been seen serving, may "replace" the model outright.
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.EMPTY, "deploy"): State.DEPLOYING,
    # A status that lost its stable model, beside an InferenceService that serves one: that one is the stable.
    (State.EMPTY, "adopt"): State.STABLE,
    # ... while the status still names the spec's model as its canary: that rollout goes on where it was.
    (State.EMPTY, "adopt-rolling"): State.ROLLING,
    # ... while the status still says the spec's model was rolled back: it stays rolled back until a retry.
    (State.EMPTY, "adopt-rolled-back"): State.ROLLED_BACK,
    (State.DEPLOYING, "replace"): State.DEPLOYING,
    (State.DEPLOYING, "ready"): State.STABLE,
    (State.DEPLOYING, "deadline"): State.DEPLOY_FAILED,
    (State.DEPLOY_FAILED, "replace"): State.DEPLOYING,
    (State.DEPLOY_FAILED, "ready"): State.STABLE,
    (State.STABLE, "start"): State.ROLLING,
    (State.ROLLING, "start"): State.ROLLING,
    (State.ROLLING, "supersede"): State.STABLE,
    (State.ROLLING, "bake"): State.BAKING,
    (State.ROLLING, "promote"): State.STABLE,
    (State.ROLLING, "rollback"): State.ROLLED_BACK,
    (State.BAKING, "start"): State.ROLLING,
    (State.BAKING, "supersede"): State.STABLE,
    (State.BAKING, "promote"): State.STABLE,
    (State.BAKING, "rollback"): State.ROLLED_BACK,
    (State.ROLLED_BACK, "start"): State.ROLLING,
    (State.ROLLED_BACK, "retry"): State.ROLLING,
    (State.ROLLED_BACK, "supersede"): State.STABLE,
    # The retro-verdict: inside rollbackWindow after a promotion, a confident realised-quality breach puts the
    # previous stable version back (kanari.judging.retro). The only way out of STABLE that is not a new model.
    (State.STABLE, "retro-rollback"): State.ROLLED_BACK,
}


def state_of(st: ModelDeploymentStatus) -> State:
    if st.stableModel is None:
        return State.EMPTY
    if st.rollout.deploying:
        return State.DEPLOY_FAILED if st.rollout.deployFailed else State.DEPLOYING
    if st.canaryModel is not None:
        return State.BAKING if st.rollout.bakeUntil else State.ROLLING
    if st.abortedRevision:
        return State.ROLLED_BACK
    return State.STABLE


def describe(st: ModelDeploymentStatus, stable_ready: bool, note: str = "") -> tuple[Phase, str]:
    """Phase and message, derived from facts (`note`: the engine's word on a rollout in progress)."""
    phase = derive_phase(st, stable_ready)
    state = state_of(st)
    stable = _name(st.stableModel) if st.stableModel else ""
    if state in (State.ROLLING, State.BAKING):
        return phase, note or "; ".join(p.message or p.reason for p in st.pauseConditions)
    if state is State.ROLLED_BACK:
        cond = get_condition(st.conditions, "Progressing")
        return phase, cond.message if cond else f"revision {st.abortedRevision} was rolled back; {stable} serves"
    if state is State.DEPLOY_FAILED:
        return phase, st.rollout.deployFailed or ""
    if state is State.DEPLOYING:
        return phase, f"waiting for {stable} to become Ready"
    if state is State.STABLE:
        return phase, f"{stable} serves all traffic" if stable_ready else f"stable {stable} is not Ready"
    return phase, ""


def derive_phase(st: ModelDeploymentStatus, stable_ready: bool) -> Phase:
    """The summary, computed last from facts. Never read back to decide anything."""
    invalid = get_condition(st.conditions, "InvalidSpec")
    if invalid is not None and invalid.status == "True":
        return "Failed"
    state = state_of(st)
    if state is State.ROLLING:
        return "Paused" if st.pauseConditions else "Progressing"
    if state is State.STABLE:
        return "Succeeded" if stable_ready else "Degraded"
    phases: dict[State, Phase] = {
        State.EMPTY: "Pending", State.DEPLOYING: "Progressing", State.DEPLOY_FAILED: "Failed",
        State.BAKING: "Promoting", State.ROLLED_BACK: "RolledBack",
    }
    return phases[state]


# ------------------------------------------------------------------------------------------ I/O types
@dataclass(frozen=True)
class RealisedQuality:
    """The promoted version's realised quality from delayed labels, as the controller read it (one reading)."""

    revision: str  # the rollout revision it is of (status.retro.revision when it was read)
    metric: str
    value: float | None  # None: no figure yet (no labels joined)
    denominator: int  # rows behind the figure (recall: labelled positives; precision: predicted positives)
    # No registered figure here: the one it is judged against is the stable ref's status.stableModel
    # .registeredMetrics, read in decide() after _fill_registry_facts (the figure the version was promoted with).
    error: str | None = None  # the reading failed (Prometheus unreachable, a bad answer): nothing is decided


@dataclass(frozen=True)
class RolloutObservation:
    now: datetime
    desired: ModelRef
    stable_ready: bool
    canary_ready: bool
    measurement: list[MetricResult] | None = None
    action: str | None = None
    # The revision the InferenceService serves, once KServe has observed it (None: not known). A first
    # deployment counts as serving only when this is its revision, never on an older template's readiness.
    serving_revision: str | None = None
    # NeuronCore room for the canary (Inferentia deployments); None: the rollout is not capacity-gated.
    capacity: capacity_gate.CapacityView | None = None
    # Inside spec.rollout.rollbackWindow after a promotion (retro_due): the promoted version's realised quality.
    realised: RealisedQuality | None = None
    # What the warm-up prober has seen of the canary's pods so far (spec.rollout.warmup); None: nothing yet.
    warmup: warmup_gate.WarmupObservation | None = None
    # The model the existing InferenceService's template runs (None: no InferenceService). Read only when the
    # status has no stable model: a wiped or unreadable status must not turn a new model into a first deploy.
    existing: ModelRef | None = None
    # The existing InferenceService splits traffic with a model it does not name (Serverless canaryTrafficPercent):
    # with no stable model in status, nothing may be written until a person restores the status.
    existing_unknown: bool = False


@dataclass(frozen=True)
class RolloutDecision:
    status: ModelDeploymentStatus
    stable: ModelRef | None
    canary: ModelRef | None
    canary_weight: int
    events: list[Event]
    requeue_after: float | None
    moves: tuple[str, ...] = ()


@dataclass
class _Pass:
    spec: ModelDeploymentSpec
    st: ModelDeploymentStatus
    obs: RolloutObservation
    generation: int | None
    due: dict[str, list[str]]
    events: list[Event] = field(default_factory=list)
    wake: list[datetime] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)
    note: str = ""
    progressed: bool = False
    input_pauses: tuple[str, ...] = ()

    @property
    def now(self) -> datetime:
        return self.obs.now

    @property
    def at(self) -> str:
        return now_iso(self.obs.now)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def condition(self, type_: str, status: bool | Literal["Unknown"], reason: str, message: str) -> None:
        self.st.conditions = set_condition(self.st.conditions, type_, status, reason, message, self.now, self.generation)

    def move(self, name: str) -> None:
        self.moves.append(name)


# ------------------------------------------------------------------------------------------ analysis runs
def _analysis(spec: ModelDeploymentSpec) -> AnalysisSpec:
    assert spec.rollout.analysis is not None
    return spec.rollout.analysis


def _steps(spec: ModelDeploymentSpec) -> list[CanaryStep]:
    return spec.rollout.effective_steps()


def _steps_hash(spec: ModelDeploymentSpec) -> str:
    payload = [s.model_dump(mode="json", exclude_none=True) for s in _steps(spec)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def _restart_if_steps_changed(run: _Pass) -> None:
    st, ro = run.st, run.st.rollout
    digest = _steps_hash(run.spec)
    if ro.stepsHash is None:
        ro.stepsHash = digest  # a status written before the hash existed: adopt the steps as they are
        return
    if ro.stepsHash == digest:
        return
    ro.stepsHash = digest
    st.currentStep = 0
    ro.stepStartedAt = ro.lastProgressAt = run.at
    st.pauseConditions = [p for p in st.pauseConditions if p.reason != "PauseStep"]
    st.analysisRuns = [r for r in st.analysisRuns if r.name == "background"]
    run.progressed = True
    run.event("StepsChanged", f"spec.rollout steps changed mid-rollout: restarting at step 0 of {len(_steps(run.spec))}")


def _limit(default: int, override: int | None) -> int:
    return default if override is None else override


def _count(spec: ModelDeploymentSpec, run: AnalysisRun, metric: MetricSpec) -> int | None:
    """Judged measurements a metric needs in this run; None: the background run, which has no end."""
    if run.step is None:
        return None
    step = _steps(spec)[run.step] if run.step < len(_steps(spec)) else None
    step_count = step.analysis.count if step is not None and step.analysis is not None else None
    return step_count or metric.count or _analysis(spec).count


def metric_phase(spec: ModelDeploymentSpec, run: AnalysisRun, mr: MetricRun) -> str:
    """Argo Rollouts' assessment, with one difference: only judged measurements (Successful or Failed) count
    towards `count`, so a run never ends Successful on Inconclusive or Error measurements (missing data)."""
    a = _analysis(spec)
    metric = next((m for m in a.metrics if m.name == mr.name), None)
    if metric is None:
        return "Pending"
    if mr.failed > _limit(a.failureLimit, metric.failureLimit):
        return "Failed"
    if mr.inconclusive > _limit(a.inconclusiveLimit, metric.inconclusiveLimit):
        return "Inconclusive"
    if mr.consecutiveError > _limit(a.consecutiveErrorLimit, metric.consecutiveErrorLimit):
        return "Error"
    count = _count(spec, run, metric)
    if count is not None and mr.successful + mr.failed >= count:
        return "Successful"
    return "Running" if mr.count else "Pending"


def run_phase(spec: ModelDeploymentSpec, run: AnalysisRun) -> str:
    """Worst phase of the gating (non-dryRun) metrics; a run of dry-run metrics only ends when they have run."""
    a = _analysis(spec)
    dry = {m.name for m in a.metrics if m.dryRun}
    phases = {mr.name: metric_phase(spec, run, mr) for mr in run.metrics}
    gating = [phases[n] for n in phases if n not in dry]
    if not gating:
        return "Successful" if phases and all(p not in ("Running", "Pending") for p in phases.values()) else (
            "Running" if any(mr.count for mr in run.metrics) else "Pending")
    for worst in ("Failed", "Error", "Inconclusive"):
        if worst in gating:
            return worst
    if all(p == "Successful" for p in gating):
        return "Successful"
    return "Running" if any(mr.count for mr in run.metrics) else "Pending"


def _new_run(spec: ModelDeploymentSpec, name: str, revision: str, step: int | None, at: str) -> AnalysisRun:
    metrics = [MetricRun(name=m.name, dryRun=m.dryRun) for m in _analysis(spec).metrics]
    return AnalysisRun(name=name, revision=revision, step=step, startedAt=at, metrics=metrics)


def _run(st: ModelDeploymentStatus, name: str) -> AnalysisRun | None:
    return next((r for r in st.analysisRuns if r.name == name), None)


def _active_runs(spec: ModelDeploymentSpec, st: ModelDeploymentStatus) -> list[AnalysisRun]:
    """Runs that still measure: the current step's run until it completes, and the background run."""
    if spec.rollout.analysis is None or st.canaryModel is None or state_of(st) not in (State.ROLLING, State.BAKING):
        return []
    if any(PAUSE_REASONS.get(p.reason, PAUSE_REASONS["PausedByUser"]).blocks_measuring for p in st.pauseConditions):
        return []
    out = []
    for run in st.analysisRuns:
        if run.revision != st.canaryModel.revision:
            continue
        current = run.name == BACKGROUND or (run.step == st.currentStep and state_of(st) is State.ROLLING)
        if current and run_phase(spec, run) in ("Pending", "Running"):
            out.append(run)
    return out


def _metric_done(spec: ModelDeploymentSpec, run: AnalysisRun, mr: MetricRun) -> bool:
    return metric_phase(spec, run, mr) not in ("Pending", "Running")


def _next_due(spec: ModelDeploymentSpec, run: AnalysisRun, mr: MetricRun) -> datetime:
    metric = next(m for m in _analysis(spec).metrics if m.name == mr.name)
    interval = metric_interval(spec, metric)
    last = parse_time(mr.measurements[-1].finishedAt) if mr.measurements else None
    if last is not None:
        return last + timedelta(seconds=interval)
    started = parse_time(run.startedAt) or datetime.min
    # The first measurement waits one interval by default, so its query window holds only traffic the canary
    # served in this run (at this step's weight).
    delay = parse_duration(metric.initialDelay) if metric.initialDelay else interval
    return started + timedelta(seconds=delay)


def _due_runs(spec: ModelDeploymentSpec, st: ModelDeploymentStatus, now: datetime) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for run in _active_runs(spec, st):
        names = [
            mr.name for mr in run.metrics
            if _metric_spec(spec, mr.name) is not None and not _metric_done(spec, run, mr)
            and now >= _next_due(spec, run, mr)
        ]
        if names:
            out[run.name] = names
    return out


def due_metrics(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> list[str]:
    """Metrics to measure now (each once, whichever runs want it), in spec order."""
    if spec.rollout.analysis is None or status.canaryModel is None or status.canaryModel.revision != spec.rollout_revision():
        return []
    wanted = {n for names in _due_runs(spec, status, now).values() for n in names}
    return [m.name for m in spec.rollout.analysis.metrics if m.name in wanted]


def analysis_due(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> bool:
    return bool(due_metrics(spec, status, now))


def _next_wake(spec: ModelDeploymentSpec, st: ModelDeploymentStatus) -> datetime | None:
    times = [
        _next_due(spec, run, mr) for run in _active_runs(spec, st) for mr in run.metrics
        if _metric_spec(spec, mr.name) is not None and not _metric_done(spec, run, mr)
    ]
    return min(times) if times else None


# ------------------------------------------------------------------------------------------ decide
def decide(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, obs: RolloutObservation, generation: int | None
) -> RolloutDecision:
    # A private copy to decide on. Dump and validate, not model_copy(deep=True): the same copy at a quarter of the
    # cost (copy.deepcopy walks every pydantic object in Python), in the operator's hottest path.
    st = ModelDeploymentStatus.model_validate(status.model_dump())
    # What is due is decided on the status as it came in: a measurement is counted only if it was due then.
    due = _due_runs(spec, st, obs.now) if obs.measurement is not None and st.canaryModel is not None and (
        st.canaryModel.revision == obs.desired.revision) else {}
    run = _Pass(spec, st, obs, generation, due, input_pauses=tuple(p.reason for p in st.pauseConditions))
    before_state = state_of(st)
    before_weight = st.canaryWeight if st.canaryModel is not None else 0
    action = _take_action(run)
    _fill_registry_facts(run)
    _dispatch(run, action, before_state)
    _finish(run, before_weight)
    _check_moves(before_state, run)
    if generation is not None:
        st.observedGeneration = generation
    st.phase, st.message = describe(st, obs.stable_ready, run.note)
    _summary_conditions(run)
    return RolloutDecision(
        status=st,
        stable=st.stableModel,
        canary=st.canaryModel,
        canary_weight=st.canaryWeight if st.canaryModel is not None else 0,
        events=run.events,
        requeue_after=_requeue(run),
        moves=tuple(run.moves),
    )


# What a ModelRef records from its model package's registry entry beside its identity: a version recorded by a
# controller that did not read these yet gets them from the same package, once; a value recorded is never
# replaced (the registry entry may be edited later; the version was judged by what it said then). Filled before
# anything is decided, so the retro-verdict and the quality alert built from this pass's status read them at once.
REGISTRY_FACTS = ("calibrationUri", "calibrationSha256", "registeredMetrics")


def _fill_registry_facts(run: _Pass) -> None:
    d = run.obs.desired
    for role in ("stableModel", "canaryModel"):
        ref: ModelRef | None = getattr(run.st, role)
        # By package, not revision: they are the package's facts, and a stable version serving the same package
        # as a canary that changes only the serving spec has no other way to get them.
        if ref is None or not d.modelPackageArn or ref.modelPackageArn != d.modelPackageArn:
            continue
        missing = {f: getattr(d, f) for f in REGISTRY_FACTS if not getattr(ref, f) and getattr(d, f)}
        if missing:
            setattr(run.st, role, ref.model_copy(update=missing))
            run.event("RegistryFactsFilled", f"{_name(ref)}: {', '.join(sorted(missing))} read from its model "
                                             f"package (recorded by an earlier controller without them)")


def _dispatch(run: _Pass, action: str | None, state: State) -> None:
    st, d = run.st, run.obs.desired
    if state is State.EMPTY:
        found = run.obs.existing
        if run.obs.existing_unknown:
            _stable_unknown(run)
        elif found is not None:
            # Adopted even when it is the spec's model: as a first deployment it could be "replaced" outright
            # by the next model edit until seen serving, and it has been serving all along.
            # A rollback the status still records outlives its lost stable model: only a person's retry lifts it.
            rolled_back = st.abortedRevision == d.revision != found.revision
            resumed = (not rolled_back and st.canaryModel is not None
                       and st.canaryModel.revision == d.revision != found.revision
                       and st.rollout.revision == d.revision and not st.rollout.bakeUntil
                       and not st.rollout.deploying)
            _adopt(run, found, keep_rollout=resumed, keep_rollback=rolled_back)
            if resumed:
                _rolling(run, action)  # its pauses (a person's included), step and analyses are still in status
            elif rolled_back:
                if action == "retry":
                    # The status that lost its stable model may have lost the last action taken too: a retry
                    # annotation seen now may be the one already spent on this revision. Given again, it retries.
                    run.event("ActionIgnored", f"retry: the status was just adopted; give the action again to "
                                               f"retry revision {d.revision}")
                    action = None
                _dispatch(run, action, State.ROLLED_BACK)
            elif found.revision != d.revision:
                _start(run, "start")
                _rolling(run, _for_new_rollout(run, action))
            else:
                _steady(run, action)
        else:
            _deploy(run, "deploy")
            _deploying(run, action)
    elif state in (State.DEPLOYING, State.DEPLOY_FAILED):
        assert st.stableModel is not None
        # Readiness first: a first model seen serving is the stable one, and a new model is then a canary.
        if d.revision != st.stableModel.revision and not _serving(run):
            _deploy(run, "replace")
        _deploying(run, action if d.revision == st.stableModel.revision else None)
        if state_of(st) is State.STABLE and d.revision != st.stableModel.revision:
            _start(run, "start")
            _rolling(run, _for_new_rollout(run, action))
    elif state is State.STABLE:
        assert st.stableModel is not None
        if d.revision == st.stableModel.revision:
            _steady(run, action)
        else:
            _start(run, "start")
            _rolling(run, _for_new_rollout(run, action))
    elif state is State.ROLLED_BACK:
        assert st.stableModel is not None
        if d.revision == st.stableModel.revision:
            # The spec moved back to the stable: the rolled-back revision is forgotten (a return to it is new).
            st.abortedRevision = None
            run.move("supersede")
            run.event("RollbackCleared", f"spec returned to the stable {_name(st.stableModel)}")
            _steady(run, action)
        elif d.revision != st.abortedRevision:
            _start(run, "start")
            _rolling(run, _for_new_rollout(run, action))
        elif action == "retry":
            st.abortedRevision = None
            run.event("Retrying", f"retrying revision {d.revision} on request")
            _start(run, "retry")
            _rolling(run, None)
        else:
            if action:
                run.event("ActionIgnored", f"{action}: revision {d.revision} was rolled back; use retry")
    else:  # ROLLING, BAKING
        assert st.canaryModel is not None and st.stableModel is not None
        if d.revision == st.stableModel.revision:
            run.event("RolloutSuperseded", f"spec returned to the stable {_name(d)}; dropped canary {_name(st.canaryModel)}")
            _drop_canary(run)
            run.move("supersede")
            _steady(run, action)
        elif d.revision != st.canaryModel.revision:
            _start(run, "start")
            _rolling(run, _for_new_rollout(run, action))
        elif state is State.BAKING:
            _baking(run, action)
        else:
            _rolling(run, action)


def _for_new_rollout(run: _Pass, action: str | None) -> str | None:
    """An action that arrives with a rollout starting in the same pass was written before anyone saw that
    rollout (e.g. promote-full meant for the canary the spec has just replaced): only the ones that hold
    traffic back (abort, pause) apply to it; the rest are ignored and must be given again."""
    if action is None or action in ("abort", "pause"):
        return action
    run.event("ActionIgnored", f"{action}: a new rollout of revision {run.obs.desired.revision} starts now; "
                               "give the action again for it")
    return None


def _check_moves(before: State, run: _Pass) -> None:
    state = before
    for m in run.moves:
        nxt = TRANSITIONS.get((state, m))
        if nxt is None:
            raise AssertionError(f"rollout engine bug: move {m!r} from state {state.value} is not in TRANSITIONS")
        state = nxt
    after = state_of(run.st)
    if after is not state:
        raise AssertionError(f"rollout engine bug: moves {run.moves} from {before.value} give {state.value}, "
                             f"facts say {after.value}")


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


# ------------------------------------------------------------------------------------------ first deploy
def _deploy(run: _Pass, move: str) -> None:
    """First deployment (or a replacement of one never seen serving): nothing to protect with a canary."""
    st, d = run.st, run.obs.desired
    st.stableModel = d
    st.canaryModel = None
    st.currentStep = 0
    st.pauseConditions = []
    st.analysisRuns = []
    st.rollout = RolloutState(
        revision=d.revision, startedAt=run.at, lastProgressAt=run.at, lastAction=st.rollout.lastAction, deploying=True
    )
    run.move(move)
    run.event("Deploying", f"deploying {_name(d)} (revision {d.revision})")


def _adopt(run: _Pass, found: ModelRef, *, keep_rollout: bool = False, keep_rollback: bool = False) -> None:
    """The status has no stable model but an InferenceService serves one: it is the stable, so a different spec
    model gets its canary like any new model (and the same one is simply stable, not a first deployment).
    `keep_rollout`: the rest of the status still describes the rollout of the spec's model, which goes on.
    `keep_rollback`: the status says the spec's model was rolled back, which it still is."""
    st = run.st
    st.stableModel = found
    if keep_rollout:
        assert st.canaryModel is not None
        run.move("adopt-rolling")
        run.event("StableAdopted", f"status names no stable model; the InferenceService serves {_name(found)} "
                                   f"(revision {found.revision}): kept as the stable, the rollout of "
                                   f"{_name(st.canaryModel)} goes on at step {st.currentStep}", True)
        return
    st.canaryModel = None
    st.currentStep = 0
    st.pauseConditions = []
    st.analysisRuns = []
    if not keep_rollback:
        st.abortedRevision = None
    st.rollout = RolloutState(revision=found.revision, lastAction=st.rollout.lastAction,
                              stableReadyAt=run.at if run.obs.stable_ready else None)
    run.move("adopt-rolled-back" if keep_rollback else "adopt")
    kept = f"; revision {st.abortedRevision} stays rolled back (retry to roll it out again)" if keep_rollback else ""
    run.event("StableAdopted", f"status names no stable model; the InferenceService serves {_name(found)} "
                               f"(revision {found.revision}): kept as the stable{kept}", True)


def _stable_unknown(run: _Pass) -> None:
    """No stable model in status, and the InferenceService splits traffic between its template and a Knative
    revision it does not name: deploying the spec's model would give it all traffic, and adopting the template
    would take a canary for the stable. Nothing is written; a person restores the status (or deletes the
    InferenceService to start again)."""
    msg = ("status names no stable model while the InferenceService splits traffic (canaryTrafficPercent) with a "
           "revision it does not name; the InferenceService is left as it is: restore status.stableModel, or "
           "delete the InferenceService to deploy spec.model from scratch")
    # A canary left over in a half-readable status is no rollout of ours (no stable to weigh it against).
    run.st.canaryModel = None
    run.st.canaryWeight = 0
    before = get_condition(run.st.conditions, "Progressing")
    if before is None or before.reason != "StableUnknown":
        run.event("StableUnknown", msg, True)
    run.condition("Progressing", False, "StableUnknown", msg)


def _deploying(run: _Pass, action: str | None) -> None:
    st = run.st
    assert st.stableModel is not None
    if action:
        run.event("ActionIgnored", f"{action}: no rollout in progress ({_name(st.stableModel)} is being deployed)")
    if _serving(run):
        st.rollout.stableReadyAt = run.at
        st.rollout.deploying = False
        st.rollout.deployFailed = None
        run.move("ready")
        run.note = f"{_name(st.stableModel)} serves all traffic"
        run.event("Deployed", run.note)
        run.condition("Progressing", False, "RolloutComplete", run.note)
        return
    if st.rollout.deployFailed:
        run.note = st.rollout.deployFailed
        return
    deadline = _deadline(run)
    if run.now >= deadline:
        st.rollout.deployFailed = (
            f"{_name(st.stableModel)} did not become Ready within progressDeadline {run.spec.rollout.progressDeadline}"
        )
        run.move("deadline")
        run.note = st.rollout.deployFailed
        run.event("ProgressDeadlineExceeded", run.note, True)
        run.condition("Progressing", False, "ProgressDeadlineExceeded", run.note)
        return
    run.note = f"waiting for {_name(st.stableModel)} to become Ready"
    run.condition("Progressing", True, "Deploying", run.note)
    run.wake.append(deadline)


def _serving(run: _Pass) -> bool:
    st = run.st
    assert st.stableModel is not None
    served = run.obs.serving_revision is None or run.obs.serving_revision == st.stableModel.revision
    return run.obs.stable_ready and served


def _steady(run: _Pass, action: str | None) -> None:
    st = run.st
    assert st.stableModel is not None
    if action:
        run.event("ActionIgnored", f"{action}: no rollout in progress ({_name(st.stableModel)} is stable)")
    _retro(run)


# ------------------------------------------------------------------------------------------ retro-verdict
def _retro_window(spec: ModelDeploymentSpec, st: ModelDeploymentStatus) -> tuple[datetime, datetime] | None:
    """(promoted at, window end) while the stable version is the one promoted last and can still be judged."""
    rw, facts = spec.rollout.rollbackWindow, st.retro
    if rw is None or facts is None or st.stableModel is None or st.stableModel.revision != facts.revision:
        return None
    if facts.previousStable is None or state_of(st) is not State.STABLE:
        return None
    promoted = parse_time(facts.promotedAt)
    if promoted is None:
        return None
    return promoted, promoted + timedelta(seconds=parse_duration(rw.duration))


def retro_due(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> bool:
    """Whether the controller should read the promoted version's realised quality now (inside the window)."""
    window = _retro_window(spec, status)
    return (window is not None and now <= window[1]
            and spec.rollout_revision() == (status.stableModel.revision if status.stableModel else None))


def _retro(run: _Pass) -> None:
    """Inside rollbackWindow: the realised figure against the registered one (kanari.judging.retro); outside
    it, nothing. A reading that failed, or a figure without a registered one to compare, decides nothing."""
    from kanari.judging.retro import retro_verdict

    st, spec = run.st, run.spec
    window = _retro_window(spec, st)
    if window is None or run.now > window[1]:
        return
    promoted, end = window
    rw = spec.rollout.rollbackWindow
    assert rw is not None and st.retro is not None and st.retro.previousStable is not None
    run.wake.append(min(end, run.now + timedelta(seconds=parse_duration(rw.interval))))
    obs = run.obs.realised
    if obs is None or obs.revision != st.retro.revision or obs.metric != rw.metric:
        return
    if obs.error is not None:
        run.condition("RealisedQualityPassing", "Unknown", "RealisedQualityUnavailable", obs.error)
        return
    # The figure recorded with the promoted version, never the registry's current one (an edit after promotion
    # must not move the floor): a version recorded without it had it filled from its package above, this pass.
    registered = st.stableModel.registered(rw.metric) if st.stableModel is not None else None
    if registered is None:
        run.condition("RealisedQualityPassing", "Unknown", "NoRegisteredMetric",
                      f"status.stableModel.registeredMetrics has no {rw.metric} (its model package registers no "
                      f"kanari:metric.{rw.metric} that is a proportion) to compare with")
        return
    if obs.value is None:
        run.condition("RealisedQualityPassing", "Unknown", "TooFewLabels", f"no realised {rw.metric} yet")
        return
    try:
        verdict = retro_verdict(
            metric=rw.metric, realised=obs.value, denominator=obs.denominator, registered=registered,
            tolerance=rw.tolerance, promoted_at=promoted, now=run.now, rollback_window=end - promoted,
            alpha=rw.alpha, min_labels=rw.minLabels,
        )
    except ValueError as exc:
        run.condition("RealisedQualityPassing", "Unknown", "RealisedQualityUnavailable", str(exc))
        return
    if not verdict.rollback:
        status: bool | Literal["Unknown"] = "Unknown" if verdict.reason == "TooFewLabels" else True
        run.condition("RealisedQualityPassing", status, verdict.reason, verdict.message)
        return
    bad, previous = st.stableModel, st.retro.previousStable
    assert bad is not None
    st.stableModel = previous
    st.abortedRevision = bad.revision
    st.retro = None
    st.pauseConditions = []
    run.move("retro-rollback")
    run.note = f"rolled back {_name(bad)}: {verdict.message}; {_name(previous)} serves"
    run.event("RealisedQualityDrop", f"{_name(bad)}: {verdict.message}", True)
    run.event("RolledBack", f"RealisedQualityDrop: {run.note}", True)
    run.condition("RealisedQualityPassing", False, "RealisedQualityDrop", verdict.message)
    run.condition("Progressing", False, "RealisedQualityDrop", run.note)


def _stable_conditions(run: _Pass) -> None:
    st = run.st
    assert st.stableModel is not None
    progressing = get_condition(st.conditions, "Progressing")
    if not run.obs.stable_ready:
        run.condition("Progressing", False, "StableNotReady", f"stable {_name(st.stableModel)} is not Ready")
    elif progressing is None or progressing.reason != "RolloutComplete":
        run.condition("Progressing", False, "RolloutComplete", f"{_name(st.stableModel)} serves all traffic")


# ------------------------------------------------------------------------------------------ rollout
def _start(run: _Pass, move: str) -> None:
    st, d = run.st, run.obs.desired
    previous = st.canaryModel
    st.rollout = RolloutState(
        revision=d.revision, startedAt=run.at, stepStartedAt=run.at, lastProgressAt=run.at,
        lastAction=st.rollout.lastAction, stableReadyAt=st.rollout.stableReadyAt, stepsHash=_steps_hash(run.spec),
    )
    st.currentStep = 0
    st.canaryModel = d
    st.canaryWeight = 0
    st.pauseConditions = []
    st.analysisRuns = []
    st.abortedRevision = None
    st.warmup = None  # a new rollout (a retry included) warms its canary again
    run.move(move)
    run.note = ""
    steps = _steps(run.spec)
    replaced = f", replacing canary {_name(previous)}" if previous and previous.revision != d.revision else ""
    assert st.stableModel is not None
    run.event(
        "RolloutStarted",
        f"{run.spec.rollout.strategy} rollout of {_name(d)} over {len(steps)} steps; "
        f"stable {_name(st.stableModel)}{replaced}",
    )
    run.condition("AnalysisPassing", "Unknown", "NotMeasured", "no analysis of this revision yet")


def _drop_canary(run: _Pass) -> None:
    st = run.st
    st.canaryModel = None
    st.currentStep = 0
    st.pauseConditions = []
    st.rollout.bakeUntil = None


def _rolling(run: _Pass, action: str | None) -> None:
    st = run.st
    _consume(run)
    if state_of(st) is State.ROLLED_BACK:
        return
    if action:
        _apply_action(run, action)
        if state_of(st) is not State.ROLLING:
            return
    full = action == "promote-full"
    _advance(run, full)
    if state_of(st) is not State.ROLLING:
        return
    if _deadline_applies(run) and not run.progressed:
        deadline = _deadline(run)
        if run.now >= deadline:
            _rollback(
                run, "ProgressDeadlineExceeded",
                f"no progress at step {st.currentStep} for progressDeadline {run.spec.rollout.progressDeadline}",
            )
            return
        run.wake.append(deadline)


def _baking(run: _Pass, action: str | None) -> None:
    st = run.st
    _consume(run)
    if state_of(st) is State.ROLLED_BACK:
        return
    if action == "abort":
        _rollback(run, "Aborted", "aborted by an operator")
        return
    if action == "promote-full":
        _promote(run)
        return
    if action:
        run.event("ActionIgnored", f"{action}: the new version already serves all traffic (abort or promote-full)")
    _complete(run, full=False)


def _apply_action(run: _Pass, action: str) -> None:
    st = run.st
    if action == "abort":
        _rollback(run, "Aborted", "aborted by an operator")
    elif action == "pause":
        if not _paused(st, "PausedByUser"):
            _add_pause(run, "PausedByUser", f"paused by an operator at step {st.currentStep}")
            run.event("Paused", f"paused by an operator at step {st.currentStep}")
    elif action == "resume":
        waiting = [p for p in st.pauseConditions if PAUSE_REASONS.get(p.reason, PAUSE_REASONS["PausedByUser"]).waits_for_person]
        if not waiting:
            run.event("ActionIgnored", "resume: the rollout is not paused")
            return
        was = ", ".join(p.reason for p in waiting)
        _resume(run, waiting)
        run.event("Resumed", f"resumed at step {st.currentStep} (was paused: {was})")
        if any(p.reason == "PauseStep" for p in waiting):
            _next_step(run, "resumed by an operator")
    elif action in ("promote", "promote-full"):
        _resume(run, list(st.pauseConditions))
        if action == "promote":
            _next_step(run, "promoted by an operator")
        else:
            st.currentStep = len(_steps(run.spec))
            run.progressed = True
            run.event("StepAdvanced", "full promotion requested by an operator")
    else:
        run.event("ActionIgnored", f"{action}: revision {run.obs.desired.revision} is not rolled back")


def _resume(run: _Pass, pauses: list[PauseCondition]) -> None:
    st = run.st
    reasons = {p.reason for p in pauses}
    st.pauseConditions = [p for p in st.pauseConditions if p not in pauses]
    st.rollout.lastProgressAt = run.at
    run.progressed = True
    if "AnalysisInconclusive" in reasons and st.canaryModel is not None and run.spec.rollout.analysis is not None:
        # A fresh run for each that ended Inconclusive: resuming means "measure again", not "count on".
        st.analysisRuns = [
            _new_run(run.spec, r.name, r.revision, r.step, run.at) if run_phase(run.spec, r) == "Inconclusive" else r
            for r in st.analysisRuns
        ]


def _advance(run: _Pass, full: bool) -> None:
    st, ro = run.st, run.st.rollout
    _restart_if_steps_changed(run)
    steps = _steps(run.spec)
    # Each pass of the loop returns or moves currentStep forward.
    while True:
        _ensure_background(run)
        if run.obs.capacity is None and _paused(st, capacity_gate.REASON):
            st.pauseConditions = [p for p in st.pauseConditions if p.reason != capacity_gate.REASON]  # no longer gated
        if any(p.reason not in SELF_CHECKED for p in st.pauseConditions):
            return
        if run.obs.capacity is not None and not _capacity_admits(run, steps):
            return
        if not _warm(run):
            return
        if not run.obs.canary_ready:
            assert st.canaryModel is not None
            run.note = f"waiting for canary {_name(st.canaryModel)} to become Ready (weight {_weight(run.spec, st)})"
            return
        if st.currentStep >= len(steps):
            _complete(run, full)
            return
        step = steps[st.currentStep]
        if step.setWeight is not None:
            _next_step(run, f"weight {step.setWeight}")
            continue
        if step.pause is not None:
            started = parse_time(ro.stepStartedAt) or run.now
            if step.pause.duration is None:
                text = f"step {st.currentStep}: paused until an operator resumes or promotes"
                if _add_pause(run, "PauseStep", text, started):
                    run.event("Paused", text)
                return
            end = started + timedelta(seconds=parse_duration(step.pause.duration))
            if run.now < end:
                _add_pause(run, "PauseStep", f"step {st.currentStep}: pausing until {now_iso(end)}", started)
                run.wake.append(end)
                return
            _next_step(run, f"pause {step.pause.duration} elapsed")
            continue
        assert run.spec.rollout.analysis is not None
        name = f"step-{st.currentStep}"
        current = _run(st, name)
        if current is None or st.canaryModel is None or current.revision != st.canaryModel.revision:
            assert st.canaryModel is not None
            st.analysisRuns = [r for r in st.analysisRuns if r.name != name] + [
                _new_run(run.spec, name, st.canaryModel.revision, st.currentStep, run.at)
            ]
            current = _run(st, name)
            assert current is not None
        if run_phase(run.spec, current) != "Successful":
            run.note = (
                f"step {st.currentStep}/{len(steps)}: analysing at weight {_weight(run.spec, st)}: "
                + ", ".join(_progress_text(run.spec, current, mr) for mr in current.metrics)
            )
            return
        _next_step(run, "analysis passed")


def _capacity_admits(run: _Pass, steps: list[CanaryStep]) -> bool:
    """Size the canary for the weight about to be set; wait (never fail) while the NeuronCores are not there."""
    st = run.st
    assert run.obs.capacity is not None
    st.canaryWeight = _weight(run.spec, st)  # where the steps taken so far (this pass included) have put it
    target = capacity_gate.next_weight(steps, st.currentStep, st.canaryWeight)
    peak = capacity_gate.peak_weight(steps, st.currentStep, st.canaryWeight)
    result = capacity_gate.check(run.spec, st, run.obs.capacity, target, peak)
    st.capacity = result.status
    recheck = run.now + timedelta(seconds=run.obs.capacity.recheck_seconds)
    if not result.admitted:
        if _add_pause(run, capacity_gate.REASON, f"step {st.currentStep}: waiting for NeuronCores: {result.message}"):
            run.event(capacity_gate.REASON, f"step {st.currentStep}: {result.message}", True)
        run.condition("CapacityAvailable", False, capacity_gate.REASON, result.message)
        run.wake.append(recheck)
        return False
    if _paused(st, capacity_gate.REASON):
        st.pauseConditions = [p for p in st.pauseConditions if p.reason != capacity_gate.REASON]
        st.rollout.lastProgressAt = run.at  # the wait was not the rollout's fault: the deadline starts again
        run.progressed = True
        run.event("CapacityAvailable", f"step {st.currentStep}: {result.message}")
    run.condition("CapacityAvailable", True, "CapacityAvailable", result.message)
    if not result.ready:
        run.note = f"step {st.currentStep}: scaling canary to {result.status.canaryReplicas} replica(s) for weight {target}"
        run.wake.append(recheck)
        return False
    return True


def _warm(run: _Pass) -> bool:
    """The warm-up gate: no weight until every canary pod has answered its warm-up requests."""
    st, spec = run.st, run.spec.rollout.warmup
    if spec is None:
        if _paused(st, warmup_gate.REASON):  # the gate was taken out of the spec mid-rollout
            st.pauseConditions = [p for p in st.pauseConditions if p.reason != warmup_gate.REASON]
        return True
    assert st.canaryModel is not None
    result = warmup_gate.gate(spec, st.canaryModel.revision, st.warmup, run.obs.warmup, run.now)
    st.warmup = result.status
    if result.state == "warm":
        if _paused(st, warmup_gate.REASON):
            st.pauseConditions = [p for p in st.pauseConditions if p.reason != warmup_gate.REASON]
            st.rollout.lastProgressAt = run.at  # warming was progress: the deadline starts again
            run.progressed = True
            run.event("WarmedUp", result.message)
        run.condition("WarmedUp", True, "WarmedUp", result.message)
        return True
    if result.state == "failed":
        run.condition("WarmedUp", False, "WarmupFailed", result.message)
        _rollback(run, "WarmupFailed", result.message)
        return False
    if _add_pause(run, warmup_gate.REASON, result.message):
        run.event(warmup_gate.REASON, f"canary {_name(st.canaryModel)} held at 0% until warm: {result.message}")
    run.condition("WarmedUp", False, warmup_gate.REASON, result.message)
    run.note = f"step {st.currentStep}: {result.message}"
    if result.wake is not None:
        run.wake.append(result.wake)
    return False


def _ensure_background(run: _Pass) -> None:
    st, a = run.st, run.spec.rollout.analysis
    if a is None or a.background is None or st.canaryModel is None or not run.obs.canary_ready:
        return
    if st.currentStep < a.background.startingStep or _run(st, BACKGROUND) is not None:
        return
    st.analysisRuns = [*st.analysisRuns, _new_run(run.spec, BACKGROUND, st.canaryModel.revision, None, run.at)]


def _progress_text(spec: ModelDeploymentSpec, run: AnalysisRun, mr: MetricRun) -> str:
    metric = next((m for m in _analysis(spec).metrics if m.name == mr.name), None)
    count = _count(spec, run, metric) if metric is not None else None
    dry = " (dryRun)" if mr.dryRun else ""
    return f"{mr.name} {mr.successful + mr.failed}/{count if count is not None else '-'}{dry}"


def _metric_spec(spec: ModelDeploymentSpec, name: str) -> MetricSpec | None:
    return next((m for m in _analysis(spec).metrics if m.name == name), None)


def _complete(run: _Pass, full: bool) -> None:
    st, ro, spec = run.st, run.st.rollout, run.spec
    assert st.canaryModel is not None and st.stableModel is not None
    bake = parse_duration(spec.rollout.blueGreen.bakeDuration) if spec.rollout.blueGreen else 0.0
    if spec.rollout.strategy == "BlueGreen" and bake and not full:
        if ro.bakeUntil is None:
            ro.bakeUntil = now_iso(run.now + timedelta(seconds=bake))
            run.move("bake")
            run.event("Switched", f"all traffic on {_name(st.canaryModel)}; {_name(st.stableModel)} kept warm until {ro.bakeUntil}")
        until = parse_time(ro.bakeUntil)
        assert until is not None
        if run.now < until:
            run.note = f"{_name(st.canaryModel)} serves all traffic; {_name(st.stableModel)} kept warm until {ro.bakeUntil}"
            run.wake.append(until)
            nxt = _next_wake(spec, st)
            if nxt is not None:
                run.wake.append(nxt)
            return
    _promote(run)


def _promote(run: _Pass) -> None:
    st, ro = run.st, run.st.rollout
    assert st.canaryModel is not None and st.stableModel is not None
    previous = st.stableModel
    st.stableModel = st.canaryModel
    st.canaryModel = None
    st.pauseConditions = []
    st.retro = RetroFacts(revision=st.stableModel.revision, promotedAt=run.at, previousStable=previous)
    ro.bakeUntil = None
    ro.lastProgressAt = run.at
    run.move("promote")
    run.note = f"promoted {_name(st.stableModel)} (was {_name(previous)})"
    run.event("Promoted", run.note)
    run.condition("Progressing", False, "RolloutComplete", run.note)


def _rollback(run: _Pass, reason: str, message: str) -> None:
    st, ro = run.st, run.st.rollout
    canary = st.canaryModel
    st.canaryModel = None
    st.abortedRevision = run.obs.desired.revision
    st.pauseConditions = []
    ro.bakeUntil = None
    run.move("rollback")
    assert st.stableModel is not None
    run.note = f"rolled back {_name(canary) if canary else run.obs.desired.revision}: {message}; {_name(st.stableModel)} serves"
    if reason != "AnalysisFailed":
        run.event(reason, message, True)
    run.event("RolledBack", f"{reason}: {run.note}", True)
    run.condition("Progressing", False, reason, run.note)


def _next_step(run: _Pass, why: str) -> None:
    st, ro = run.st, run.st.rollout
    total = len(_steps(run.spec))
    st.currentStep = min(st.currentStep + 1, total)
    st.pauseConditions = [p for p in st.pauseConditions if p.reason != "PauseStep"]
    ro.stepStartedAt = ro.lastProgressAt = run.at
    run.progressed = True
    run.event("StepAdvanced", f"step {st.currentStep}/{total} ({why})")


# ------------------------------------------------------------------------------------------ measuring
def _consume(run: _Pass) -> None:
    """Record the measurement in every run it was due for, then act on what the runs now say."""
    st, spec = run.st, run.spec
    if not run.due or run.obs.measurement is None or spec.rollout.analysis is None:
        return
    a = spec.rollout.analysis
    got = {r.name: r for r in run.obs.measurement}
    index = {m.name: i for i, m in enumerate(a.metrics)}
    fresh: dict[str, MetricResult] = {}
    for name, metrics in run.due.items():
        ar = _run(st, name)
        if ar is None:
            continue
        for mr in ar.metrics:
            if mr.name not in metrics:
                continue
            r = got.get(mr.name) or MetricResult(
                name=mr.name, verdict="Inconclusive", message=f"{mr.name}: no result in this measurement"
            )
            fresh[mr.name] = r
            _record(mr, r, run.at, a.measurementRetention)
        _refresh(spec, ar)
    if not fresh:
        return
    _react(run, fresh, index)


def _record(mr: MetricRun, r: MetricResult, at: str, retention: int) -> None:
    mr.count += 1
    if r.verdict == "Successful":
        mr.successful += 1
    elif r.verdict == "Failed":
        mr.failed += 1
    elif r.verdict == "Inconclusive":
        mr.inconclusive += 1
    else:
        mr.error += 1
    mr.consecutiveError = mr.consecutiveError + 1 if r.verdict == "Error" else 0
    m = Measurement(
        phase=r.verdict, value=r.value, stableValue=r.stableValue, sampleCount=r.sampleCount, threshold=r.threshold,
        query=r.query, message=r.message, startedAt=r.at or at, finishedAt=at,
    )
    mr.measurements = [*mr.measurements, m][-retention:]


def _refresh(spec: ModelDeploymentSpec, ar: AnalysisRun) -> None:
    """The derived phases shown in status (for readers; the engine recomputes them from the counters)."""
    for mr in ar.metrics:
        mr.phase = metric_phase(spec, ar, mr)
    ar.phase = run_phase(spec, ar)


def _react(run: _Pass, fresh: dict[str, MetricResult], index: dict[str, int]) -> None:
    st, spec = run.st, run.spec
    a = _analysis(spec)
    dry = {m.name for m in a.metrics if m.dryRun}
    gating = {n: r for n, r in fresh.items() if n not in dry}
    where = {n: f"spec.rollout.analysis.metrics[{index.get(n, '?')}]" for n in fresh}

    # Every metric of this measurement is reported, whatever its siblings said.
    failed = [r for r in gating.values() if r.verdict == "Failed"]
    errors = [r for r in gating.values() if r.verdict == "Error"]
    unsure = [r for r in gating.values() if r.verdict == "Inconclusive"]
    for r in (r for r in fresh.values() if r.name in dry and r.verdict != "Successful"):
        run.event("DryRunMetric", f"{where[r.name]} (dryRun, not gating): {_result_text(r)}")
    parts = [f"{where[r.name]}: {_result_text(r)}" for r in (*failed, *errors, *unsure)]
    text = "; ".join(parts)
    if failed:
        run.condition("AnalysisPassing", False, "AnalysisFailed", text)
        run.event("AnalysisFailed", text, True)
    elif errors:
        reason = "PrometheusUnavailable" if any(UNAVAILABLE in r.message for r in errors) else "AnalysisError"
        run.condition("AnalysisPassing", False, reason, text)
    elif unsure:
        run.condition("AnalysisPassing", "Unknown", "AnalysisInconclusive", text)
        run.event("AnalysisInconclusive", text, True)
    elif gating:
        ok = "; ".join(r.message for r in gating.values())
        run.condition("AnalysisPassing", True, "AnalysisSuccessful", ok)
        run.event("AnalysisPassed", ok)
    if any(r.verdict == "Successful" for r in gating.values()):
        st.rollout.lastProgressAt = run.at
        run.progressed = True

    # Then what the runs say, worst first.
    for ar in _current_runs(spec, st):
        phase = run_phase(spec, ar)
        if phase == "Failed":
            mr = next(m for m in ar.metrics if m.name not in dry and metric_phase(spec, ar, m) == "Failed")
            metric = next(m for m in a.metrics if m.name == mr.name)
            last = next((x for x in reversed(mr.measurements) if x.phase == "Failed"), None)
            value = _fmt(last.value) if last else "none"
            _rollback(
                run, "AnalysisFailed",
                f"metric {mr.name} ({where.get(mr.name, mr.name)}) value {value} breached threshold "
                f"{last.threshold if last else ''} ({mr.failed} failures > failureLimit "
                f"{_limit(a.failureLimit, metric.failureLimit)}) in analysis run {ar.name}",
            )
            return
    for ar in _current_runs(spec, st):
        if run_phase(spec, ar) == "Error":
            mr = next(m for m in ar.metrics if m.name not in dry and metric_phase(spec, ar, m) == "Error")
            metric = next(m for m in a.metrics if m.name == mr.name)
            detail = mr.measurements[-1].message if mr.measurements else ""
            _rollback(
                run, "AnalysisError",
                f"metric {mr.name} ({where.get(mr.name, mr.name)}) could not be measured {mr.consecutiveError} times "
                f"in a row (> consecutiveErrorLimit {_limit(a.consecutiveErrorLimit, metric.consecutiveErrorLimit)}): "
                f"{detail}",
            )
            return
    for ar in _current_runs(spec, st):
        if run_phase(spec, ar) == "Inconclusive" and not _paused(st, "AnalysisInconclusive"):
            msg = f"analysis run {ar.name} inconclusive beyond inconclusiveLimit: {text}; canary at 0% until resumed"
            _add_pause(run, "AnalysisInconclusive", msg)
            run.event("Paused", msg, True)
    # Measurement errors within the limit hold the rollout where it is; the next measurement that works clears it.
    erroring = [
        mr for ar in _current_runs(spec, st) for mr in ar.metrics
        if mr.name not in dry and mr.consecutiveError > 0
    ]
    if erroring and errors:
        reason = "PrometheusUnavailable" if any(UNAVAILABLE in r.message for r in errors) else "AnalysisError"
        st.pauseConditions = [p for p in st.pauseConditions if p.reason not in ERROR_PAUSES or p.reason == reason]
        _add_pause(run, reason, f"{text}; retrying at the next interval; traffic unchanged")
        run.event(reason, f"{text}; retrying at the next interval; traffic unchanged", True)
    elif not erroring:
        st.pauseConditions = [p for p in st.pauseConditions if p.reason not in ERROR_PAUSES]
        if any(p in ERROR_PAUSES for p in run.input_pauses):
            run.event("Resumed", "analysis measurements work again")


def _current_runs(spec: ModelDeploymentSpec, st: ModelDeploymentStatus) -> list[AnalysisRun]:
    if st.canaryModel is None:
        return []
    return [
        r for r in st.analysisRuns
        if r.revision == st.canaryModel.revision and (r.name == BACKGROUND or r.step == st.currentStep)
    ]


# ------------------------------------------------------------------------------------------ pauses
def _paused(st: ModelDeploymentStatus, reason: str) -> bool:
    return any(p.reason == reason for p in st.pauseConditions)


def _add_pause(run: _Pass, reason: str, message: str, since: datetime | None = None) -> bool:
    """Add or update a pause condition (its startTime kept); True when it is new."""
    st = run.st
    existing = next((p for p in st.pauseConditions if p.reason == reason), None)
    start = existing.startTime if existing else now_iso(since or run.now)
    new = PauseCondition(reason=reason, startTime=start, message=message)
    st.pauseConditions = [new if p.reason == reason else p for p in st.pauseConditions] if existing else [
        *st.pauseConditions, new]
    return existing is None


# ------------------------------------------------------------------------------------------ derived
def step_weight(spec: ModelDeploymentSpec, step: int) -> int:
    """The weight the steps before `step` have set."""
    weights = [s.setWeight for s in _steps(spec)[:step] if s.setWeight is not None]
    return weights[-1] if weights else 0


def _weight(spec: ModelDeploymentSpec, st: ModelDeploymentStatus) -> int:
    if st.canaryModel is None:
        return 0
    if any(PAUSE_REASONS.get(p.reason, PAUSE_REASONS["PausedByUser"]).drops_traffic for p in st.pauseConditions):
        return 0
    return step_weight(spec, st.currentStep)


def _finish(run: _Pass, before_weight: int) -> None:
    st = run.st
    weight = _weight(run.spec, st)
    if st.canaryModel is not None and not run.obs.canary_ready and weight > before_weight:
        weight = before_weight  # traffic moves onto a canary only while it is Ready
    promoted = st.canaryModel is None and "promote" in run.moves  # the canary became the stable: no weight moved
    if weight != before_weight and not promoted:
        run.event("WeightChanged", f"canary weight {before_weight} -> {weight}")
    st.canaryWeight = weight
    if state_of(st) is State.STABLE:
        _stable_conditions(run)
    if run.spec.rollout.analysis is not None:
        for ar in st.analysisRuns:
            _refresh(run.spec, ar)
        nxt = _next_wake(run.spec, st)
        if nxt is not None:
            run.wake.append(nxt)


def _deadline_applies(run: _Pass) -> bool:
    st = run.st
    if st.pauseConditions or st.rollout.bakeUntil:
        return False
    steps = _steps(run.spec)
    step = steps[st.currentStep] if st.currentStep < len(steps) else None
    return not (step is not None and step.pause is not None and run.obs.canary_ready)


def _deadline(run: _Pass) -> datetime:
    since = parse_time(run.st.rollout.lastProgressAt) or run.now
    return since + timedelta(seconds=parse_duration(run.spec.rollout.progressDeadline))


def _summary_conditions(run: _Pass) -> None:
    st = run.st
    pause = st.pauseConditions[0] if st.pauseConditions else None
    run.condition("Paused", pause is not None, pause.reason if pause else "NotPaused", pause.message if pause else "")
    if state_of(st) in (State.ROLLING, State.BAKING):
        why = "RolloutPaused" if pause else "RolloutInProgress"
        run.condition("Progressing", True, why, st.message)


def _requeue(run: _Pass) -> float | None:
    if not run.wake:
        return None
    return max(0.0, (min(run.wake) - run.now).total_seconds())


def _fmt(value: float | None) -> str:
    return "none" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _result_text(r: MetricResult) -> str:
    return r.message or f"{r.name} value {_fmt(r.value)} threshold {r.threshold}"


def _name(ref: ModelRef) -> str:
    return f"{ref.version or ref.revision}"
