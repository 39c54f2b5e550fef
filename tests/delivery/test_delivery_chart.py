"""The Helm chart, through the real helm binary: lint, render every scenario, and check what a cluster (and
the platform team reviewing it) would check."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from delivery_schemas import CHART, ROOT, ManifestError, helm, load_all, render_chart, validate
from kanari.controller.config import OperatorConfig
from kanari.retrain.receiver import ReceiverConfig
from kanari.rollout.prometheus import PrometheusConfig

SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "kanari-system"

pytestmark = pytest.mark.timeout(120)


@functools.cache
def rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_chart("-f", str(CHART / "ci" / scenario), namespace=NAMESPACE))


def kinds(objs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    # Sharded drift-monitor replicas run as a StatefulSet: a workload either way.
    kinds_ = ("Deployment", "StatefulSet") if kind == "Deployment" else (kind,)
    found = [o for o in objs if o["kind"] in kinds_ and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", []) if "value" in e}


def pod_specs(objs: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            out.append((f"{o['kind']} {o['metadata']['name']}", o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            out.append((f"Pod {o['metadata']['name']}", o["spec"]))
    return out


def test_scenarios_exist() -> None:
    assert {
        "default-values.yaml", "namespaced-rbac-values.yaml", "no-crds-values.yaml",
        "eks-irsa-amp-values.yaml", "monitoring-disabled-values.yaml",
    } <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario: str) -> None:
    proc = helm("lint", str(CHART), "--strict", "-f", str(CHART / "ci" / scenario))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid(scenario: str) -> None:
    objs = rendered(scenario)
    assert objs
    errors = []
    for obj in objs:
        try:
            validate(obj)
        except ManifestError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_restricted_and_never_root(scenario: str) -> None:
    """Pod Security Standard "restricted", a read-only root filesystem, and no UID 0 anywhere."""
    for where, spec in pod_specs(rendered(scenario)):
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, where
        assert psc.get("runAsUser", 0) != 0, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, (where, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (where, c["name"])
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], (where, c["name"])
            assert not sc.get("capabilities", {}).get("add"), (where, c["name"])
            assert sc.get("privileged") in (None, False), (where, c["name"])
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, (where, c["name"])
            assert sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, (where, c["name"])
            assert sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault"
            assert c.get("resources", {}).get("limits", {}).get("memory"), (where, c["name"], "memory limit")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_references_resolve(scenario: str) -> None:
    """Selectors, ports, ServiceAccounts and ConfigMaps that the objects name exist in the same render."""
    objs = rendered(scenario)
    deployments = kinds(objs, "Deployment") + kinds(objs, "StatefulSet")
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments]

    def selects(selector: dict[str, str]) -> list[dict[str, str]]:
        return [lbl for lbl in pod_labels if selector.items() <= lbl.items()]

    for d in deployments:
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    service_accounts = {o["metadata"]["name"] for o in kinds(objs, "ServiceAccount")}
    configmaps = {o["metadata"]["name"] for o in kinds(objs, "ConfigMap")}
    for where, spec in pod_specs(objs):
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in service_accounts, where
        for vol in spec.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, where
    for svc in kinds(objs, "Service"):
        matched = selects(svc["spec"]["selector"])
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {len(matched)} Deployments"
        dep = next(d for d in deployments if d["spec"]["template"]["metadata"]["labels"] == matched[0])
        port_names = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (svc["metadata"]["name"], port)
    for sm in kinds(objs, "ServiceMonitor"):
        services = [s for s in kinds(objs, "Service")
                    if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(services) == 1, sm["metadata"]["name"]
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in services[0]["spec"]["ports"]}
    for pdb in kinds(objs, "PodDisruptionBudget"):
        assert len(selects(pdb["spec"]["selector"]["matchLabels"])) == 1, pdb["metadata"]["name"]
    for np in kinds(objs, "NetworkPolicy"):
        assert len(selects(np["spec"]["podSelector"]["matchLabels"])) == 1, np["metadata"]["name"]
    for binding in kinds(objs, "ClusterRoleBinding") + kinds(objs, "RoleBinding"):
        for subject in binding["subjects"]:
            assert subject["name"] in service_accounts, binding["metadata"]["name"]
        role_kind = binding["roleRef"]["kind"]
        roles = [r for r in kinds(objs, role_kind) if r["metadata"]["name"] == binding["roleRef"]["name"]
                 and r["metadata"].get("namespace") == binding["metadata"].get("namespace")]
        assert len(roles) == 1, binding["metadata"]["name"]


def test_crd_template_is_the_generated_crd_and_is_kept() -> None:
    crd = one(rendered("default-values.yaml"), "CustomResourceDefinition", "modeldeployments.kanari.dev")
    generated = yaml.safe_load((ROOT / "manifests" / "crds" / "kanari.dev_modeldeployments.yaml").read_text())
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Argo CD applies it in an earlier wave than anything else of the chart.
    assert int(crd["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) < 0


def test_crds_install_false_leaves_the_crd_out() -> None:
    names = {o["metadata"]["name"] for o in kinds(rendered("no-crds-values.yaml"), "CustomResourceDefinition")}
    assert "modeldeployments.kanari.dev" not in names
    # kopf's peering CRDs come from crds/, which --skip-crds leaves out.
    proc = helm("template", "kanari", str(CHART), "--skip-crds", "-f", str(CHART / "ci" / "no-crds-values.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert not [o for o in load_all(proc.stdout) if o["kind"] == "CustomResourceDefinition"]


def test_default_install_is_cluster_wide_with_peering_and_two_replicas() -> None:
    objs = rendered("default-values.yaml")
    controller = one(objs, "Deployment", "kanari-controller")
    assert controller["spec"]["replicas"] == 2
    container = controller["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kanari.controller"]
    env = env_of(container)
    config = OperatorConfig.from_env(env)
    assert config.namespaces == []
    assert config.peering_name == "kanari"
    assert config.drift_monitor_url == f"http://kanari-drift-monitor.{NAMESPACE}.svc:8080"
    assert PrometheusConfig.from_env(env).url == "http://prometheus-operated.monitoring.svc:9090"
    # The peering object the replicas meet in exists, cluster-wide, and RBAC lets them use it.
    assert one(objs, "ClusterKopfPeering", "kanari")
    role = one(objs, "ClusterRole", "kanari-controller")
    assert any("clusterkopfpeerings" in r["resources"] and "patch" in r["verbs"] for r in role["rules"])
    # Probes hit kopf's health endpoint on the port the controller is told to serve it on.
    assert env["KANARI_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": int(env["KANARI_METRICS_PORT"])}
    assert {p["metadata"]["name"] for p in kinds(objs, "PodDisruptionBudget")} == {
        "kanari-controller", "kanari-drift-monitor", "kanari-alert-receiver"}


def test_namespaced_rbac_has_no_cluster_scope_at_all() -> None:
    objs = rendered("namespaced-rbac-values.yaml")
    assert not kinds(objs, "ClusterRole") and not kinds(objs, "ClusterRoleBinding")
    assert not kinds(objs, "ClusterKopfPeering")
    watched = ["ml-dev", "ml-staging"]
    for kind in ("Role", "RoleBinding", "KopfPeering"):
        assert sorted(o["metadata"]["namespace"] for o in kinds(objs, kind) if "controller" in o["metadata"]["name"]
                      or kind == "KopfPeering") == watched, kind
    for role in kinds(objs, "Role"):
        assert not any("namespaces" in r["resources"] for r in role["rules"])
    env = env_of(one(objs, "Deployment", "kanari-controller")["spec"]["template"]["spec"]["containers"][0])
    assert OperatorConfig.from_env(env).namespaces == watched


def test_eks_scenario_wires_irsa_amp_and_pull_by_digest() -> None:
    objs = rendered("eks-irsa-amp-values.yaml")
    sa = one(objs, "ServiceAccount", "kanari-controller")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/kanari-controller"
    for name in ("kanari-drift-monitor", "kanari-alert-receiver"):
        assert one(objs, "ServiceAccount", name)["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(name)
    container = one(objs, "Deployment", "kanari-controller")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("123456789012.dkr.ecr.us-west-2.amazonaws.com/kanari@sha256:")
    env = env_of(container)
    assert env["AWS_REGION"] == "us-west-2"
    prom = PrometheusConfig.from_env(env)
    assert prom.sigv4_region == "us-west-2" and prom.url.startswith("https://aps-workspaces.us-west-2.amazonaws.com/")
    # The token comes from the named Secret; the chart creates none.
    assert not kinds(objs, "Secret")
    receiver = one(objs, "Deployment", "kanari-alert-receiver")["spec"]["template"]["spec"]["containers"][0]
    token = next(e for e in receiver["env"] if e["name"] == "KANARI_RECEIVER_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "kanari-alert-receiver-token", "key": "token"}
    monitor = one(objs, "Deployment", "kanari-drift-monitor")["spec"]["template"]["spec"]["containers"][0]
    api_token = next(e for e in monitor["env"] if e["name"] == "KANARI_MONITOR_API_TOKEN")
    assert api_token["valueFrom"]["secretKeyRef"] == {"name": "kanari-drift-monitor-api-token", "key": "token"}
    rule = one(objs, "PrometheusRule", "kanari-platform")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert all(r["labels"]["team"] == "ml-platform" for g in rule["spec"]["groups"] for r in g["rules"])


def test_monitoring_disabled_renders_no_prometheus_operator_objects() -> None:
    objs = rendered("monitoring-disabled-values.yaml")
    assert not kinds(objs, "ServiceMonitor") and not kinds(objs, "PrometheusRule")
    # Single replicas: a disruption budget would block node drains.
    assert not kinds(objs, "PodDisruptionBudget")
    assert not [o for o in objs if "alert-receiver" in o["metadata"]["name"]]


def test_worker_commands_and_config_are_what_the_kanari_cli_accepts() -> None:
    from kanari.cli.main import build_parser

    objs = rendered("default-values.yaml")
    parser = build_parser()
    for name, port in (("kanari-drift-monitor", 8080), ("kanari-alert-receiver", 8080)):
        container = one(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][0] == "kanari"
        args = parser.parse_args(container["command"][1:])
        assert args.port == port and callable(args.func)
    cm = one(objs, "ConfigMap", "kanari-alert-receiver")
    config = ReceiverConfig.model_validate(yaml.safe_load(cm["data"]["receiver.yaml"]))
    assert config.store.kubernetes and config.launcher.kfp is not None
    assert config.launcher.kfp.host == "http://ml-pipeline.kubeflow.svc:8888"


def test_the_label_service_is_wired_as_the_monitor_reads_it() -> None:
    from kanari.cli.main import build_parser

    objs = rendered("customised-values.yaml")
    monitor = one(objs, "Deployment", "kanari-drift-monitor")
    container = monitor["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["command"][1:] + container.get("args", []))
    assert args.labels_s3_uri == "s3://ml-labels/fraud-scorer/" and args.labels_s3_interval == 120
    assert args.max_label_bytes == 1048576 and args.max_label_pending == 100000
    token = next(e for e in container["env"] if e["name"] == "KANARI_LABELS_TOKEN")["valueFrom"]["secretKeyRef"]
    secret = one(objs, "Secret", token["name"])
    assert token["key"] in secret["data"] and len(secret["data"][token["key"]]) >= 48
    policy = one(objs, "NetworkPolicy", "kanari-drift-monitor")
    senders = [r for r in policy["spec"]["ingress"]
               if r["from"][0].get("namespaceSelector") == {"matchLabels": {"kanari.dev/label-sender": "true"}}]
    assert len(senders) == 1
    # Off by default: no token, no endpoint, no Secret.
    default = rendered("default-values.yaml")
    env = one(default, "Deployment", "kanari-drift-monitor")["spec"]["template"]["spec"]["containers"][0].get("env", [])
    assert "KANARI_LABELS_TOKEN" not in {e["name"] for e in env}
    assert not [o for o in default if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-labels")]


@pytest.mark.parametrize("replicas", [1, 2])
def test_ground_truth_state_is_on_a_volume_per_replica_unless_disabled(replicas: int) -> None:
    """Issue 16: with labels taken, each monitor replica keeps its join stores on its own PersistentVolumeClaim,
    at the path the monitor is told (--state-dir), under the restricted pod security of every worker."""
    from kanari.cli.main import build_parser

    objs = tuple(render_chart("--set", "driftMonitor.labels.enabled=true", "--set",
                              f"driftMonitor.replicas={replicas}", "--set", "driftMonitor.persistence.size=5Gi",
                              "--set", "driftMonitor.persistence.storageClass=gp3", namespace=NAMESPACE))
    for obj in objs:
        validate(obj)
    monitor = one(objs, "Deployment", "kanari-drift-monitor")
    assert monitor["kind"] == "StatefulSet", "volumeClaimTemplates need a StatefulSet, one replica or many"
    (claim,) = monitor["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["storageClassName"] == "gp3"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    pod = monitor["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = build_parser().parse_args(container["command"][1:])
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert Path(args.state_dir).is_relative_to(mount["mountPath"]) and not mount.get("readOnly")
    assert (args.peers is not None) == (replicas > 1)
    assert pod["securityContext"]["fsGroup"] == 65532, "the volume is writable by the non-root user"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    one(objs, "Service", "kanari-drift-monitor-peers")  # the StatefulSet's serviceName exists
    # Disabled, or no labels taken: no volume, no --state-dir (the chart README says what a restart then loses).
    for flags in (("--set", "driftMonitor.labels.enabled=true", "--set", "driftMonitor.persistence.enabled=false"),
                  ()):
        plain = one(tuple(render_chart(*flags, "--set", f"driftMonitor.replicas={replicas}", namespace=NAMESPACE)),
                    "Deployment", "kanari-drift-monitor")
        assert "volumeClaimTemplates" not in plain["spec"]
        assert "--state-dir" not in plain["spec"]["template"]["spec"]["containers"][0]["command"]


BAD_VALUES = [
    ("driftMonitor:\n  labels:\n    s3:\n      uri: https://bucket/labels\n", "at '/driftMonitor/labels/s3/uri'"),
    ("driftMonitor:\n  persistence:\n    size: lots\n", "at '/driftMonitor/persistence/size'"),
    ("controller:\n  replicas: two\n", "at '/controller/replicas': got string, want integer"),
    ("controller:\n  replica: 2\n", "at '/controller': additional properties 'replica' not allowed"),
    ("networkPolicy:\n  enabled: true\n  egres: []\n", "at '/networkPolicy': additional properties 'egres' not allowed"),
    ("monitoring:\n  serviceMonitor:\n    interval: soon\n", "at '/monitoring/serviceMonitor/interval'"),
    ("rbac:\n  scope: namespace\n", "at '/watchNamespaces': minItems: got 0, want 1"),
    ("rbac:\n  scope: namespace\nwatchNamespaces: [ml-*]\n", "at '/watchNamespaces/0'"),
    ("aws:\n  controllerRoleArn: kanari-role\n", "at '/aws/controllerRoleArn'"),
    ("alertReceiver:\n  launcher:\n    command: {argv: [echo]}\n", "at '/alertReceiver/launcher'"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values_fail_with_the_schema_message(tmp_path: Path, values: str, message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    proc = helm("template", "kanari", str(CHART), "-f", str(path))
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_every_documented_value_is_in_the_schema_and_commented() -> None:
    """values.yaml documents every key inline, and the schema describes exactly those keys."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    text = (CHART / "values.yaml").read_text().splitlines()
    values = yaml.safe_load("\n".join(text))

    def walk(node: Any, sch: dict[str, Any], path: str) -> None:
        if "$ref" in sch:
            sch = schema["definitions"][sch["$ref"].rsplit("/", 1)[-1]]
        if not isinstance(node, dict) or "properties" not in sch:
            return
        assert set(node) <= set(sch["properties"]), (path, set(node) - set(sch["properties"]))
        for key, value in node.items():
            walk(value, sch["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
    # Every leaf value has a comment right above it, or sits inside a mapping that has one (resources:).
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = text[i - 1].strip().startswith("#") or any(d for _, d in stack)
        if stripped.endswith(":"):
            stack.append((indent, documented))
        else:
            assert documented, f"values.yaml line {i + 1} ({stripped}) is not documented"


def test_platform_alerts_fire_on_the_signals_they_describe(tmp_path: Path) -> None:
    """The PrometheusRule's groups, run through the real promtool against synthetic series."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/bootstrap.sh"
    rule = one(rendered("default-values.yaml"), "PrometheusRule", "kanari-platform")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True,
                           timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    ctl, dm = 'job="kanari-controller"', 'job="kanari-drift-monitor"'
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'up{{{ctl}, namespace="{NAMESPACE}", instance="a"}}', "values": "1 1 0x20"},
                    {"series": f'up{{{ctl}, namespace="{NAMESPACE}", instance="b"}}', "values": "0x22"},
                ],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "KanariOperatorDown", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "KanariOperatorDown", "exp_alerts": [
                        {"exp_labels": {"severity": "critical"}, "exp_annotations": {
                            "summary": "Kanari controller is down",
                            "description": f"No replica of kanari-controller in {NAMESPACE} has been up for 5m; "
                                           "rollouts are neither advanced nor rolled back."}}]},
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'kanari_reconcile_errors_total{{{ctl}, kind="ApiException"}}', "values": "0+1x40"},
                    {"series": f'kanari_modeldeployment_phase{{{ctl}, namespace="ml-prod", name="fraud", '
                               'kanari_modeldeployment_phase="Progressing"}', "values": "1x60"},
                    {"series": f'kanari_modeldeployment_phase{{{ctl}, namespace="ml-prod", name="churn", '
                               'kanari_modeldeployment_phase="Progressing"}', "values": "1x20 0x40"},
                    {"series": f'kanari_drift_events_total{{{dm}, outcome="accepted"}}', "values": "0+100x30"},
                    {"series": f'kanari_drift_events_total{{{dm}, outcome="rejected"}}', "values": "0+5x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": "KanariReconcileErrors", "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "kind": "ApiException"}, "exp_annotations": {
                            "summary": "Kanari reconcile errors",
                            "description": "The controller has failed reconciles (ApiException) for 15m; see its logs "
                                           "and the ModelDeployments' Events."}}]},
                    {"eval_time": "50m", "alertname": "KanariRolloutStuck", "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "namespace": "ml-prod", "name": "fraud"},
                         "exp_annotations": {
                            "summary": "ModelDeployment rollout stuck",
                            "description": "ModelDeployment ml-prod/fraud has been rolling out for more than 45m, "
                                           "past its progress deadline."}}]},
                    {"eval_time": "25m", "alertname": "KanariDriftEventsDropped", "exp_alerts": [
                        {"exp_labels": {"severity": "warning"}, "exp_annotations": {
                            "summary": "Kanari drift monitor is dropping events",
                            "description": "More than 1% of the payload-logger events reaching the drift monitor "
                                           "were not accepted for 10m; drift gauges are computed on partial data."}}]},
                ],
            },
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_drift_events_alert_stays_quiet_when_nothing_is_dropped(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool
    rule = one(rendered("default-values.yaml"), "PrometheusRule", "kanari-platform")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    dm = 'job="kanari-drift-monitor"'
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f'kanari_drift_events_total{{{dm}, outcome="accepted"}}', "values": "0+100x30"},
            {"series": f'kanari_drift_events_total{{{dm}, outcome="rejected"}}', "values": "0x30"},
            {"series": 'up{job="kanari-controller", namespace="kanari-system"}', "values": "1x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "25m", "alertname": "KanariDriftEventsDropped", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "KanariOperatorDown", "exp_alerts": []},
        ],
    }]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
