"""The demo's report: the picture, the HTML page and the text summary a user reads after a run."""

from __future__ import annotations

import json
from pathlib import Path

from devstack.report import (
    DemoEvent,
    Report,
    Series,
    Timeline,
    VersionLineage,
    _spans,
    _with_gaps,
    render_text,
    write_report,
)


def _report() -> Report:
    t0 = 1_700_000_000.0
    ramp = [(t0 + t, 100.0 if t < 30 else 80.0 if t < 40 else 0.0) for t in range(60)]
    canary = [(t0 + t, 20.0 if t < 40 else 100.0) for t in range(30, 60)]
    return Report(
        title="Kanari demo: demo/fraud-scorer (test)",
        started=t0,
        finished=t0 + 60,
        timeline=Timeline(
            traffic=[Series("fraud-scorer/1", ramp), Series("fraud-scorer/2", canary)],
            success=[Series("fraud-scorer/2", [(t0 + t, 1.0) for t in range(30, 60)])],
            latency=[Series("fraud-scorer/2", [(t0 + t, 20.0) for t in range(30, 60)])],
            drift=[Series("features (default)", [(t0 + t, 0.1 if t < 45 else 2.0) for t in range(60)])],
            alerts=[("KanariFeatureDriftCritical", t0 + 50, t0 + 58)],
            drift_thresholds=(0.3, 0.6),
        ),
        events=[
            DemoEvent(t0 + 40, "promoted", "Promoted: promoted fraud-scorer/2 (was fraud-scorer/1)"),
            DemoEvent(t0 + 45, "rolled-back", "RolledBack: AnalysisFailed: metric success-rate breached"),
            DemoEvent(t0 + 50, "alert", "KanariFeatureDriftCritical firing"),
            DemoEvent(t0 + 51, "info", "not for the summary"),
        ],
        lineage=[VersionLineage(version="v2 = fraud-scorer/2", model_package_arn="arn:aws:sagemaker:x",
                                approval="Approved", dataset="s3://b/d.csv @ v1", pipeline_run="42",
                                training_job="arn:job", revision="fraud-predictor-00002", outcome="promoted")],
        totals={"requests sent": 1500, "requests lost (no model version answered)": 0},
        stand_ins=["Kubernetes API: kmock"],
    )


def test_the_report_has_the_picture_the_page_and_the_summary(tmp_path: Path) -> None:
    paths = write_report(_report(), tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page
    assert "RolledBack: AnalysisFailed: metric success-rate breached" in page
    assert "arn:aws:sagemaker:x" in page
    doc = json.loads(paths["json"].read_text())
    assert doc["seconds"] == 60.0 and doc["alerts"][0]["alert"] == "KanariFeatureDriftCritical"
    assert paths["text"].read_text() == render_text(_report())


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


def test_alert_spans_join_consecutive_samples_and_lines_break_over_gaps() -> None:
    assert _spans([1.0, 2.0, 3.0, 10.0, 11.0], 1.0) == [(1.0, 3.0), (10.0, 11.0)]
    xs, ys = _with_gaps([(100.0, 1.0), (101.0, 1.0), (110.0, 0.5)], 100.0)
    assert xs[:2] == [0.0, 1.0] and ys[2] != ys[2] and xs[-1] == 10.0  # a NaN between the two runs
