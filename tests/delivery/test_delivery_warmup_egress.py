"""The controller's NetworkPolicy lets its warm-up requests out (issue 15): to Kanari-managed predictor pods of
the namespaces it serves, on the model server's port; to the serving gateway a Serverless tag route goes
through; to the drift monitor (recently logged requests); and not to other pods or namespaces."""

from __future__ import annotations

from typing import Any

import pytest
from test_delivery_trust import NAMESPACE, PREDICTOR, one, rendered, selects

pytestmark = pytest.mark.timeout(120)


def ingress_allowed(policy: dict[str, Any], pod_labels: dict[str, str], port: str) -> bool:
    """From a pod of the release's namespace."""
    for rule in policy["spec"]["ingress"]:
        if port not in {p["port"] for p in rule.get("ports") or []}:
            continue
        for peer in rule.get("from") or []:
            ns_ok = "namespaceSelector" not in peer or selects(peer["namespaceSelector"],
                                                               {"kubernetes.io/metadata.name": NAMESPACE})
            if ns_ok and "podSelector" in peer and selects(peer["podSelector"], pod_labels):
                return True
    return False


def egress_allowed(policy: dict[str, Any], namespace: str, pod_labels: dict[str, str], port: int) -> bool:
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"]["egress"]:
        ports = {p["port"] for p in rule.get("ports") or []}
        if ports and port not in ports:
            continue
        peers = rule.get("to")
        if not peers:
            return True  # any destination on these ports
        for peer in peers:
            ns_ok = selects(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer else (
                namespace == NAMESPACE)
            pod_ok = "podSelector" not in peer or selects(peer["podSelector"], pod_labels)
            if ns_ok and pod_ok:
                return True
    return False


@pytest.mark.parametrize(("scenario", "served", "other"), [
    ("default-values.yaml", "ml-prod", None),
    ("tls-values.yaml", "ml-prod", "team-b"),
])
def test_warm_up_requests_may_leave_the_controller_and_nothing_more(scenario: str, served: str, other: str | None) -> None:
    objs = rendered(scenario)
    policy = one(objs, "NetworkPolicy", "kanari-controller")
    assert egress_allowed(policy, served, PREDICTOR, 8080), "RawDeployment canary pods (KServe's model server)"
    assert not egress_allowed(policy, served, {"app": "database"}, 8080), "any other pod"
    if other is not None:  # watchNamespaces set: only the namespaces the controller serves
        assert not egress_allowed(policy, other, PREDICTOR, 8080)
    assert egress_allowed(policy, "istio-system", {"istio": "ingressgateway"}, 80), "Serverless tag routes"
    assert egress_allowed(policy, "kourier-system", {"app": "3scale-kourier-gateway"}, 8080)
    monitor = one(objs, "Deployment", "kanari-drift-monitor")
    labels = monitor["spec"]["template"]["metadata"]["labels"]
    port = next(p["containerPort"] for c in monitor["spec"]["template"]["spec"]["containers"] for p in c["ports"]
                if p["name"] == "http")
    assert egress_allowed(policy, NAMESPACE, labels, port), "the drift monitor's recent requests"
    # ... and the monitor lets the controller in (its egress alone would be dropped at the monitor).
    controller = one(objs, "Deployment", "kanari-controller")["spec"]["template"]["metadata"]["labels"]
    monitor_policy = one(objs, "NetworkPolicy", "kanari-drift-monitor")
    assert ingress_allowed(monitor_policy, controller, "http"), "the controller reaching the monitor's read API"
    assert not ingress_allowed(monitor_policy, {"app": "database"}, "http")
