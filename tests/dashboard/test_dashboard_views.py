"""The dashboard's view documents: the status as the views read it (hostile input) and what the old demo report
got wrong (each a regression test: thresholds and measurements on the metric panels with the rollback reason,
latency in seconds, a drift axis that keeps warn/critical readable, v1's traffic from the moment it serves, an
idle revision's drift not counted as current, no raw Python structures in text)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.dashboard import views
from kanari.dashboard.prom import serving_reading
from kanari.dashboard.status_view import read_status

SPEC = {
    "model": {"storageUri": "s3://m/v2", "format": "sklearn"},
    "serving": {"accelerator": "cpu"},
    "rollout": {"strategy": "Canary", "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}}],
                "analysis": {"interval": "5s", "metrics": [
                    {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.95}},
                    {"name": "p99-latency", "template": "request-latency-p99", "thresholdRange": {"max": 0.25}}]}},
    "monitoring": {"drift": {"method": "psi", "warn": 0.3, "critical": 0.6}},
}


def md(status: Any, spec: Any = None) -> dict[str, Any]:
    return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "fraud", "namespace": "ml", "uid": "u1", "creationTimestamp": "2026-11-30T04:00:00Z"},
            "spec": SPEC if spec is None else spec, "status": status}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
status_keys = st.sampled_from(["phase", "canaryWeight", "currentStep", "stableModel", "canaryModel", "rollout",
                               "analysisHistory", "lastAnalysis", "analysisRuns", "pauseConditions", "conditions",
                               "lineage", "retraining", "abortedRevision", "observedGeneration"])
hostile_status = st.dictionaries(status_keys, json_values, max_size=10) | json_values


@settings(max_examples=300, deadline=None)
@given(hostile_status)
def test_any_status_renders_every_view_without_raising(status: Any) -> None:
    obj = md(status)
    doc = views.detail(obj, [], 1_800_000_000.0)
    json.dumps(doc, allow_nan=False)  # what the browser gets is valid JSON (no NaN/Infinity)
    json.dumps(views.drift_view(obj, [], [], 1_800_000_000.0), allow_nan=False)
    row = views.summary_row(obj, None, 1_800_000_000.0)
    assert 0 <= row["canaryWeight"] <= 100 and row["stableWeight"] + row["canaryWeight"] == 100


def test_pause_conditions_from_either_shape() -> None:
    """A status written before the rollout rework (one `rollout.pausedReason`) still reads as paused."""
    old = read_status({"phase": "Paused", "message": "step 1: paused", "rollout": {"pausedReason": "PauseStep"}})
    new = read_status({"phase": "Paused", "pauseConditions": [
        {"reason": "PauseStep", "startTime": "2026-11-30T04:00:00Z"},
        {"reason": "CapacityPending", "startTime": "2026-11-30T04:01:00Z", "message": "3 of 4 Neuron cores"}]})
    assert [p.reason for p in old.pauseConditions] == ["PauseStep"]
    assert [p.reason for p in new.pauseConditions] == ["PauseStep", "CapacityPending"]
    assert views.available_actions(read_status({"phase": "Paused", "canaryModel": {"revision": "r"},
                                                "pauseConditions": [{"reason": "PauseStep", "startTime": "2026-11-30T04:00:00Z"}]})) == [
        "promote", "promote-full", "resume", "abort"]


def _run(revision: str, step: int, phase: str, metrics: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"name": f"step-{step}", "revision": revision, "step": step, "phase": phase,
            "startedAt": metrics and next(iter(metrics.values()))[0]["finishedAt"],
            "metrics": [{"name": name, "count": len(ms), "measurements": ms} for name, ms in metrics.items()]}


ROLLED_BACK = {
    "phase": "RolledBack", "stableModel": {"revision": "r1", "version": "v1"}, "canaryWeight": 0,
    "abortedRevision": "r2",
    "analysisRuns": [_run("r2", 1, "Failed", {
        "success-rate": [
            {"phase": "Successful", "value": 0.99, "threshold": ">= 0.95", "sampleCount": 90,
             "finishedAt": "2026-11-30T04:10:00Z"},
            {"phase": "Failed", "value": 0.62, "threshold": ">= 0.95", "sampleCount": 88,
             "message": "success-rate: value 0.62 breaches >= 0.95", "finishedAt": "2026-11-30T04:10:05Z"}],
        "p99-latency": [
            {"phase": "Successful", "value": 0.12, "threshold": "<= 0.25", "sampleCount": 90,
             "finishedAt": "2026-11-30T04:10:00Z"},
            {"phase": "Failed", "value": 0.31, "threshold": "<= 0.25", "sampleCount": 88,
             "message": "p99-latency: value 0.31 breaches <= 0.25", "finishedAt": "2026-11-30T04:10:05Z"}],
    })],
}


def test_metric_panels_carry_thresholds_measurements_and_the_rollback_reason() -> None:
    """Old report: success and latency lines without thresholds or measurement points; the reason only in text."""
    doc = views.detail(md(ROLLED_BACK), [], 1_796_011_900.0)
    charts = {c["metric"]: c for c in doc["charts"]}
    sr = charts["success-rate"]
    assert (sr["min"], sr["max"]) == (0.95, None)
    assert [(p["value"], p["verdict"]) for p in sr["points"]] == [(0.99, "Successful"), (0.62, "Failed")]
    assert sr["failure"]["message"] == "success-rate: value 0.62 breaches >= 0.95"
    assert "success-rate = 0.62 breached >= 0.95" in doc["rollbackReason"]
    card = doc["scorecards"][0]
    assert card["phase"] == "Failed"
    row = next(m for m in card["metrics"] if m["metric"] == "success-rate")
    assert (row["canary"], row["threshold"], row["verdict"], row["samples"]) == ("0.62", ">= 0.95", "Failed", "88")
    assert "revision_app_request_count" in row["query"]  # the PromQL behind the template


def test_latency_is_in_seconds_as_the_spec_states_it() -> None:
    """Old report: 'p99 latency (ms)' on a panel of Prometheus seconds, against a spec threshold in seconds."""
    doc = views.detail(md(ROLLED_BACK), [], 1_796_011_900.0)
    lat = next(c for c in doc["charts"] if c["metric"] == "p99-latency")
    assert lat["unit"] == "s" and lat["max"] == 0.25
    assert [p["value"] for p in lat["points"]] == [0.12, 0.31]  # as measured, same unit as the threshold


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50),
       st.floats(0.01, 1.0), st.floats(1.1, 5.0))
def test_drift_axis_keeps_warn_and_critical_readable(values: list[float], warn: float, factor: float) -> None:
    """Old report: a linear axis scaled to the largest value; a spike to 50 put warn 0.3 and critical 0.6 within
    1% of the axis, both in the bottom pixel rows. Now warn stays at least 5% up and the two 2.5% apart (5 px on
    the page's 220 px charts), and no value is off the axis."""
    critical = warn * factor
    axis = views.drift_axis(values, warn, critical)
    fw, fc = views.axis_fraction(axis, warn), views.axis_fraction(axis, critical)
    assert fw >= 0.05 and fc - fw >= 0.025 and fc <= 1.0
    assert all(views.axis_fraction(axis, v) <= 1.0 + 1e-9 for v in values)  # and nothing is cut off


def test_first_version_serves_all_traffic_from_its_deployed_event() -> None:
    """Old report: v1's traffic line started when the router's metric first appeared, not when v1 served."""
    obj = md({"phase": "Progressing", "canaryWeight": 20, "stableModel": {"revision": "r1", "version": "v1"},
              "canaryModel": {"revision": "r2", "version": "v2"}})
    events = [{"involvedObject": {"kind": "ModelDeployment", "name": "fraud", "uid": "u1"}, "reason": r, "message": m,
               "lastTimestamp": t, "type": "Normal", "metadata": {"namespace": "ml"}}
              for r, m, t in (("Deploying", "deploying v1", "2026-11-30T04:00:01Z"),
                              ("Deployed", "v1 serves all traffic", "2026-11-30T04:00:05Z"),
                              ("WeightChanged", "canary weight 0 -> 20", "2026-11-30T04:02:00Z"))]
    tr = views.detail(obj, events, views.epoch("2026-11-30T04:03:00Z") or 0)["traffic"]
    assert tr["t"][0] == views.epoch("2026-11-30T04:00:05Z") and tr["stable"][0] == 100.0
    # A step at the change, not a ramp from the previous sample.
    change = views.epoch("2026-11-30T04:02:00Z")
    assert [(c, s) for t, c, s in zip(tr["t"], tr["canary"], tr["stable"], strict=True) if t == change] == [
        (0.0, 100.0), (20.0, 80.0)]
    assert tr["canary"][-1] == 20.0


def test_an_idle_revisions_drift_is_not_current() -> None:
    """Old report: the monitor's last gauge of a revision no longer serving was drawn as the current drift."""
    obj = md({"phase": "Succeeded", "stableModel": {"revision": "r4", "version": "v4"}})
    series = [
        {"feature": "mean area", "revision": "v2", "endpoint": "default", "t": [1.0, 2.0], "v": [3.5, 3.5]},
        {"feature": "mean area", "revision": "v4", "endpoint": "default", "t": [1.0, 2.0], "v": [0.2, 0.1]},
        {"feature": "mean radius", "revision": "v4", "endpoint": "default", "t": [1.0, 2.0], "v": [0.2, 0.4]},
    ]
    doc = views.drift_view(obj, series, [], 3.0)
    assert [w["feature"] for w in doc["worst"]] == ["mean radius", "mean area"]
    assert doc["worst"][1]["value"] == 0.1
    lines = {line["label"]: line["live"] for f in doc["features"] for line in f["lines"]}
    assert lines == {"v2 (default), idle": False, "v4 (default)": True}
    assert doc["summary"]["drift"] == "warn"  # 0.4 >= warn 0.3, and the idle 3.5 is not critical
    reading = serving_reading({"v2": views.DriftReading(3.5, "mean area"), "v4": views.DriftReading(0.4, "mean radius")},
                              {"v4", "r4"})
    assert reading is not None and (reading.value, reading.feature) == (0.4, "mean radius")


def test_lineage_links_each_stage() -> None:
    obj = md({"phase": "Succeeded", "stableModel": {"revision": "r1", "version": "fraud/7"},
              "lineage": {"datasetUri": "s3://data/tx.csv", "gitSha": "abc1234", "pipelineRun": "run-1",
                          "trainingJob": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/job-7",
                          "modelPackageArn": "arn:aws:sagemaker:eu-west-1:123456789012:model-package/fraud/7"}})
    chain = views.lineage_view(obj)
    assert [c["stage"] for c in chain] == ["data", "code", "pipeline run", "training job", "model package", "approval",
                                           "deployment revision"]
    hrefs = {c["stage"]: c["href"] for c in chain}
    assert hrefs["training job"].endswith("#/jobs/job-7") and "eu-west-1" in hrefs["training job"]
    assert hrefs["model package"].endswith("#/model-registry/fraud/versions/7")
    assert hrefs["data"].startswith("https://s3.console.aws.amazon.com/s3/object/data?prefix=tx.csv")


def test_no_nan_reaches_the_page() -> None:
    status = {**ROLLED_BACK, "analysisRuns": [_run("r2", 1, "Inconclusive", {"success-rate": [
        {"phase": "Inconclusive", "value": math.nan, "stableValue": -math.inf, "sampleCount": math.inf,
         "finishedAt": "2026-11-30T04:10:05Z"}]})]}
    json.dumps(views.detail(md(status), [], 1_796_011_900.0), allow_nan=False)


def test_the_contracts_status_fills_every_scorecard_column() -> None:
    """The rollout rework's shape (CONTRACT.md): stable value, PromQL and sample count per measurement, a
    background run, pause conditions as a list."""
    status = {
        "phase": "RolledBack", "stableModel": {"revision": "r1", "version": "v1"}, "canaryWeight": 0,
        "abortedRevision": "r2", "pauseConditions": [],
        "analysisRuns": [
            {"name": "background", "revision": "r2", "step": None, "phase": "Successful", "message": "",
             "startedAt": "2026-11-30T04:09:00Z", "metrics": [
                 {"name": "p99-latency", "phase": "Successful", "count": 3, "successful": 3, "measurements": [
                     {"phase": "Successful", "value": 0.12, "stableValue": 0.11, "sampleCount": 512,
                      "threshold": "<= 0.25", "query": "histogram_quantile(0.99, ...)",
                      "startedAt": "2026-11-30T04:09:59Z", "finishedAt": "2026-11-30T04:10:00Z"}]}]},
            {"name": "step-1", "revision": "r2", "step": 1, "phase": "Failed", "message": "success-rate failed",
             "startedAt": "2026-11-30T04:10:00Z", "metrics": [
                 {"name": "success-rate", "dryRun": False, "phase": "Failed", "count": 2, "successful": 1, "failed": 1,
                  "measurements": [
                      {"phase": "Successful", "value": 0.99, "stableValue": 0.995, "sampleCount": 480,
                       "threshold": ">= 0.95", "query": "sum(rate(...))", "finishedAt": "2026-11-30T04:10:05Z"},
                      {"phase": "Failed", "value": 0.62, "stableValue": 0.995, "sampleCount": 470,
                       "threshold": ">= 0.95", "query": "sum(rate(...))", "message": "0.62 breaches >= 0.95",
                       "finishedAt": "2026-11-30T04:10:10Z"}]}]},
        ],
    }
    doc = views.detail(md(status), [], 1_796_011_900.0)
    latest = doc["scorecards"][0]
    assert (latest["name"], latest["phase"]) == ("step-1", "Failed")
    row = latest["metrics"][0]
    assert (row["canary"], row["stable"], row["samples"], row["query"], row["why"]) == (
        "0.62", "0.995", "470", "sum(rate(...))", "0.62 breaches >= 0.95")
    assert row["counts"] == "1 ok, 1 failed, 0 inconclusive, 0 error of 2"
    assert doc["scorecards"][1]["name"] == "background" and doc["scorecards"][1]["step"] is None
    assert doc["rollbackReason"] == "success-rate = 0.62 breached >= 0.95 (revision r2, step-1)"
    assert doc["summary"]["verdict"] == "Failed" and doc["actions"] == ["retry"]
    stable = [p["stable"] for p in next(c for c in doc["charts"] if c["metric"] == "success-rate")["points"]]
    assert stable == [0.995, 0.995]
