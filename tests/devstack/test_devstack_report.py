"""The demo's report: the dashboard's static export of the run plus the text summary a user reads after it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from devstack.report import DemoEvent, Report, VersionLineage, _spans, notes, render_text, write_report
from tests.dashboard.dashboard_testlib import ApiServer, Kube


def _report() -> Report:
    t0 = 1_700_000_000.0
    return Report(
        title="Kanari demo: demo/fraud-scorer (test)",
        started=t0,
        finished=t0 + 60,
        events=[
            DemoEvent(t0 + 40, "promoted", "Promoted: promoted fraud-scorer/2 (was fraud-scorer/1)"),
            DemoEvent(t0 + 45, "rolled-back", "RolledBack: AnalysisFailed: metric success-rate breached"),
            DemoEvent(t0 + 50, "alert", "KanariFeatureDriftCritical firing"),
            DemoEvent(t0 + 51, "info", "not for the summary"),
        ],
        lineage=[VersionLineage(version="v2 = fraud-scorer/2", model_package_arn="arn:aws:sagemaker:x",
                                approval="Approved", dataset="s3://b/d.csv @ v1", pipeline_run="42",
                                training_job="arn:job", revision="fraud-predictor-00002", outcome="promoted")],
        totals={"requests sent": 1500, "requests lost (no model version answered)": 0,
                "answered, by version and status": {"fraud-scorer/1 HTTP 200": 700, "fraud-scorer/2 HTTP 500": 12},
                "payload-logger events to the drift monitor (sent / failed / dropped)": {"sent": 1488},
                "failures": []},
        stand_ins=["Kubernetes API: kmock"],
        alerts=[("KanariFeatureDriftCritical", t0 + 50, t0 + 58)],
    )


def test_the_summary_lists_decisions_with_their_time_and_every_versions_lineage() -> None:
    text = render_text(_report())
    assert "T+00:40  promoted    Promoted: promoted fraud-scorer/2 (was fraud-scorer/1)" in text
    assert "T+00:45  rolled-back RolledBack" in text
    assert "not for the summary" not in text
    assert "v2 = fraud-scorer/2: promoted" in text
    for line in ("data           s3://b/d.csv @ v1", "pipeline run   42", "training job   arn:job",
                 "model package  arn:aws:sagemaker:x", "deployment     fraud-predictor-00002"):
        assert line in text
    assert "requests lost (no model version answered): 0" in text


def test_no_raw_python_structures_in_text() -> None:
    """Old report: 'answered, by version and status: {'fraud-scorer/1 HTTP 200': 700, ...}' in the summary
    and the page. Mappings and lists are written as lines."""
    text = render_text(_report())
    assert not re.search(r"[{}\[\]]", text), text
    assert "    fraud-scorer/2 HTTP 500: 12" in text and "  failures: none" in text
    for lines in notes(_report()).values():
        assert all(not re.search(r"[{}\[\]]", line) for line in lines), lines


def test_alert_spans_join_consecutive_samples() -> None:
    assert _spans([1.0, 2.0, 3.0, 10.0, 11.0], 1.0) == [(1.0, 3.0), (10.0, 11.0)]


def test_the_report_is_the_dashboards_export(tmp_path: Path) -> None:
    with ApiServer(tmp_path) as server:
        kube = Kube(server)
        kube.create_md("demo", "fraud-scorer", {"model": {"storageUri": "s3://m/v1", "format": "sklearn"},
                                                "serving": {"accelerator": "cpu"}})
        kube.patch("demo", "fraud-scorer", {"status": {"phase": "Succeeded", "stableModel": {"revision": "r1",
                                                                                             "version": "fraud-scorer/2"}}},
                   status=True)
        paths = write_report(_report(), tmp_path / "out", kubeconfig=server.admin_kubeconfig)
    index = paths["dashboard"].read_text()
    doc = json.loads(re.search(r'<script id="view-data" type="application/json">(.*?)</script>', index, re.S).group(1))
    assert [r["name"] for r in doc["rows"]] == ["fraud-scorer"] and doc["rows"][0]["stable"] == "fraud-scorer/2"
    assert doc["notes"]["Decisions and events"][1] == "T+00:45  rolled-back RolledBack: AnalysisFailed: metric success-rate breached"
    assert "{'" not in index
    base = tmp_path / "out" / "dashboard"
    for page in ("index.html", "drift.html", "lineage.html"):
        html = (base / "md" / "demo" / "fraud-scorer" / page).read_text()
        assert 'src="../../../static/app.js"' in html and 'data-mode="export"' in html
    assert (base / "static" / "vendor" / "uPlot.LICENSE").read_text().startswith("The MIT License")
    assert (tmp_path / "out" / "summary.txt").read_text() == render_text(_report())
    assert json.loads(paths["json"].read_text())["alerts"][0]["alert"] == "KanariFeatureDriftCritical"
