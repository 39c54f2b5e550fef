"""The controller's decision: a ModelDeployment and what was observed in, desired children and status out.

Pure: no API calls, no clock. The kopf handlers fetch, call `reconcile`, apply and patch; tests call it
directly. Running it twice on its own output changes nothing (level-triggered, restart-safe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kanari.api.conditions import Event, get_condition, set_condition
from kanari.api.v1alpha1 import (
    ACTION_ANNOTATION,
    InferenceServiceRef,
    MetricResult,
    ModelDeployment,
    ModelDeploymentStatus,
    ObjectMeta,
    RevisionCost,
    SpecError,
    format_validation_error,
    parse_spec,
)
from kanari.capacity import isvc as capacity_isvc
from kanari.capacity import provenance
from kanari.capacity.gate import CapacityView
from kanari.capacity.spec import check_fits_instance
from kanari.controller import drift_rules, inferenceservice, isvc_health, quality_rules
from kanari.controller.config import OperatorConfig
from kanari.controller.model_source import PackageInfo, baseline_uri, model_ref
from kanari.controller.serving_runtime import choose_runtime
from kanari.rollout import engine
from kanari.rollout.warmup import WarmupObservation

COND_READY = "Ready"
COND_INVALID = "InvalidSpec"
COND_APPROVED = "ModelApproved"


@dataclass(frozen=True)
class ClusterObservation:
    now: datetime
    isvc: dict[str, Any] | None = None
    package: PackageInfo | None = None
    package_error: SpecError | None = None
    measurement: list[MetricResult] | None = None
    capacity: CapacityView | None = None  # NeuronCore room (kanari.capacity.observer); None: not gated
    cost: list[RevisionCost] | None = None  # cost per 1,000 inferences just measured; None: keep the last
    neuron_runtime_sdk: str | None = None  # the chosen ServingRuntime's kanari.dev/neuron-sdk annotation
    realised: engine.RealisedQuality | None = None  # inside rollbackWindow: the promoted version's realised quality
    warmup: WarmupObservation | None = None  # what the warm-up prober has seen of the canary (kanari.controller.warmup)


@dataclass
class ReconcileResult:
    status: ModelDeploymentStatus
    isvc: dict[str, Any] | None = None  # None: leave the InferenceService as it is
    # The PrometheusRules it owns, by the status field that records each one's name (driftRule, qualityRule): a
    # rule to converge, or None to delete the recorded one. A field left out: leave that rule as it is.
    rules: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def _status_of(body: dict[str, Any]) -> ModelDeploymentStatus:
    return ModelDeploymentStatus.lenient(body.get("status") or {})


def _stable_ready(status: ModelDeploymentStatus) -> bool:
    ready = get_condition(status.conditions, COND_READY)
    return ready is not None and ready.status == "True"


def _invalid(
    status: ModelDeploymentStatus, err: SpecError, now: datetime, generation: int | None, reason: str = "InvalidSpec"
) -> ReconcileResult:
    previous = get_condition(status.conditions, COND_INVALID)
    conds = set_condition(status.conditions, COND_INVALID, True, reason, str(err), now, generation)
    # A spec that cannot be served leaves the running InferenceService and every rollout fact alone: the
    # InvalidSpec condition is the only record of it, and the phase shows it (derived, never read back).
    new = status.model_copy(update={"conditions": conds, "observedGeneration": generation})
    new.phase = engine.derive_phase(new, _stable_ready(new))
    new.message = str(err)
    events = []
    if previous is None or previous.status != "True" or previous.message != str(err):
        events.append(Event("Warning", reason, str(err)))
    return ReconcileResult(status=new, events=events)


def _clear_invalid(status: ModelDeploymentStatus, now: datetime, generation: int | None) -> list[Any]:
    return set_condition(status.conditions, COND_INVALID, False, "SpecValid", "spec is valid", now, generation)


def reconcile(body: dict[str, Any], observed: ClusterObservation, config: OperatorConfig) -> ReconcileResult:
    now = observed.now
    meta_raw = body.get("metadata") or {}
    generation = meta_raw.get("generation")
    status = _status_of(body)

    try:
        spec = parse_spec(body.get("spec"))
        meta = ObjectMeta.model_validate(meta_raw)
    except SpecError as err:
        return _invalid(status, err, now, generation)
    except ValidationError as exc:
        return _invalid(status, format_validation_error(exc, "metadata")[0], now, generation)
    md = ModelDeployment(metadata=meta, spec=spec, status=status)

    if spec.suspend:
        conds = set_condition(status.conditions, "Suspended", True, "Suspended", "spec.suspend is true", now, generation)
        return ReconcileResult(status=status.model_copy(update={"conditions": conds, "observedGeneration": generation}))

    try:
        runtime = choose_runtime(spec, config.neuron_runtime)
    except SpecError as err:
        return _invalid(status, err, now, generation)
    if observed.package_error is not None:
        return _invalid(status, observed.package_error, now, generation)
    try:
        # A compiled Neuron model that cannot run as asked is refused before any traffic moves.
        check_fits_instance(spec.serving)
        build = provenance.NeuronBuild.from_metadata(observed.package.metadata) if observed.package else None
        mismatch = provenance.check(build, spec, runtime.runtime, observed.neuron_runtime_sdk)
    except SpecError as err:
        mismatch = err
    if mismatch is not None:
        return _invalid(status, mismatch, now, generation)

    conditions = _clear_invalid(status, now, generation)
    if get_condition(conditions, "Suspended") is not None:
        conditions = set_condition(conditions, "Suspended", False, "Resumed", "spec.suspend is false", now, generation)
    events: list[Event] = []
    package = observed.package
    if spec.model.modelPackageArn:
        if package is None:
            raise ValueError("the model package must be resolved before reconcile")
        approved = package.approval_status == "Approved"
        if spec.model.requireApproval and not approved:
            before = get_condition(conditions, COND_APPROVED)
            msg = (
                f"spec.model.modelPackageArn: model package {package.arn} is {package.approval_status}; "
                "requireApproval is true, so it is not served until it is Approved in the registry"
            )
            conditions = set_condition(conditions, COND_APPROVED, False, "ModelNotApproved", msg, now, generation)
            if before is None or before.status != "False":
                events.append(Event("Warning", "ModelNotApproved", msg))
            new = status.model_copy(update={"conditions": conditions, "observedGeneration": generation})
            new.phase = engine.derive_phase(new, isvc_health.read(observed.isvc).stable_ready)
            new.message = msg
            return ReconcileResult(status=new, events=events, requeue_after=config.resync_seconds)
        conditions = set_condition(
            conditions, COND_APPROVED, True, "ModelApproved" if approved else "ApprovalNotRequired",
            f"model package is {package.approval_status}", now, generation,
        )
    desired_ref = model_ref(spec, package)
    status = status.model_copy(update={"conditions": conditions})

    reading = isvc_health.read(observed.isvc, canary_revision=desired_ref.revision)
    decision = engine.decide(
        spec,
        status,
        engine.RolloutObservation(
            now=now,
            desired=desired_ref,
            stable_ready=reading.stable_ready,
            canary_ready=reading.canary_ready,
            measurement=observed.measurement,
            action=md.metadata.annotations.get(ACTION_ANNOTATION),
            serving_revision=reading.serving_revision,
            capacity=observed.capacity,
            realised=observed.realised,
            warmup=observed.warmup,
            existing=inferenceservice.served_model(observed.isvc) if status.stableModel is None else None,
            existing_unknown=status.stableModel is None and inferenceservice.split_template(observed.isvc),
        ),
        generation,
    )
    events.extend(decision.events)
    new_status = decision.status

    baselines: dict[str, str] = {}
    for ref in (decision.stable, decision.canary):
        if ref is not None and spec.monitoring and spec.monitoring.enabled:
            uri = baseline_uri(spec, ref, package if ref.modelPackageArn == (package.arn if package else None) else None)
            if uri:
                baselines[ref.revision] = uri
    isvc = inferenceservice.build(
        md,
        stable=decision.stable,
        canary=None if capacity_isvc.hold_canary(new_status) else decision.canary,
        canary_weight=decision.canary_weight,
        runtime=runtime,
        config=config,
        current=observed.isvc,
        baseline_uris=baselines,
    )
    isvc = capacity_isvc.tag_neuron_runtimes(capacity_isvc.size(isvc, spec, new_status), spec)
    try:
        isvc = capacity_isvc.autoscale(isvc, spec, config.prometheus_url)
    except SpecError as err:
        return _invalid(status, err, now, generation)

    ready_before = get_condition(new_status.conditions, COND_READY)
    ready = reading.ready
    reason = "InferenceServiceReady" if ready else f"InferenceService{reading.health}"
    conditions = set_condition(new_status.conditions, COND_READY, ready, reason, reading.message, now, generation)
    if ready_before is not None and ready_before.status != ("True" if ready else "False"):
        events.append(
            Event("Normal" if ready else "Warning", reason, f"InferenceService {meta.name}: {reading.message}")
        )
    preview = reading.preview_url if decision.canary is not None else None
    update: dict[str, Any] = {
        "conditions": conditions,
        "observedGeneration": generation,
        "previewUrl": preview,
        "inferenceService": InferenceServiceRef(
            name=meta.name, ready=ready, health=reading.health, url=reading.url, message=reading.message
        ),
    }
    if observed.cost is not None:
        update["cost"] = observed.cost
    if package is not None and decision.stable is not None and decision.stable.modelPackageArn == package.arn:
        update["lineage"] = package.lineage
    new_status = new_status.model_copy(update=update)

    # Built from the status just decided: the quality alerts follow the revisions served from now on.
    decided = md.model_copy(update={"status": new_status})
    jobs = config.scrape_jobs
    rules = {"driftRule": drift_rules.build_prometheus_rule(decided, jobs),
             "qualityRule": quality_rules.build_prometheus_rule(decided, jobs)}
    for rule in rules.values():
        if rule is not None:
            rule["metadata"]["ownerReferences"] = [inferenceservice.owner_reference(md)]
    requeue = decision.requeue_after
    if not ready:
        requeue = min(requeue or config.resync_seconds, 5.0)
    return ReconcileResult(
        status=new_status,
        isvc=isvc,
        rules=rules,
        events=events,
        requeue_after=requeue,
    )
