"""`kanari list`, `kanari status NAME` and `kanari promote|abort|pause|resume|retry NAME` (also `kubectl kanari`).

Actions never edit the spec (GitOps-safe): they set the kanari.dev/action annotation to
"<action>/<nonce>"; the controller consumes each value once and records it in status.rollout.lastAction.
The Kubernetes connection is kubectl's: --kubeconfig, --context, -n (kanari.kubeclient).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kanari.cli.common import (
    FAILED,
    NOT_FOUND,
    OK,
    USAGE,
    CliError,
    add_cluster_flags,
    add_output,
    api_error,
    connect,
    dump,
    table,
)

if TYPE_CHECKING:
    from kanari.api.v1alpha1 import ModelRef

# Spelled here rather than imported so that building the parser does not import pydantic (kanari --help).
GROUP, VERSION, PLURAL, KIND = "kanari.dev", "v1alpha1", "modeldeployments", "ModelDeployment"
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
SETTLED = ("Succeeded", "RolledBack", "Failed")
POLL_SECONDS = 1.0
_HELP = {
    "promote": "move the rollout to its next step (--full: straight to 100%% and done)",
    "abort": "roll back now: canary weight 0, the stable version keeps serving",
    "pause": "hold the rollout at its current step",
    "resume": "continue a paused rollout",
    "retry": "roll out a rolled-back revision again",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ls = subparsers.add_parser(
        "list", aliases=["get"], help="list ModelDeployments: phase, traffic, step, age (as kubectl get md)",
        description="List ModelDeployments with their phase, stable/canary versions and weights, step and age.",
    )
    ls.add_argument("name", nargs="?", help="only this ModelDeployment")
    add_cluster_flags(ls, all_namespaces=True)
    add_output(ls)
    ls.set_defaults(func=_run_list)
    for action, text in _HELP.items():
        p = subparsers.add_parser(action, help=text, description=text)
        p.add_argument("name", help="ModelDeployment name")
        add_cluster_flags(p, all_namespaces=True)
        if action == "promote":
            p.add_argument("--full", action="store_true", help="skip the remaining steps and analysis")
        add_output(p, ("name",))
        p.set_defaults(func=_run_action, action=action)
    s = subparsers.add_parser(
        "status", help="show a rollout: step, weights, models, analysis, conditions, InferenceService revisions",
        description="Show a ModelDeployment's rollout and its InferenceService's revisions. With --watch, follow "
        "it until it settles (exit 0 when Succeeded, 1 when RolledBack or Failed).",
    )
    s.add_argument("name", help="ModelDeployment name")
    add_cluster_flags(s, all_namespaces=True)
    s.add_argument("-w", "--watch", action="store_true", help="follow changes until the rollout settles")
    add_output(s)
    s.set_defaults(func=_run_status)


def _objects(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


def _get(api: Any, ns: str, name: str, gvr: tuple[str, str, str] = (GROUP, VERSION, PLURAL)) -> dict[str, Any]:
    from kubernetes.client.rest import ApiException

    try:
        return dict(api.get_namespaced_custom_object(gvr[0], gvr[1], ns, gvr[2], name))
    except ApiException as exc:
        raise api_error(exc, f"{'modeldeployment' if gvr[2] == PLURAL else 'inferenceservice'} {name}", ns) from None


def _namespace_of(api: Any, args: argparse.Namespace, ns: str) -> str:
    """With -A, the one namespace holding a ModelDeployment of that name (as `kubectl get -A` finds it)."""
    if not getattr(args, "all_namespaces", False):
        return ns
    from kubernetes.client.rest import ApiException

    try:
        found = api.list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector=f"metadata.name={args.name}")
    except ApiException as exc:
        raise api_error(exc, "modeldeployments") from None
    spaces = sorted({i["metadata"]["namespace"] for i in found.get("items") or []
                     if i["metadata"]["name"] == args.name})
    if not spaces:
        raise CliError(f"modeldeployment {args.name} not found in any namespace", NOT_FOUND)
    if len(spaces) > 1:
        raise CliError(f"modeldeployment {args.name} exists in {', '.join(spaces)}: choose one with -n", USAGE)
    return spaces[0]


def _run_action(args: argparse.Namespace) -> int:
    import uuid

    from kubernetes.client.rest import ApiException

    from kanari.api.v1alpha1 import ACTION_ANNOTATION

    action = "promote-full" if args.action == "promote" and args.full else args.action
    value = f"{action}/{uuid.uuid4().hex[:8]}"
    api_client, ns = connect(args)
    ns = _namespace_of(_objects(api_client), args, ns)
    try:
        _objects(api_client).patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, args.name, {"metadata": {"annotations": {ACTION_ANNOTATION: value}}}
        )
    except ApiException as exc:
        raise api_error(exc, f"modeldeployment {args.name}", ns) from None
    if args.output == "name":
        print(f"modeldeployment.{GROUP}/{args.name}")
    else:
        print(f"{action} requested for modeldeployment {ns}/{args.name} ({ACTION_ANNOTATION}={value})")
    return OK


# --------------------------------------------------------------------------------------------- list
def _run_list(args: argparse.Namespace) -> int:
    from kubernetes.client.rest import ApiException

    api_client, ns = connect(args)
    api = _objects(api_client)
    every = bool(getattr(args, "all_namespaces", False))
    if args.name and not every:
        items = [_get(api, ns, args.name)]
    else:
        try:
            if every:
                found = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            else:
                found = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        except ApiException as exc:
            raise api_error(exc, "modeldeployments", None if every else ns) from None
        items = [i for i in found.get("items") or [] if not args.name or i["metadata"]["name"] == args.name]
        if args.name and not items:
            raise CliError(f"modeldeployment {args.name} not found in any namespace", NOT_FOUND)
    items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    print(render_list(items, args.output, every, now=datetime.now(UTC), namespace=ns))
    return OK


def render_list(items: list[dict[str, Any]], output: str | None, all_namespaces: bool, now: datetime,
                namespace: str = "") -> str:
    if output == "name":
        return "\n".join(f"modeldeployment.{GROUP}/{o['metadata']['name']}" for o in items)
    if output in ("json", "yaml"):
        return dump({"apiVersion": "v1", "kind": "List", "items": items}, output)
    if not items:
        return "No ModelDeployments found" + ("" if all_namespaces else f" in namespace {namespace}.")
    header = ["NAME", "PHASE", "STABLE", "CANARY", "WEIGHT", "STEP", "AGE"]
    if output == "wide":
        header += ["STRATEGY", "READY", "MESSAGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows = [header]
    for obj in items:
        rows.append(_list_row(obj, output == "wide", all_namespaces, now))
    return "\n".join(table(rows))


def _version(ref: dict[str, Any] | None) -> str:
    if not ref:
        return "<none>"
    return str(ref.get("version") or ref.get("revision") or "?")


def _list_row(obj: dict[str, Any], wide: bool, all_namespaces: bool, now: datetime) -> list[str]:
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    canary = st.get("canaryModel")
    weight = int(st.get("canaryWeight") or 0) if canary else 0
    steps = (spec.get("rollout") or {}).get("steps")
    row = [
        str(meta.get("name")),
        str(st.get("phase") or "Pending"),
        _version(st.get("stableModel")),
        _version(canary),
        f"{100 - weight}/{weight}",
        f"{st.get('currentStep', 0)}/{len(steps)}" if steps else str(st.get("currentStep", 0)),
        age(meta.get("creationTimestamp"), now),
    ]
    if wide:
        ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        row += [str((spec.get("rollout") or {}).get("strategy") or "Canary"), str(ready.get("status", "Unknown")),
                str(st.get("message") or "")[:80]]
    if all_namespaces:
        row.insert(0, str(meta.get("namespace")))
    return row


def age(timestamp: str | None, now: datetime) -> str:
    """kubectl's AGE: the two largest units (5m30s, 3h12m, 4d5h)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    s = max(0, int((now - then).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 8 * 3600:
        return f"{s // 3600}h{(s % 3600) // 60}m" if (s % 3600) // 60 else f"{s // 3600}h"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    if s < 8 * 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h" if (s % 86400) // 3600 else f"{s // 86400}d"
    return f"{s // 86400}d"


# ------------------------------------------------------------------------------------------- status
def _run_status(args: argparse.Namespace) -> int:
    api_client, ns = connect(args)
    api = _objects(api_client)
    ns = _namespace_of(api, args, ns)
    obj = _get(api, ns, args.name)
    _show(api, obj, args.output)
    if not args.watch:
        return OK
    return _follow(api, ns, args.name, obj, args.output)


def _isvc(api: Any, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The InferenceService the ModelDeployment owns, or None when it does not exist (yet) or cannot be read."""
    meta = obj["metadata"]
    name = ((obj.get("status") or {}).get("inferenceService") or {}).get("name") or meta["name"]
    try:
        return _get(api, meta["namespace"], name, ISVC)
    except CliError as exc:
        if exc.code == NOT_FOUND:
            return None
        raise


def _follow(api: Any, ns: str, name: str, obj: dict[str, Any], output: str | None) -> int:
    # Polling one object once a second is cheap and survives API-server restarts and expired watches.
    last = obj
    while not _settled(last):
        time.sleep(POLL_SECONDS)
        new = _get(api, ns, name)
        if new.get("status") != last.get("status"):
            _show(api, new, output)
        last = new
    return OK if (last.get("status") or {}).get("phase") == "Succeeded" else FAILED


def _settled(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    return st.get("phase") in SETTLED and not st.get("canaryModel")


def _show(api: Any, obj: dict[str, Any], output: str | None) -> None:
    if output == "name":
        print(f"modeldeployment.{GROUP}/{obj['metadata']['name']}", flush=True)
        return
    isvc = _isvc(api, obj)
    if output in (None, "wide"):
        text = render_status(obj)
        text += "\n" + render_revisions(isvc)
        print(text, flush=True)
        return
    doc = {
        "metadata": {k: obj["metadata"].get(k) for k in ("name", "namespace", "generation")},
        "status": obj.get("status") or {},
        "inferenceService": None if isvc is None else {
            "name": isvc["metadata"]["name"], "revisions": revisions(isvc),
            "conditions": (isvc.get("status") or {}).get("conditions") or [],
        },
    }
    print(dump(doc, output) + ("\n---" if output == "yaml" else ""), flush=True)


def revisions(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    """The InferenceService's revisions as KServe reports them: traffic share, role and readiness.

    Serverless: status.components.predictor (latestCreated/latestReady/latestRolledout/previousRolledout and
    traffic[]); RawDeployment canaries: status.canaryStatuses.
    """
    st = isvc.get("status") or {}
    pred = (st.get("components") or {}).get("predictor") or {}
    ready_rev = pred.get("latestReadyRevision")
    roles: dict[str, str] = {}
    for key, role in (("previousRolledoutRevision", "previous"), ("latestRolledoutRevision", "stable"),
                      ("latestCreatedRevision", "latest")):
        if pred.get(key):
            roles.setdefault(pred[key], role)
    traffic = {t.get("revisionName"): int(t.get("percent") or 0) for t in pred.get("traffic") or []
               if t.get("revisionName")}
    names = list(dict.fromkeys([*roles, *traffic]))
    out = []
    for name in names:
        created = pred.get("latestCreatedRevision")
        if name == created:
            ready = "True" if ready_rev == created else "Unknown"
            failed = (st.get("modelStatus") or {}).get("transitionStatus") == "BlockedByFailedLoad"
            ready = "False" if failed and ready != "True" else ready
        else:
            ready = "True" if traffic.get(name) else "-"
        out.append({"name": name, "role": roles.get(name, "-"), "traffic": traffic.get(name, 0), "ready": ready})
    for i, c in enumerate(st.get("canaryStatuses") or []):
        out.append({"name": str(c.get("name") or f"canary-{i}"), "role": "canary",
                    "traffic": int(c.get("trafficPercent") or 0), "ready": "True" if c.get("ready") else "False"})
    return out


def render_revisions(isvc: dict[str, Any] | None) -> str:
    if isvc is None:
        return "InferenceService: not created yet"
    st = isvc.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or []}
    ready = conds.get("Ready") or {}
    head = f"InferenceService: {isvc['metadata']['name']}  Ready={ready.get('status', 'Unknown')}"
    if ready.get("status") not in (None, "True") and (ready.get("reason") or ready.get("message")):
        head += f" ({ready.get('reason') or ''}{': ' if ready.get('reason') and ready.get('message') else ''}" \
                f"{ready.get('message') or ''})"
    if st.get("url"):
        head += f"  {st['url']}"
    lines = [head]
    revs = revisions(isvc)
    if revs:
        rows = [["REVISION", "ROLE", "TRAFFIC", "READY"]]
        rows += [[r["name"], r["role"], f"{r['traffic']}%", r["ready"]] for r in revs]
        lines += table(rows, "  ")
    return "\n".join(lines)


def _model(ref: ModelRef | None) -> str:
    if ref is None:
        return "-"
    where = ref.modelPackageArn or ref.storageUri
    return f"{ref.version or ref.revision}  (revision {ref.revision}{', ' + where if where else ''})"


def render_status(obj: dict[str, Any]) -> str:
    """The at-a-glance view of one ModelDeployment's rollout."""
    from pydantic import ValidationError

    from kanari.api.v1alpha1 import ModelDeploymentStatus, SpecError, parse_spec

    meta = obj.get("metadata", {})
    try:
        st = ModelDeploymentStatus.model_validate(obj.get("status") or {})
    except ValidationError as exc:
        return f"{meta.get('namespace')}/{meta.get('name')}: unreadable status: {exc.errors()[0]['msg']}"
    strategy: str
    try:
        spec = parse_spec(obj.get("spec"))
        strategy, total = spec.rollout.strategy, str(len(spec.rollout.effective_steps()))
    except SpecError as exc:
        strategy, total = f"invalid spec ({exc})", "?"
    ro = st.rollout
    stable_w = 100 - st.canaryWeight if st.canaryModel else 100
    lines = [
        f"Name:        {meta.get('name')}  (namespace {meta.get('namespace')})",
        f"Phase:       {st.phase}" + (f"  -  {st.message}" if st.message else ""),
        f"Strategy:    {strategy}    Step: {st.currentStep}/{total}",
        f"Traffic:     stable {stable_w}%  canary {st.canaryWeight if st.canaryModel else 0}%",
        f"Stable:      {_model(st.stableModel)}",
        f"Canary:      {_model(st.canaryModel)}",
    ]
    for p in st.pauseConditions:
        lines.append(f"Paused:      {p.reason} since {p.startTime}" + (f"  -  {p.message}" if p.message else ""))
    if st.abortedRevision:
        lines.append(f"Rolled back: revision {st.abortedRevision} (not retried until the spec changes or `retry`)")
    if ro.bakeUntil:
        lines.append(f"Bake until:  {ro.bakeUntil} (previous version kept warm)")
    if st.previewUrl:
        lines.append(f"Preview:     {st.previewUrl}")
    if st.warmup is not None:
        lines.append(_warmup_line(st.warmup))
    pt = st.previewTraffic
    if pt is not None and st.canaryModel is not None and pt.revision == st.canaryModel.revision:
        state = "replaying" if pt.active else "stopped"
        lines.append(f"Fed by:      {pt.source} of logged stable requests ({state}, at most {pt.ratePerSecond:g}/s): "
                     f"{pt.sent} sent, {pt.errors} errors, {pt.available} held")
    if ro.lastAction:
        lines.append(f"Last action: {ro.lastAction}")
    if st.analysisRuns:
        lines.append("Analysis runs:")
        from kanari.cli.analysis_view import render_runs  # imported on use: `--help` must not load pydantic

        lines += render_runs(st.analysisRuns)
    if st.conditions:
        lines.append("Conditions:")
        rows = [["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
        rows += [[c.type, c.status, c.reason, c.lastTransitionTime, c.message] for c in st.conditions]
        lines += _table(rows)
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _warmup_line(w: Any) -> str:
    """status.warmup in one line: the gate's outcome, answers, slowest answer and cold start."""
    state = f"warm since {w.succeededAt}" if w.succeededAt else (
        f"FAILED at {w.failedAt}" if w.failedAt else f"warming since {w.startedAt}")
    parts = [f"revision {w.revision}: {state}", f"{w.answered} answered, {w.failed} failed"]
    if w.latencySeconds is not None:
        parts.append(f"slowest answer {w.latencySeconds:.2f}s")
    if w.coldStartSeconds is not None:
        parts.append(f"cold start {w.coldStartSeconds:.1f}s")
    return "Warm-up:     " + "; ".join(parts)
