"""The RBAC the operator really uses, taken from the requests the API emulator answered during these tests,
against the rules the Helm chart grants (both RBAC scopes, rendered by the real `helm template`)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.operator.harness import ROOT, permissions, wait_for

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "kanari"
V1 = "s3://models/fraud/v1/model.tar.gz"


def exercise_every_code_path(env: Any) -> None:
    """Create (with a drift rule), become ready, change in place, drop monitoring, delete."""
    kube, name = env.kube, env.name
    spec = {"model": {"storageUri": V1, "format": "sklearn"}, "serving": {"accelerator": "cpu"},
            "monitoring": {"baselineUri": "s3://models/fraud/v1/baseline"}}
    kube.create_md(name, spec)
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    env.kserve.reconcile(name)
    kube.wait_md(name, lambda m: m.get("status", {}).get("driftRule"), "the drift rule")
    kube.patch_md(name, {"spec": {"serving": {"maxReplicas": 2}, "monitoring": {"enabled": False}}})
    kube.wait_isvc(name, lambda i: i["spec"]["predictor"]["maxReplicas"] == 2, "the in-place change")
    kube.wait_md(name, lambda m: not m["status"].get("driftRule"), "the drift rule removed")
    kube.delete_md(name)
    wait_for(lambda: kube.md(name) is None, "the ModelDeployment to be gone")


def helm_template(*args: str) -> str:
    return subprocess.run([HELM, "template", "kanari", CHART, *args], check=True, capture_output=True, text=True).stdout


def granted(rendered: str, role_kind: str, suffix: str = "-controller") -> list[set[tuple[str, str, str]]]:
    """(apiGroup, resource, verb) granted by each controller Role/ClusterRole in the rendered chart."""
    out = []
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc.get("kind") != role_kind or not doc["metadata"]["name"].endswith(suffix):
            continue
        out.append({
            (group, resource, verb)
            for rule in doc.get("rules") or []
            for group in rule.get("apiGroups") or []
            for resource in rule.get("resources") or []
            for verb in rule.get("verbs") or []
        })
    return out


# Granted though no test here makes the operator use it, each for a reason in the code.
USED_BEYOND_THESE_TESTS = {
    # A changed spec.monitoring.drift patches the PrometheusRule the controller owns (kube.Kube.apply).
    ("monitoring.coreos.com", "prometheusrules", "patch"),
    # The warm-up gate lists a canary's pods (kanari.controller.warmup; tests/operator/test_operator_warmup.py).
    ("", "pods", "list"),
}


def allowed(rules: set[tuple[str, str, str]], wanted: tuple[str, str, str]) -> bool:
    group, resource, verb = wanted
    return any(g in (group, "*") and r in (resource, "*") and v in (verb, "*") for g, r, v in rules)


@pytest.mark.timeout(60)
def test_operator_needs_no_more_than_the_chart_grants(env: Any, replicas: Any) -> None:
    exercise_every_code_path(env)
    replicas.kube.wait(("kopf.dev", "v1", "kopfpeerings"), replicas.peering, lambda p: len(p.get("status") or {}) == 2,
                       "the replicas' keep-alives")
    every_call = [c for c in env.cluster.calls() if c.by_operator and c.plural is not None]
    # Cluster-scoped reads are the NeuronCore capacity gate's alone, granted by their own read-only ClusterRole.
    capacity = permissions(c for c in every_call if c.namespace is None)
    capacity_roles = granted(helm_template(), "ClusterRole", "-capacity")
    assert len(capacity_roles) == 1
    assert sorted(p for p in capacity if not allowed(capacity_roles[0], p)) == []
    assert {v for _, _, v in capacity} <= {"list", "watch"}, "the capacity gate only reads"
    calls = [c for c in every_call if c.namespace is not None]
    observed = permissions(calls)
    # Not vacuous: the operator's own work shows up.
    assert {
        ("kanari.dev", "modeldeployments", "watch"), ("kanari.dev", "modeldeployments/status", "patch"),
        ("serving.kserve.io", "inferenceservices", "create"), ("serving.kserve.io", "inferenceservices", "patch"),
        ("monitoring.coreos.com", "prometheusrules", "delete"), ("", "events", "create"),
        ("kopf.dev", "kopfpeerings", "patch"),
    } <= observed
    watched = sorted({env.kube.namespace, replicas.kube.namespace})
    assert {c.namespace for c in calls} == set(watched), "requests outside the watched namespaces"
    # Rendered for the namespaces these operators watched, in both RBAC scopes.
    namespaces = f"watchNamespaces={{{','.join(watched)}}}"
    cluster_roles = granted(helm_template("--set", namespaces), "ClusterRole")
    namespaced = granted(helm_template("--set", namespaces, "--set", "rbac.scope=namespace"), "Role")
    assert len(cluster_roles) == 1 and len(namespaced) == len(watched)
    for rules in cluster_roles + namespaced:
        missing = sorted(p for p in observed if not allowed(rules, p))
        assert missing == [], f"the chart does not grant what the operator uses: {missing}"
        extra = sorted(p for p in rules - observed if p not in USED_BEYOND_THESE_TESTS)
        assert extra == [], f"the chart grants what the operator never uses: {extra}"
