"""Notifications from the real operator: for each Kubernetes Event it emits of a notified reason, exactly one
message on each of Slack, Teams and the generic webhook (loopback receivers), saying what happened."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dashboard.conftest import Stack
from tests.dashboard.dashboard_testlib import wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(180)]
V1 = "s3://models/fraud/v1/model.tar.gz"
V2 = "s3://models/fraud/v2/model.tar.gz"
NOTIFIED = {"RolloutStarted": "rollout_started", "StepAdvanced": "step_advanced", "Paused": "paused",
            "Promoted": "promoted", "RolledBack": "rolled_back"}


def reasons(stack: Stack, name: str) -> list[str]:
    items = stack.kube.core.list_namespaced_event("ml-prod").items
    evs = sorted((e for e in items if e.involved_object.name == name),
                 key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
    return [e.reason for e in evs]


def hooks(stack: Stack, path: str, name: str) -> list[dict[str, Any]]:
    out = []
    for body in stack.webhooks.at(path):
        if path == "/hook" and body["name"] == name or path == "/slack" and f"ml-prod/{name}:" in body["text"] or path == "/teams" and f"ml-prod/{name}:" in body["attachments"][0]["content"]["body"][0]["text"]:
            out.append(body)
    return out


def start(stack: Stack, name: str, rollout: dict[str, Any]) -> None:
    kube = stack.kube
    kube.create_md("ml-prod", name, {"model": {"storageUri": V1, "format": "sklearn", "version": "v1"},
                                     "serving": {"accelerator": "cpu"}, "rollout": rollout})
    stack.kserve.names.add(name)
    wait_for(lambda: kube.md("ml-prod", name).get("status", {}).get("phase") == "Succeeded", f"{name} v1", 30)
    kube.patch("ml-prod", name, {"spec": {"model": {"storageUri": V2, "version": "v2"}}})


def check_one_per_event(stack: Stack, name: str, last: str) -> list[dict[str, Any]]:
    """Once the Event of `last` is listed: one message per Event, in every sink. (The status can show the end
    before the Event is listed, and the sinks are sent to concurrently: compared only once all have settled.)"""
    def settled() -> list[dict[str, Any]] | None:
        expected = [NOTIFIED[r] for r in reasons(stack, name) if r in NOTIFIED]
        got = hooks(stack, "/hook", name)
        if last not in expected or [b["kind"] for b in got] != expected:
            return None
        return got if len(hooks(stack, "/slack", name)) == len(got) == len(hooks(stack, "/teams", name)) else None

    return wait_for(settled, f"one message per Event of {name} in every sink", 15, 0.3)


def test_one_message_per_event_through_a_promotion(stack: Stack) -> None:
    kube = stack.kube
    start(stack, "notify-a", {"strategy": "Canary", "steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]})
    wait_for(lambda: kube.md("ml-prod", "notify-a")["status"].get("phase") == "Paused", "notify-a paused", 30)
    kube.patch("ml-prod", "notify-a", {"metadata": {"annotations": {"kanari.dev/action": "promote/n1"}}})
    wait_for(lambda: (m := kube.md("ml-prod", "notify-a")["status"]).get("phase") == "Succeeded"
             and m["stableModel"]["version"] == "v2", "notify-a promoted", 30)
    got = check_one_per_event(stack, "notify-a", "promoted")
    kinds = [b["kind"] for b in got]
    assert kinds[0] == "rollout_started" and kinds[-1] == "promoted" and "paused" in kinds
    paused = next(b for b in got if b["kind"] == "paused")
    assert "(PauseStep)" in paused["text"]
    assert got[-1]["text"].startswith("ml-prod/notify-a: v2 promoted")
    assert got[-1]["link"] == "http://127.0.0.1:3100/md/ml-prod/notify-a"


def test_rollback_message_names_the_failing_metric_and_value(stack: Stack) -> None:
    for rev, value in (("notify-b-predictor-00001", 0.995), ("notify-b-predictor-00002", 0.41)):
        stack.gauges["success"].labels("ml-prod", rev).set(value)
    query = 'max(kanari_test_success_rate{namespace="{{namespace}}", revision="{{canaryRevision}}"})'
    start(stack, "notify-b", {"strategy": "Canary", "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 100}],
                              "analysis": {"interval": "1s", "count": 1, "metrics": [
                                  {"name": "success-rate", "query": query, "minSampleCount": 0,
                                   "thresholdRange": {"min": 0.95}}]}})
    wait_for(lambda: stack.kube.md("ml-prod", "notify-b")["status"].get("phase") == "RolledBack", "notify-b rolled back", 40)
    got = check_one_per_event(stack, "notify-b", "rolled_back")
    rb = next(b for b in got if b["kind"] == "rolled_back")
    assert (rb["fields"]["metric"], rb["fields"]["value"], rb["fields"]["threshold"]) == ("success-rate", "0.41", ">= 0.95")
    assert "success-rate = 0.41 breached >= 0.95" in rb["text"]
