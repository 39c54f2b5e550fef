"""The chart as Helm users expect it, through the real helm binary: scenarios that mean what they say,
per-component knobs, ServiceMonitor options, JSON logs, a Grafana dashboard whose queries promtool accepts,
install notes that warn, Artifact Hub metadata, and a values README generated from values.yaml."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from delivery_schemas import CHART, ROOT, helm, render_chart

pytestmark = pytest.mark.timeout(120)
NAMESPACE = "kanari-system"
COMPONENTS = {"controller": "controller", "driftMonitor": "drift-monitor", "alertReceiver": "alert-receiver"}


@functools.cache
def rendered(scenario: str, *sets: str) -> tuple[dict[str, Any], ...]:
    args = ["-f", str(CHART / "ci" / scenario)]
    for s in sets:
        args += ["--set", s]
    return tuple(render_chart(*args, namespace=NAMESPACE))


def one(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def test_the_no_prometheus_operator_scenario_renders_nothing_of_the_prometheus_operator():
    """Regression: monitoring-disabled-values.yaml (skaffold's kind profile) still rendered a PodMonitor, whose CRD
    does not exist on such a cluster, so the install failed."""
    objs = rendered("monitoring-disabled-values.yaml")
    operator_kinds = [f"{o['kind']} {o['metadata']['name']}" for o in objs
                      if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert operator_kinds == []
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    kind = next(p for p in skaffold["profiles"] if p["name"] == "kind")
    assert "charts/kanari/ci/monitoring-disabled-values.yaml" in json.dumps(kind)


def _deployment(objs: tuple[dict[str, Any], ...], component: str) -> dict[str, Any]:
    # A sharded drift monitor (replicas > 1) is a StatefulSet; every other component is a Deployment.
    name = f"kanari-{component}"
    sharded = any(o["kind"] == "StatefulSet" and o["metadata"]["name"] == name for o in objs)
    return one(objs, "StatefulSet" if sharded else "Deployment", name)


def test_per_component_knobs_reach_every_deployment():
    objs = rendered("customised-values.yaml")
    values = yaml.safe_load((CHART / "ci" / "customised-values.yaml").read_text())
    for key, component in COMPONENTS.items():
        v = values[key]
        dep = _deployment(objs, component)
        pod = dep["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert dep["spec"]["revisionHistoryLimit"] == v["revisionHistoryLimit"]
        assert container["args"] == v["extraArgs"]
        assert pod["metadata"]["labels"]["team"] == "ml-platform"
        assert "team" not in dep["spec"]["selector"]["matchLabels"], "podLabels must never change the selector"
        names = {vol["name"] for vol in pod["spec"]["volumes"]}
        assert {vol["name"] for vol in v["extraVolumes"]} <= names and "tmp" in names
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {m["mountPath"] for m in v["extraVolumeMounts"]} <= mounts and "/tmp" in mounts
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["KANARI_LOG_FORMAT"] == "text"
        spread = pod["spec"].get("topologySpreadConstraints", [])
        for given, out in zip(v.get("topologySpreadConstraints", []), spread, strict=True):
            want = given.get("labelSelector") or {"matchLabels": dep["spec"]["selector"]["matchLabels"]}
            assert out["labelSelector"] == want and out["topologyKey"] == given["topologyKey"]
    ctl = _deployment(objs, "controller")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "KANARI_PROMETHEUS_BEARER_TOKEN_FILE", "value": "/var/run/secrets/prometheus/token"} in ctl["env"]


def test_extra_args_are_what_the_processes_accept():
    objs = rendered("customised-values.yaml")
    from kanari.cli.main import build_parser

    parser = build_parser()
    for component in ("drift-monitor", "alert-receiver"):
        c = _deployment(objs, component)["spec"]["template"]["spec"]["containers"][0]
        args = parser.parse_args([*c["command"][1:], *c["args"]])
        assert callable(args.func)
    c = _deployment(objs, "controller")["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "kanari.controller"]
    proc = subprocess.run([sys.executable, "-m", "kanari.controller", *c["args"], "--help"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_default_logs_are_json_from_every_process(tmp_path: Path):
    objs = rendered("default-values.yaml")
    for component in COMPONENTS.values():
        env = {e["name"]: e.get("value") for e in _deployment(objs, component)["spec"]["template"]["spec"]
               ["containers"][0]["env"]}
        assert env["KANARI_LOG_FORMAT"] == "json"
    # The services' logging, as configured by that variable: one JSON object per line.
    code = ("import logging; from kanari import logs; logs.configure(); "
            "logging.getLogger('kanari.monitor.server').warning('window %s dropped', 'ml/fraud')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"KANARI_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin", **_pythonpath()})
    line = json.loads(proc.stderr.strip())
    assert line["message"] == "window ml/fraud dropped" and line["level"] == "WARNING"
    assert line["logger"] == "kanari.monitor.server"


def _pythonpath() -> dict[str, str]:
    import os

    return {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def test_service_monitor_options():
    objs = rendered("customised-values.yaml")
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    assert len(monitors) == 3
    for sm in monitors:
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        endpoint = sm["spec"]["endpoints"][0]
        assert endpoint["scheme"] == "https" and endpoint["scrapeTimeout"] == "10s"
        assert endpoint["tlsConfig"]["serverName"] == "kanari.kanari-system.svc"
        assert endpoint["relabelings"][0]["targetLabel"] == "node"
        # The chart's own relabelings (a Kanari series' namespace) first, then the user's.
        assert endpoint["metricRelabelings"][-1] == {"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}
        assert endpoint["metricRelabelings"][0]["targetLabel"] == "namespace"
    default = [o for o in rendered("default-values.yaml") if o["kind"] == "ServiceMonitor"][0]["spec"]["endpoints"][0]
    assert "tlsConfig" not in default and "scrapeTimeout" not in default and default["scheme"] == "http"


def _metrics_in_code() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "operators" / "kanari").rglob("*.py"):
        names |= set(re.findall(r'"(kanari_[a-z_]+)"', path.read_text()))
    return names


def test_grafana_dashboard_is_a_sidecar_configmap_whose_queries_prometheus_accepts(tmp_path: Path):
    objs = rendered("customised-values.yaml")
    cm = one(objs, "ConfigMap", "kanari-grafana-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Kanari"
    dashboard = json.loads(cm["data"]["kanari.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    known = _metrics_in_code()
    for expr in exprs:
        for metric in re.findall(r"\b(kanari_[a-z_]+?)(?:_total|_bucket)?\b(?=[{\[)\s])", expr):
            assert metric in known, f"{metric} in the dashboard is not a metric Kanari exports"
    # Every query, with Grafana's variables filled in, through the real promtool.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"kanari:dashboard:{i}", "expr": e.replace("$namespace", ".*").replace("$modeldeployment", ".*")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/bootstrap.sh"
    proc = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    off = rendered("default-values.yaml", "monitoring.grafanaDashboard.enabled=false")
    assert not [o for o in off if o["metadata"]["name"] == "kanari-grafana-dashboard"]


def _notes(*sets: str) -> str:
    args = ["install", "kanari", str(CHART), "-n", NAMESPACE, "--dry-run=client"]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_install_notes_warn_when_no_region_is_set():
    assert "WARNING: aws.region is empty" in _notes()
    assert "aws.region" not in _notes("aws.region=eu-west-1")


def test_chart_metadata_for_artifact_hub():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["sources"] and chart["maintainers"][0]["name"]
    icon = chart["icon"]
    assert icon.endswith("/main/docs/kanari.svg") and (ROOT / "docs" / "kanari.svg").read_text().startswith("<svg")
    images = yaml.safe_load(chart["annotations"]["artifacthub.io/images"])
    assert images == [{"name": "kanari", "image": f"{values['image']['repository']}:{chart['appVersion']}",
                       "platforms": ["linux/amd64", "linux/arm64"]}]


def test_values_readme_is_generated_from_values_yaml():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "chart_readme.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    readme = (CHART / "README.md").read_text()
    for key in ("controller.extraVolumeMounts", "monitoring.serviceMonitor.tlsConfig", "logFormat",
                "monitoring.grafanaDashboard.labels", "alertReceiver.topologySpreadConstraints"):
        assert f"| `{key}` |" in readme


def test_the_readme_generator_notices_a_change(tmp_path: Path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import chart_readme

    values = tmp_path / "values.yaml"
    values.write_text("a:\n  # -- First.\n  # continued\n  b: 1\n# -- Second | piped.\nc: [x]\nd: 3\n")
    assert chart_readme.documented(values.read_text()) == [("a.b", "First. continued"), ("c", "Second | piped.")]
    out = chart_readme.render(f"x\n{chart_readme.BEGIN}\nold\n{chart_readme.END}\ny\n", values)
    assert "| `a.b` | int | `1` | First. continued |" in out and "&#124;" in out and "`d`" not in out
    assert out.startswith("x\n") and out.endswith(f"{chart_readme.END}\ny\n")


BAD_VALUES = [
    ("controller:\n  extraVolumeMounts: [{name: x}]\n", "at '/controller/extraVolumeMounts/0'"),
    ("driftMonitor:\n  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: Maybe}]\n",
     "at '/driftMonitor/topologySpreadConstraints/0/whenUnsatisfiable'"),
    ("alertReceiver:\n  revisionHistoryLimit: -1\n", "at '/alertReceiver/revisionHistoryLimit'"),
    ("logFormat: xml\n", "at '/logFormat'"),
    ("monitoring:\n  serviceMonitor:\n    relabelings: [{action: explode}]\n",
     "at '/monitoring/serviceMonitor/relabelings/0/action'"),
    ("controller:\n  extraArgs: [1]\n", "at '/controller/extraArgs/0'"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_new_values_are_checked_by_the_schema(tmp_path: Path, values: str, message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    proc = helm("template", "kanari", str(CHART), "-f", str(path))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
