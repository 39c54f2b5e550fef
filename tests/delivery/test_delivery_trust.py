"""The chart's side of the trust boundaries (issue 11): who may reach the drift monitor, TLS for both
services and their scrapes, labels Prometheus keeps, and the bounds the services run with."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import yaml
from delivery_schemas import CHART, helm, render_chart
from kanari.retrain.receiver import ReceiverConfig

NAMESPACE = "kanari-system"
pytestmark = pytest.mark.timeout(120)


@functools.cache
def rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_chart("-f", str(CHART / "ci" / scenario), namespace=NAMESPACE))


def one(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    # Sharded drift-monitor replicas run as a StatefulSet: a workload either way.
    kinds = ("Deployment", "StatefulSet") if kind == "Deployment" else (kind,)
    found = [o for o in objs if o["kind"] in kinds and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector, evaluated as the API server does."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": present and value in e.get("values", []), "NotIn": not present or value not in e.get("values", []),
              "Exists": present, "DoesNotExist": not present}[e["operator"]]
        if not ok:
            return False
    return True


def admitted(policy: dict[str, Any], namespace: str, pod_labels: dict[str, str]) -> bool:
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from", []):
            ns_ok = "namespaceSelector" not in peer or selects(peer["namespaceSelector"], ns_labels)
            pod_ok = "podSelector" not in peer or selects(peer["podSelector"], pod_labels)
            if ns_ok and pod_ok:
                return True
    return False


# How KServe labels a predictor pod of an InferenceService Kanari manages (kserve constants:
# KServiceComponentLabel "component", InferenceServiceLabel "serving.kserve.io/inferenceservice").
PREDICTOR = {"component": "predictor", "serving.kserve.io/inferenceservice": "fraud", "app.kubernetes.io/managed-by": "kanari"}


@pytest.mark.parametrize(("scenario", "monitored", "other"), [
    ("default-values.yaml", "ml-prod", None),
    ("tls-values.yaml", "ml-prod", "team-b"),
])
def test_only_predictor_pods_of_monitored_namespaces_reach_the_drift_monitor(
    scenario: str, monitored: str, other: str | None
) -> None:
    policy = one(rendered(scenario), "NetworkPolicy", "kanari-drift-monitor")
    assert admitted(policy, monitored, PREDICTOR)
    assert not admitted(policy, monitored, {"app": "debug-shell"})  # any other pod of a model namespace
    assert not admitted(policy, monitored, {**PREDICTOR, "component": "transformer"})
    assert not admitted(policy, monitored, {k: v for k, v in PREDICTOR.items() if k != "serving.kserve.io/inferenceservice"})
    assert admitted(policy, "monitoring", {"app.kubernetes.io/name": "prometheus"})  # scrapes
    if other:
        assert not admitted(policy, other, PREDICTOR)  # a namespace the operator does not watch


@pytest.mark.parametrize("scenario", ["default-values.yaml", "tls-values.yaml", "eks-irsa-amp-values.yaml"])
def test_service_monitors_keep_the_targets_labels(scenario: str) -> None:
    monitors = [o for o in rendered(scenario) if o["kind"] == "ServiceMonitor"]
    assert len(monitors) == 3
    for sm in monitors:
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["honorLabels"] is False
        relabel = endpoint["metricRelabelings"]
        # only the ModelDeployment's namespace label comes back; job/instance/pod stay Prometheus's
        assert relabel[0]["sourceLabels"] == ["exported_namespace"] and relabel[0]["targetLabel"] == "namespace"
        assert {r.get("targetLabel") for r in relabel} <= {"namespace", None}


def test_tls_serves_both_services_and_their_scrapes_with_the_certificate() -> None:
    from kanari.cli.main import build_parser

    objs = rendered("tls-values.yaml")
    cert = one(objs, "Certificate", "kanari-tls")
    secret = cert["spec"]["secretName"]
    assert cert["spec"]["issuerRef"] == {"name": "kanari-ca", "kind": "Issuer", "group": "cert-manager.io"}
    parser = build_parser()
    for component in ("drift-monitor", "alert-receiver"):
        name = f"kanari-{component}"
        service = one(objs, "Service", name)["metadata"]["name"]
        assert f"{service}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
        pod = one(objs, "Deployment", name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = parser.parse_args(container["command"][1:])
        mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
        assert args.tls_cert_file == f"{mount['mountPath']}/tls.crt" and args.tls_key_file == f"{mount['mountPath']}/tls.key"
        assert next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"] == secret
        assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
        (endpoint,) = one(objs, "ServiceMonitor", name)["spec"]["endpoints"]
        assert endpoint["scheme"] == "https"
        assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": secret, "key": "ca.crt"}
        assert endpoint["tlsConfig"]["serverName"] == f"{service}.{NAMESPACE}.svc"
    controller = one(objs, "Deployment", "kanari-controller")["spec"]["template"]["spec"]["containers"][0]
    url = next(e["value"] for e in controller["env"] if e["name"] == "KANARI_DRIFT_MONITOR_URL")
    assert url.startswith("https://kanari-drift-monitor.")
    # without TLS nothing of it renders
    default = rendered("default-values.yaml")
    assert not [o for o in default if o["kind"] == "Certificate"]
    assert "--tls-cert-file" not in one(default, "Deployment", "kanari-drift-monitor")["spec"]["template"]["spec"]["containers"][0]["command"]


def test_tls_without_a_certificate_source_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("tls:\n  enabled: true\n")
    proc = helm("template", "kanari", str(CHART), "-f", str(path))
    assert proc.returncode != 0 and "/tls/certManager/issuerRef/name" in proc.stderr, proc.stderr
    path.write_text("tls:\n  enabled: true\n  existingSecret: my-tls\n")
    objs = list(yaml.safe_load_all(helm("template", "kanari", str(CHART), "-f", str(path)).stdout))
    assert not [o for o in objs if o and o["kind"] == "Certificate"]


def test_the_bounds_in_values_reach_the_services_and_the_monitor_may_list_model_deployments() -> None:
    from kanari.cli.main import build_parser

    objs = rendered("tls-values.yaml")
    container = one(objs, "Deployment", "kanari-drift-monitor")["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["command"][1:])
    assert args.kubernetes and args.max_models == 50 and args.max_event_bytes == 2097152
    assert args.max_rows_per_event == 10000 and args.header_timeout == 10 and args.body_timeout == 30
    assert args.watch_namespace == ["ml-prod", "ml-staging"]
    assert one(objs, "Deployment", "kanari-drift-monitor")["spec"]["template"]["spec"]["automountServiceAccountToken"]
    role = one(rendered("default-values.yaml"), "ClusterRole", "kanari-drift-monitor")
    # ... and patch status, for status.previewTraffic only (BlueGreen preview replay, on by default).
    assert role["rules"] == [{"apiGroups": ["kanari.dev"], "resources": ["modeldeployments"], "verbs": ["list", "watch"]},
                             {"apiGroups": ["kanari.dev"], "resources": ["modeldeployments/status"], "verbs": ["patch"]}]
    config = ReceiverConfig.model_validate(yaml.safe_load(one(objs, "ConfigMap", "kanari-alert-receiver")["data"]["receiver.yaml"]))
    assert config.modelDeployments and config.maxRunsPerHour == 5 and config.launchTimeoutSeconds == 60
    env = {e["name"] for e in one(objs, "Deployment", "kanari-alert-receiver")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env


@pytest.mark.parametrize("enabled", [True, False])
def test_preview_replay_gets_its_egress_status_patch_and_bounds_only_when_on(enabled: bool) -> None:
    """BlueGreen preview replay (kanari/monitor/replay.py): the monitor reaches the Knative gateway serving tag
    URLs, patches status.previewTraffic, and runs with the chart's rate and preview bounds; off, none of it."""
    from kanari.cli.main import build_parser

    args = ("--set", f"driftMonitor.previewReplay.enabled={str(enabled).lower()}")
    objs = tuple(render_chart("-f", str(CHART / "ci" / "default-values.yaml"), *args, namespace=NAMESPACE))
    policy = one(objs, "NetworkPolicy", "kanari-drift-monitor")
    gateway = [r for r in policy["spec"]["egress"] for p in r.get("to", [])
               if selects(p.get("namespaceSelector") or {"matchLabels": {"x": "never"}},
                          {"kubernetes.io/metadata.name": "istio-system"})]
    role = next(o for o in objs if o["kind"] in ("ClusterRole", "Role") and "drift-monitor" in o["metadata"]["name"])
    patches_status = any("modeldeployments/status" in r["resources"] and "patch" in r["verbs"] for r in role["rules"])
    container = one(objs, "Deployment", "kanari-drift-monitor")["spec"]["template"]["spec"]["containers"][0]
    parsed = build_parser().parse_args(container["command"][1:])
    if enabled:
        assert [p["port"] for r in gateway for p in r["ports"]] == [80, 8081]
        assert patches_status
        assert (parsed.max_replay_rate, parsed.max_replays, parsed.no_replay) == (20.0, 10, False)
        assert parsed.preview_domain == ["svc.cluster.local"]
    else:
        assert gateway == [] and not patches_status and parsed.no_replay


def test_only_the_monitor_and_the_controller_hold_the_monitors_read_api_token() -> None:
    """GET /v1/recent-requests serves logged request bodies: its token is a generated Secret given to the drift
    monitor and the controller, and to no other workload."""
    objs = rendered("default-values.yaml")
    secret = one(objs, "Secret", "kanari-drift-monitor-api")
    assert len(secret["data"]["token"]) >= 48
    holders = set()
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env") or []:
                ref = ((e.get("valueFrom") or {}).get("secretKeyRef") or {})
                if ref.get("name") == "kanari-drift-monitor-api":
                    assert e["name"] == "KANARI_MONITOR_API_TOKEN"
                    holders.add(o["metadata"]["name"])
    assert holders == {"kanari-drift-monitor", "kanari-controller"}
