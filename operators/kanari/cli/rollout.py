"""`kanari promote|abort|pause|resume|retry|status NAME` (also `kubectl kanari ...`).

Actions never edit the spec (GitOps-safe): they set the kanari.dev/action annotation to
"<action>/<nonce>"; the controller consumes each value once and records it in status.rollout.lastAction.
The Kubernetes connection is the usual one: in-cluster config, or the kubeconfig (KUBECONFIG, current
context, and its namespace unless -n is given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError

from kanari.api.v1alpha1 import (
    ACTION_ANNOTATION,
    GROUP,
    PLURAL,
    VERSION,
    ModelDeploymentStatus,
    ModelRef,
    SpecError,
    parse_spec,
)
from kanari.cli.analysis_view import render_runs

SETTLED = ("Succeeded", "RolledBack", "Failed")
POLL_SECONDS = 1.0
_HELP = {
    "promote": "move the rollout to its next step (--full: straight to 100%% and done)",
    "abort": "roll back now: canary weight 0, the stable version keeps serving",
    "pause": "hold the rollout at its current step",
    "resume": "continue a paused rollout",
    "retry": "roll out a rolled-back revision again",
}


class CliError(Exception):
    pass


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for action, text in _HELP.items():
        p = subparsers.add_parser(action, help=text, description=text)
        p.add_argument("name", help="ModelDeployment name")
        p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        if action == "promote":
            p.add_argument("--full", action="store_true", help="skip the remaining steps and analysis")
        p.set_defaults(func=_run_action, action=action)
    s = subparsers.add_parser(
        "status", help="show a rollout: step, weights, models, analysis, conditions",
        description="Show a ModelDeployment's rollout. With --watch, follow it until it settles "
        "(exit 0 when Succeeded, 1 when RolledBack or Failed).",
    )
    s.add_argument("name", help="ModelDeployment name")
    s.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    s.add_argument("-w", "--watch", action="store_true", help="follow changes until the rollout settles")
    s.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    s.set_defaults(func=_run_status)


def _connect(namespace: str | None) -> tuple[client.CustomObjectsApi, str]:
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            default_ns = "default"
            sa_ns = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
            if os.path.exists(sa_ns):
                with open(sa_ns) as f:
                    default_ns = f.read().strip() or default_ns
        else:
            # KUBECONFIG is read now, not at import (the client's default is frozen when it is imported).
            path = os.environ.get("KUBECONFIG") or None
            config.load_kube_config(config_file=path)
            _, active = config.list_kube_config_contexts(config_file=path)
            default_ns = (active or {}).get("context", {}).get("namespace") or "default"
    except (ConfigException, OSError) as exc:
        raise CliError(f"no Kubernetes connection: {exc}") from None
    return client.CustomObjectsApi(), namespace or default_ns


def _get(api: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    try:
        return dict(api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
    except ApiException as exc:
        raise _api_error(exc, ns, name) from None


def _api_error(exc: ApiException, ns: str, name: str) -> CliError:
    if exc.status == 404:
        return CliError(f"modeldeployment {name} not found in namespace {ns}")
    reason = exc.reason or ""
    with contextlib.suppress(ValueError):
        reason = json.loads(exc.body or "{}").get("message", reason)
    return CliError(f"modeldeployment {ns}/{name}: API error {exc.status}: {reason}")


def _run_action(args: argparse.Namespace) -> int:
    action = "promote-full" if args.action == "promote" and args.full else args.action
    value = f"{action}/{uuid.uuid4().hex[:8]}"
    try:
        api, ns = _connect(args.namespace)
        try:
            api.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, args.name, {"metadata": {"annotations": {ACTION_ANNOTATION: value}}}
            )
        except ApiException as exc:
            raise _api_error(exc, ns, args.name) from None
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{action} requested for modeldeployment {ns}/{args.name} ({ACTION_ANNOTATION}={value})")
    return 0


def _run_status(args: argparse.Namespace) -> int:
    try:
        api, ns = _connect(args.namespace)
        obj = _get(api, ns, args.name)
        _show(obj, args.output)
        if not args.watch:
            return 0
        return _follow(api, ns, args.name, obj, args.output)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _follow(api: client.CustomObjectsApi, ns: str, name: str, obj: dict[str, Any], output: str) -> int:
    # Polling one object once a second is cheap and survives API-server restarts and expired watches.
    last = obj
    while not _settled(last):
        time.sleep(POLL_SECONDS)
        new = _get(api, ns, name)
        if new.get("status") != last.get("status"):
            _show(new, output)
        last = new
    return 0 if (last.get("status") or {}).get("phase") == "Succeeded" else 1


def _settled(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    return st.get("phase") in SETTLED and not st.get("canaryModel")


def _show(obj: dict[str, Any], output: str) -> None:
    if output == "text":
        print(render_status(obj), flush=True)
        return
    doc = {
        "metadata": {k: obj["metadata"].get(k) for k in ("name", "namespace", "generation")},
        "status": obj.get("status") or {},
    }
    if output == "json":
        print(json.dumps(doc, indent=2), flush=True)
    else:
        print(yaml.safe_dump(doc, sort_keys=False).rstrip() + "\n---", flush=True)


def _model(ref: ModelRef | None) -> str:
    if ref is None:
        return "-"
    where = ref.modelPackageArn or ref.storageUri
    return f"{ref.version or ref.revision}  (revision {ref.revision}{', ' + where if where else ''})"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_status(obj: dict[str, Any]) -> str:
    """The at-a-glance view of one ModelDeployment's rollout."""
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
    if ro.lastAction:
        lines.append(f"Last action: {ro.lastAction}")
    if st.analysisRuns:
        lines.append("Analysis runs:")
        lines += render_runs(st.analysisRuns)
    if st.conditions:
        lines.append("Conditions:")
        rows = [["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
        rows += [[c.type, c.status, c.reason, c.lastTransitionTime, c.message] for c in st.conditions]
        lines += _table(rows)
    return "\n".join(lines)
