"""Kanari's series cannot be spoofed by another scrape target (kanari.scrape): every query Kanari writes over a
`kanari_*` series pins the job that produces it (drift and realised-quality alerts, the analysis templates, the
retro-verdict's reading, the dashboard), for any configured job name; the rules stay valid PrometheusRules; and
against a real Prometheus evaluating the controller's rules, a target exporting the drift monitor's series under the
same names and labels (even its `job` label) neither raises nor silences an alert, while the monitor's own series
still do."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kanari.api.v1alpha1 import BUILTIN_TEMPLATES, ModelDeployment, parse_model_deployment, parse_spec
from kanari.controller import drift_rules, quality_rules
from kanari.controller.config import OperatorConfig
from kanari.dashboard.prom import Prometheus
from kanari.rollout import quality
from kanari.rollout.prometheus import ConfigError, PrometheusConfig, label_value
from kanari.rollout.templates import builtin_parts
from kanari.scrape import DEFAULT_CONTROLLER_JOB, DEFAULT_MONITOR_JOB, ScrapeJobs
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from devstack.stack import ScrapeTarget, find_binary, free_port, start_prometheus
from tests.support.schemas import validate_custom

NS = "ml-prod"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/{}"
# Names that reshape PromQL if pasted unquoted, and unicode: the matcher must hold them as one label value.
hostile_jobs = st.one_of(
    st.sampled_from([DEFAULT_MONITOR_JOB, 'a"} or vector(1) or x{a="', "back\\slash", "brace}{", "ns/monitor"]),
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30).filter(str.strip),
)


def md(name: str = "fraud", method: str = "psi", retrain: bool = True, stable: float = 0.9,
       canary: float | None = 0.92, drift_for: str = "15m") -> ModelDeployment:
    def ref(version: str, recall: float) -> dict[str, Any]:
        return {"revision": f"rev-{version}", "version": version, "storageUri": f"s3://m/{version}/",
                "modelPackageArn": ARN.format(version), "registeredMetrics": {"recall": recall}}

    monitoring: dict[str, Any] = {"drift": {"method": method, "warn": 0.1, "critical": 0.25, "for": drift_for}}
    if retrain:
        monitoring["retrain"] = {"pipeline": "fraud-training", "cooldown": "12h", "maxPerDay": 3}
    status: dict[str, Any] = {"stableModel": ref("7", stable)}
    if canary is not None:
        status["canaryModel"] = ref("8", canary)
    return parse_model_deployment({
        "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"modelPackageArn": ARN.format("7"), "format": "sklearn"}, "serving": {"accelerator": "cpu"},
                 "monitoring": monitoring,
                 "rollout": {"strategy": "AllAtOnce", "rollbackWindow": {
                     "duration": "2h", "metric": "recall", "tolerance": 0.05, "alpha": 0.01, "minLabels": 50}}},
        "status": status,
    })


def _braces(expr: str, start: int) -> str:
    """The matcher list opening at expr[start] == "{", read as PromQL reads it (a quoted "}" does not close it)."""
    i, quoted = start + 1, False
    while i < len(expr):
        c = expr[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "}" and not quoted:
            return expr[start + 1:i]
        i += 1
    raise AssertionError(f"unclosed selector in {expr!r}")


def kanari_selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matcher list) of every `kanari_*` metric selector in `expr`; a bare kanari_* metric (no matcher
    list at all) is an AssertionError. Label names (kanari_dev_revision=, "kanari_part") are not metrics."""
    out = []
    # Strings first: a label value or label_replace's "kanari_part" is not a metric name.
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + "x" * (len(m.group()) - 2) + '"', expr)
    for m in re.finditer(r"(?<![\w\"])kanari_\w+", unquoted):
        rest = unquoted[m.end():].lstrip()
        if rest.startswith(("=", "!=")):
            continue  # a label matcher's name
        opened = unquoted.rfind("(", 0, m.start())
        if (opened >= 0 and ")" not in unquoted[opened:m.start()]
                and re.search(r"\b(by|without)\s*$", unquoted[:opened])):
            continue  # a label in a by (...) / without (...) grouping
        assert rest.startswith("{"), f"{m.group()} selected by name alone in {expr!r}"
        out.append((m.group(), _braces(expr, m.end() + (len(unquoted[m.end():]) - len(rest)))))
    return out


def assert_pinned(expr: str, job: str) -> int:
    selectors = kanari_selectors(expr)
    for metric, matchers in selectors:
        assert re.search(rf'(^|,)\s*job="{re.escape(label_value(job))}"\s*(,|$)', matchers), (metric, matchers)
    return len(selectors)


def rule_exprs(rule: dict[str, Any] | None) -> list[str]:
    assert rule is not None
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


@settings(max_examples=60, deadline=None)
@given(monitor=hostile_jobs, controller=hostile_jobs, method=st.sampled_from(["psi", "linf", "js", "wasserstein"]),
       retrain=st.booleans(), canary=st.one_of(st.none(), st.floats(0, 1)))
@example(monitor='a"} or vector(1) or x{a="', controller="brace}{", method="psi", retrain=True, canary=0.5)
def test_every_generated_query_over_kanari_series_pins_the_producing_job(
    monitor: str, controller: str, method: str, retrain: bool, canary: float | None,
) -> None:
    jobs = ScrapeJobs(monitor=monitor, controller=controller)
    model = md(method=method, retrain=retrain, canary=canary)
    counted = 0
    for rule in (drift_rules.build_prometheus_rule(model, jobs), quality_rules.build_prometheus_rule(model, jobs)):
        validate_custom(rule)  # type: ignore[arg-type]
        for expr in rule_exprs(rule):
            counted += assert_pinned(expr, monitor)
    for expr in quality.queries(NS, "fraud", "fraud/7", "recall", jobs):
        counted += assert_pinned(expr, monitor)
    # The analysis templates: {{monitorJob}}/{{controllerJob}}, filled from the configured jobs already quoted.
    spec = parse_spec({"model": {"storageUri": "s3://m/8/"}, "serving": {"neuronCores": 2},
                       "monitoring": {"drift": {"method": method}},
                       "rollout": {"steps": [{"setWeight": 10}, {"analysis": {}}], "analysis": {"metrics": [
                           {"name": t, "template": t, "thresholdRange": {"max": 1}} for t in BUILTIN_TEMPLATES]}}})
    assert spec.rollout.analysis is not None
    for metric in spec.rollout.analysis.metrics:
        for expr in builtin_parts(spec, metric).values():
            for name, matchers in kanari_selectors(expr):
                wanted = "{{controllerJob}}" if name == "kanari_cold_start_seconds" else "{{monitorJob}}"
                assert f'job="{wanted}"' in matchers, (metric.template, name, matchers)
                counted += 1
    assert counted >= 20  # the check looked at the queries, it did not pass vacuously


def test_the_dashboard_reads_drift_from_the_monitors_job_only() -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.params.get("query") or dict(httpx.QueryParams(request.content.decode()))["query"])
        kind = "matrix" if request.url.path.endswith("query_range") else "vector"
        return httpx.Response(200, json={"status": "success", "data": {"resultType": kind, "result": []}})

    import asyncio

    async def go() -> None:
        prom = Prometheus(PrometheusConfig(url="http://prometheus.invalid"), httpx.MockTransport(handler),
                          ScrapeJobs(monitor="dm"))
        try:
            await prom.readings()
            await prom.drift_series(NS, "fraud", "psi", 0, 600)
        finally:
            await prom.close()

    asyncio.run(go())
    drift = [q for q in sent if "kanari_" in q]
    assert len(drift) == 2 and all(assert_pinned(q, "dm") == 1 for q in drift), sent


def test_the_operator_learns_the_jobs_from_its_environment() -> None:
    assert OperatorConfig.from_env({}).scrape_jobs == ScrapeJobs(DEFAULT_MONITOR_JOB, DEFAULT_CONTROLLER_JOB)
    assert OperatorConfig.from_env({"KANARI_MONITOR_JOB": " kanari-prod-drift-monitor ",
                                    "KANARI_CONTROLLER_JOB": "ctl"}).scrape_jobs == ScrapeJobs(
        "kanari-prod-drift-monitor", "ctl")
    for name in ("KANARI_MONITOR_JOB", "KANARI_CONTROLLER_JOB"):
        for bad in ("", "  ", "a\nb", "x" * 254):
            with pytest.raises(ConfigError, match=name):
                OperatorConfig.from_env({name: bad})


def test_the_chart_passes_the_jobs_its_service_monitors_give(tmp_path: Path) -> None:
    """The env the chart sets is the Service name (the ServiceMonitor's job), or monitoring.scrapeJobs."""
    helm = find_binary("helm")
    chart = Path(__file__).resolve().parents[2] / "charts" / "kanari"

    def render(*sets: str) -> list[dict[str, Any]]:
        args = [helm, "template", "prod", str(chart), "-n", "kanari-system", "--set", "dashboard.enabled=true"]
        for s in sets:
            args += ["--set", s]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    def env_of(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
        dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment)
        return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    docs = render()
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    monitors = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceMonitor"}
    env = env_of(docs, "prod-kanari-controller")
    assert env["KANARI_MONITOR_JOB"] == "prod-kanari-drift-monitor" and env["KANARI_CONTROLLER_JOB"] == "prod-kanari-controller"
    assert {env["KANARI_MONITOR_JOB"], env["KANARI_CONTROLLER_JOB"]} <= services & monitors
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        assert "jobLabel" not in sm["spec"], "a jobLabel would rename the job the operator pins"
    assert env_of(docs, "prod-kanari-dashboard")["KANARI_MONITOR_JOB"] == "prod-kanari-drift-monitor"
    rules = next(d for d in docs if d["kind"] == "PrometheusRule")
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    assert all(assert_pinned(e, "prod-kanari-drift-monitor") for e in exprs if "kanari_drift_events" in e)
    # Grafana's panels too, each metric from its producer's job.
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("grafana-dashboard"))
    panels = [t["expr"] for p in json.loads(cm["data"]["kanari.json"])["panels"] for t in p.get("targets", [])]
    producers = {"kanari_feature_drift": "drift-monitor", "kanari_prediction_drift": "drift-monitor",
                 "kanari_canary_divergence": "drift-monitor", "kanari_drift_events_total": "drift-monitor",
                 "kanari_drift_window_samples": "drift-monitor", "kanari_schema_violations_total": "drift-monitor",
                 "kanari_retrain_decisions_total": "alert-receiver", "kanari_retrain_deliveries_total": "alert-receiver"}
    seen = 0
    for expr in panels:
        for metric, matchers in kanari_selectors(expr):
            assert f'job="prod-kanari-{producers.get(metric, "controller")}"' in matchers, (metric, matchers)
            seen += 1
    assert seen >= 18 and "__KANARI_" not in cm["data"]["kanari.json"]
    other = render("monitoring.scrapeJobs.driftMonitor=kubernetes-pods", "monitoring.scrapeJobs.controller=ctl")
    env = env_of(other, "prod-kanari-controller")
    assert env["KANARI_MONITOR_JOB"] == "kubernetes-pods" and env["KANARI_CONTROLLER_JOB"] == "ctl"
    exprs = [r["expr"] for d in other if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"] for r in g["rules"]]
    assert any('job="ctl"' in e for e in exprs) and any('job="kubernetes-pods"' in e for e in exprs)


# ---- against a real Prometheus evaluating the controller's rules ----

GENUINE = {"drifted": 0.5, "quiet": 0.01}  # the monitor's own feature drift per model
SPOOF_JOB = "tenant-model"


def exporter(job: str | None, drift: dict[str, float], realised: dict[str, tuple[float, float]]) -> CollectorRegistry:
    """A /metrics with the drift monitor's series; `job` set: the exporter claims that job label itself."""
    registry = CollectorRegistry()
    extra = ["job"] if job else []
    feature = Gauge("kanari_feature_drift", "d", [*extra, "namespace", "model", "endpoint", "revision", "feature",
                                                  "method"], registry=registry)
    violations = Gauge("kanari_schema_violations_total", "v", [*extra, "namespace", "model", "kind"], registry=registry)
    q = Gauge("kanari_realised_quality", "q", [*extra, "namespace", "model", "revision", "metric"], registry=registry)
    n = Gauge("kanari_realised_quality_denominator", "n", [*extra, "namespace", "model", "revision", "metric"],
              registry=registry)
    pre = [job] if job else []
    for model, value in drift.items():
        feature.labels(*pre, NS, model, "default", "7", "amount", "psi").set(value)
        violations.labels(*pre, NS, model, "unseen_category").set(0)
    for model, (value, rows) in realised.items():
        q.labels(*pre, NS, model, "7", "recall").set(value)
        n.labels(*pre, NS, model, "7", "recall").set(rows)
    return registry


@pytest.fixture(scope="module")
def alerting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("spoof")
    jobs = ScrapeJobs()
    models = [md("drifted", canary=None), md("quiet", canary=None)]
    rule_file = work / "rules.yml"
    groups = [g for m in models for g in drift_rules.rule_groups(m, jobs)]
    for m in models:
        groups += quality_rules.build_prometheus_rule(m, jobs)["spec"]["groups"]  # type: ignore[index]
    for g in groups:
        for r in g["rules"]:
            r["for"] = "0s"  # pending vs firing is not the point here: which series the rules read is
    rule_file.write_text(yaml.safe_dump({"groups": groups}))
    # The monitor: "drifted" drifts, "quiet" does not; "drifted"'s realised recall 0.6 over 200 labels is far
    # below 0.9 - 0.05, "quiet"'s 0.9 is not. The spoofer says the opposite of each, with the monitor's job label.
    genuine = exporter(None, GENUINE, {"drifted": (0.6, 200), "quiet": (0.9, 200)})
    spoof = exporter(DEFAULT_MONITOR_JOB, {"drifted": 0.0, "quiet": 0.9}, {"drifted": (0.99, 1e6), "quiet": (0.1, 1e6)})
    ports = free_port(), free_port()
    servers = [start_http_server(port, addr="127.0.0.1", registry=r)[0] for port, r in zip(ports, (genuine, spoof),
                                                                                           strict=True)]
    prom = start_prometheus(work / "prom", [ScrapeTarget(jobs.monitor, [f"127.0.0.1:{ports[0]}"]),
                                            ScrapeTarget(SPOOF_JOB, [f"127.0.0.1:{ports[1]}"])], [rule_file])
    try:
        deadline = time.monotonic() + 30
        while len(query(prom.url, f'kanari_feature_drift{{exported_job="{DEFAULT_MONITOR_JOB}"}}')) < 2 or not query(
                prom.url, "ALERTS"):
            assert time.monotonic() < deadline, "Prometheus never scraped the spoofer or evaluated the rules"
            time.sleep(0.2)
        time.sleep(2.5)  # a couple more evaluations with both targets' series in
        yield prom.url
    finally:
        prom.stop()
        for s in servers:
            s.shutdown()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()["data"]["result"]


def alerts(url: str) -> set[tuple[str, str]]:
    return {(a["metric"]["alertname"], a["metric"]["model"]) for a in query(url, "ALERTS")}


@pytest.mark.prometheus
@pytest.mark.timeout(90)
def test_a_spoofing_target_neither_raises_nor_silences_an_alert(alerting: str) -> None:
    url = alerting
    # The spoofer's series are in Prometheus under the monitor's names and labels (its own job label renamed):
    # only the job tells them apart.
    spoofed = query(url, f'kanari_feature_drift{{job="{SPOOF_JOB}", model="quiet"}}')
    assert spoofed and spoofed[0]["metric"]["exported_job"] == DEFAULT_MONITOR_JOB
    assert float(spoofed[0]["value"][1]) == 0.9
    got = alerts(url)
    # The monitor's own drift and realised drop still alert (and route to retraining)...
    assert {("KanariFeatureDriftWarning", "drifted"), ("KanariFeatureDriftCritical", "drifted"),
            ("KanariRealisedQualityDrop", "drifted")} <= got, got
    # ...the spoofer's 0.9 drift for "quiet" starts no retraining, and its 0.99 recall hides no drop.
    assert not {a for a in got if a[1] == "quiet"}, got
    retrain = query(url, 'ALERTS{kanari_retrain="true"}')
    assert {a["metric"]["model"] for a in retrain} == {"drifted"}


@pytest.mark.prometheus
@pytest.mark.timeout(90)
def test_the_same_rules_without_the_job_would_have_been_spoofed(alerting: str) -> None:
    """The teeth of the test above: the drift rule's expression with the job matcher taken out, evaluated on the
    same data, sees the spoofer's drift for "quiet" and its recall for "drifted"."""
    jobs = ScrapeJobs()
    rule = drift_rules.build_prometheus_rule(md("quiet", canary=None), jobs)
    feature = next(e for e in rule_exprs(rule) if "kanari_feature_drift" in e and "> 0.25" in e)
    assert query(alerting, feature) == []
    assert query(alerting, feature.replace(f"{jobs.monitor_matcher},", ""))  # the old selector: fires
    drop = rule_exprs(quality_rules.build_prometheus_rule(md("drifted", canary=None), jobs))[0]
    assert query(alerting, drop)
    assert query(alerting, drop.replace(f"{jobs.monitor_matcher}, ", "")) == []  # the old selector: silenced


def test_hostile_job_names_stay_one_label_value_for_promtool(tmp_path: Path) -> None:
    """A job name with quotes, braces and backslashes: the rules still parse under the real promtool."""
    jobs = ScrapeJobs(monitor='a"} or vector(1) or x{a="\\', controller="c")
    groups = [*drift_rules.rule_groups(md(), jobs),
              *quality_rules.build_prometheus_rule(md(), jobs)["spec"]["groups"]]  # type: ignore[index]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    out = subprocess.run([find_binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_monitor_job_nothing_scrapes_is_alerted_not_silent(tmp_path: Path) -> None:
    """A wrong monitoring.scrapeJobs.driftMonitor makes Kanari's drift alerts silent; the platform rule says so
    (under the real promtool): KanariDriftMonitorUnscraped fires when no target of the configured job is up, even
    while the monitor is scraped under another job name, and stays quiet while the configured job is up."""
    helm = find_binary("helm")
    chart = Path(__file__).resolve().parents[2] / "charts" / "kanari"
    out = subprocess.run([helm, "template", "kanari", str(chart), "-n", "kanari-system", "--set",
                          "monitoring.scrapeJobs.driftMonitor=kanari-drift-monitor-typo",
                          "--show-only", "templates/prometheusrule.yaml"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rule = yaml.safe_load(out.stdout)
    validate_custom(rule)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m",
         "input_series": [{"series": f'up{{job="{DEFAULT_MONITOR_JOB}", instance="a"}}', "values": "1x20"}],
         "alert_rule_test": [
             {"eval_time": "4m", "alertname": "KanariDriftMonitorUnscraped", "exp_alerts": []},
             {"eval_time": "10m", "alertname": "KanariDriftMonitorUnscraped", "exp_alerts": [
                 {"exp_labels": {"severity": "critical"}, "exp_annotations": {
                     "summary": "Kanari drift monitor is not scraped",
                     "description": "No target of job kanari-drift-monitor-typo has been up for 5m: drift alerts "
                                    "cannot fire and analyses over the drift monitor's series are inconclusive. "
                                    "Check the drift monitor's pods, and that monitoring.scrapeJobs.driftMonitor "
                                    "names the job Prometheus scrapes it under."}}]}]},
        {"interval": "1m",
         "input_series": [{"series": 'up{job="kanari-drift-monitor-typo", instance="a"}', "values": "1x20"},
                          {"series": 'up{job="kanari-drift-monitor-typo", instance="b"}', "values": "0x20"}],
         "alert_rule_test": [{"eval_time": "15m", "alertname": "KanariDriftMonitorUnscraped", "exp_alerts": []}]},
    ]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run([find_binary("promtool"), "test", "rules", str(tmp_path / "tests.yaml")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Jobs a scrape configuration may really use, with YAML's and PromQL's awkward characters: the chart must carry each,
# unchanged, into every platform rule (a plain YAML scalar ended at " #", or failed at ": ") and into the operator.
CHART_JOBS = ["kanari: drift", "drift #2", "kubernetes pods", "ns/monitor", "{brace}, x", "$namespace", "é日本"]
# What the operator would change or refuse (it strips, and wants printable text): the chart refuses it by name.
CHART_REFUSED = [" lead", "trail ", "a\tb", "a\u00a0b", 'q"uote', "back\\slash"]


def test_the_chart_carries_any_allowed_job_into_valid_rules_and_the_operator(tmp_path: Path) -> None:
    """Regression: a monitoring.scrapeJobs value with ": " broke the PrometheusRule's YAML and one with " #" cut its
    expression short (`absent(up{job="drift`), silently; one with surrounding spaces was pinned as is by the
    rules and stripped by the operator, so the two read different jobs."""
    helm = find_binary("helm")
    chart = Path(__file__).resolve().parents[2] / "charts" / "kanari"

    def render(job: str) -> subprocess.CompletedProcess[str]:
        values = tmp_path / "values.yaml"  # a file, not --set: helm's --set syntax reads "{...}" and "," itself
        values.write_text(yaml.safe_dump({"monitoring": {"scrapeJobs": {"driftMonitor": job, "controller": job}}}))
        return subprocess.run([helm, "template", "kanari", str(chart), "-n", "kanari-system", "-f", str(values)],
                              capture_output=True, text=True, timeout=120)

    for job in CHART_JOBS:
        out = render(job)
        assert out.returncode == 0, (job, out.stderr)
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        rule = next(d for d in docs if d["kind"] == "PrometheusRule")
        validate_custom(rule)
        exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
        assert len(exprs) >= 5
        for alert, expr in exprs.items():
            assert f'job="{job}"' in expr and expr.count("(") == expr.count(")"), (job, alert, expr)
        path = tmp_path / "rules.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        check = subprocess.run([find_binary("promtool"), "check", "rules", str(path)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, (job, check.stdout + check.stderr)
        env = {e["name"]: e.get("value") for d in docs if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "kanari-controller" for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert ScrapeJobs.from_env(env) == ScrapeJobs(job, job)  # the operator pins the very job the rules pin
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("grafana-dashboard"))
        json.loads(cm["data"]["kanari.json"])
    for job in CHART_REFUSED:
        out = render(job)
        assert out.returncode != 0 and "/monitoring/scrapeJobs/driftMonitor" in out.stderr, (job, out.stderr)


def test_a_null_scrape_jobs_map_renders_the_default_jobs() -> None:
    """`--set monitoring.scrapeJobs=null` (helm deletes the key) failed inside a helper with a template error that
    named no value; it now means what an empty map means: every job is the component's Service name."""
    helm = find_binary("helm")
    chart = Path(__file__).resolve().parents[2] / "charts" / "kanari"
    out = subprocess.run([helm, "template", "kanari", str(chart), "-n", "kanari-system", "--set",
                          "monitoring.scrapeJobs=null"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rule = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert any('job="kanari-controller"' in e for e in exprs) and any('job="kanari-drift-monitor"' in e for e in exprs)
