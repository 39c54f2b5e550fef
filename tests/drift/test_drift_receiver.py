"""The retraining trigger: decisions, trigger stores that survive restarts, the launchers, and the
webhook receiver as a real process."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from drift_testlib import Service, start_service, wait_for
from kanari.api.v1alpha1 import RetrainRecord, RetrainSpec
from kanari.retrain.history import FileTriggerStore, KubernetesTriggerStore, StoreUnavailable
from kanari.retrain.launchers import CommandLauncher, LaunchError, LaunchRequest
from kanari.retrain.policy import Alert, RetrainPolicy, decide, parse_payload, policy_for

pytestmark = pytest.mark.timeout(90)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = RetrainPolicy("fraud-training", cooldown_seconds=6 * 3600, max_per_day=2, parameters={})


def alert(status: str = "firing", starts: str = "2026-11-27T11:00:00.123456789Z", fp: str = "a1b2c3", **labels: str) -> Alert:
    base = {"alertname": "KanariFeatureDriftCritical", "namespace": "ml-prod", "model": "fraud", "severity": "critical",
            "kanari_retrain": "true", "feature": "amount"}
    return Alert(status, {**base, **labels}, {}, starts, fp)


def record(at: datetime, fp: str = "old", starts: str = "2026-11-26T00:00:00Z", outcome: str = "Started") -> RetrainRecord:
    return RetrainRecord(at=at.strftime("%Y-%m-%dT%H:%M:%SZ"), alert="KanariFeatureDriftCritical", fingerprint=fp,
                         startsAt=starts, outcome=outcome, run="r")


# ------------------------------------------------------------------------------------------- decide
def test_decisions() -> None:
    assert decide(alert(), POLICY, [], NOW).trigger
    assert decide(alert(status="resolved"), POLICY, [], NOW).reason == "not_firing"
    assert decide(alert(kanari_retrain="false"), POLICY, [], NOW).reason == "not_retrain_alert"
    assert decide(alert(model=""), POLICY, [], NOW).reason == "no_model"
    assert decide(alert(), None, [], NOW).reason == "no_policy"
    same = record(NOW - timedelta(days=3), fp="a1b2c3", starts="2026-11-27T11:00:00.123456789Z")
    assert decide(alert(), POLICY, [same], NOW).reason == "duplicate"
    # a failed launch blocks neither a retry of the same alert nor counts for cooldown or the cap
    assert decide(alert(), POLICY, [record(NOW - timedelta(minutes=1), fp="a1b2c3", starts=alert().starts_at,
                                          outcome="Failed")], NOW).trigger
    recent = decide(alert(), POLICY, [record(NOW - timedelta(hours=5))], NOW)
    assert recent.reason == "cooldown" and "cooldown until 2026-11-27T13:00:00Z" in recent.detail
    assert decide(alert(), POLICY, [record(NOW - timedelta(hours=7))], NOW).trigger
    no_cooldown = RetrainPolicy("p", 0, 2, {})
    two = [record(NOW - timedelta(hours=20)), record(NOW - timedelta(hours=2))]
    assert decide(alert(), no_cooldown, two, NOW).reason == "daily_cap"
    assert decide(alert(), no_cooldown, [record(NOW - timedelta(hours=30)), two[1]], NOW).trigger


def test_policy_from_alert_annotations_or_config() -> None:
    a = Alert("firing", alert().labels, {"retrain_pipeline": "p1", "retrain_cooldown": "2h", "retrain_max_per_day": "4",
                                         "retrain_parameters": '{"lr": "0.1"}'}, "2026-11-27T11:00:00Z", "f")
    assert policy_for(a, {}) == RetrainPolicy("p1", 7200.0, 4, {"lr": "0.1"})
    configured = {"ml-prod/fraud": RetrainSpec(pipeline="from-config", cooldown="1h")}
    assert policy_for(alert(), configured) == RetrainPolicy("from-config", 3600.0, 2, {})
    assert policy_for(alert(), {}) is None
    bad = Alert("firing", alert().labels, {"retrain_pipeline": "p", "retrain_cooldown": "a day"}, "2026-11-27T11:00:00Z", "f")
    with pytest.raises(ValueError, match="retrain cooldown"):
        policy_for(bad, {})


def test_payload_parsing_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="version"):
        parse_payload({"version": "3", "alerts": []})
    with pytest.raises(ValueError, match=r"alerts\[0\].fingerprint"):
        parse_payload({"version": "4", "alerts": [{"status": "firing", "startsAt": "2026-11-27T11:00:00Z"}]})
    with pytest.raises(ValueError, match=r"alerts\[0\].startsAt"):
        parse_payload({"version": "4", "alerts": [{"status": "firing", "startsAt": "yesterday", "fingerprint": "x"}]})


# ------------------------------------------------------------------------------------------- stores
def test_file_store_survives_restarts_and_refuses_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "triggers.json"
    store = FileTriggerStore(path)
    assert store.claim(alert(), POLICY, NOW).trigger
    store.complete(alert(), "run-1", "Started", "started", NOW)
    restarted = FileTriggerStore(path)  # a new process reading the same file
    assert restarted.claim(alert(), POLICY, NOW).reason == "duplicate"
    assert restarted.claim(alert(fp="other"), POLICY, NOW + timedelta(minutes=1)).reason == "cooldown"
    assert [r.run for r in restarted.history("ml-prod", "fraud")] == ["run-1"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["triggers.json", "triggers.json.lock"]  # no temp files
    path.write_text("{half a file")
    with pytest.raises(StoreUnavailable, match="unreadable trigger history"):
        restarted.claim(alert(fp="new"), POLICY, NOW + timedelta(days=2))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The operator tests' API emulator (status subresource, resourceVersion conflicts), serving only the
    ModelDeployment CRD: loading the others takes seconds and this store never touches them."""
    from tests.operator import harness

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "CRD_FILES", tuple(p for p in harness.CRD_FILES if p.name.startswith("kanari.dev")))
        with harness.Cluster(tmp_path_factory.mktemp("apiserver")) as c:
            yield c


def test_kubernetes_store_records_in_status_and_emits_events(cluster: Any) -> None:
    from kubernetes import client

    from tests.operator.harness import MD, Kube

    kube = Kube(cluster, "ml-prod")
    created = kube.create_md("fraud", {"model": {"storageUri": "s3://m/fraud/7", "format": "sklearn"}})
    # The store's own client (not the tests' user agent): the emulator interleaves writes only before those.
    own = client.ApiClient(client.Configuration(host=cluster.url))
    store = KubernetesTriggerStore(client.CustomObjectsApi(own), client.CoreV1Api(own))
    # another writer changes the object between our read and our write: the claim is decided again
    cluster.interleave_write(MD, "ml-prod", "fraud", {"status": {"message": "reconciled"}})
    assert store.claim(alert(), POLICY, NOW).trigger
    store.complete(alert(), "run-42", "Started", "drift alert started pipeline fraud-training", NOW)
    status_writes = [c.status for c in cluster.calls() if c.on(MD, "fraud", "status") and c.verb == "patch"]
    assert status_writes[:2] == [409, 200]  # the stale write was refused, the claim decided again and written
    status = kube.md("fraud")["status"]
    assert status["message"] == "reconciled"
    assert status["retraining"] == [{
        "at": "2026-11-27T12:00:00Z", "alert": "KanariFeatureDriftCritical", "fingerprint": "a1b2c3", "run": "run-42",
        "outcome": "Started", "startsAt": "2026-11-27T11:00:00.123456789Z",
    }]
    RetrainRecord.model_validate(status["retraining"][0])
    assert "RetrainingTriggered" in kube.reasons(created["metadata"]["uid"])
    assert store.claim(alert(), POLICY, NOW).reason == "duplicate"
    assert store.claim(alert(model="absent"), POLICY, NOW).reason == "no_model"


# ---------------------------------------------------------------------------------------- launchers
def test_command_launcher_runs_in_the_background_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    script = "import os, sys; open(sys.argv[1], 'w').write(sys.argv[2] + '|' + os.environ['KANARI_DRIFT_ALERT'])"
    launcher = CommandLauncher([sys.executable, "-c", script, str(out), "{model}:{alertname}"], tmp_path / "logs")
    evil = alert(model="fraud; touch /tmp/kanari-pwned")
    run = launcher.launch(LaunchRequest(evil, POLICY))
    assert run.startswith("pid-")
    text = wait_for(lambda: out.exists() and out.read_text(), "the command's output")
    args, _, env = text.partition("|")
    assert args == "fraud; touch /tmp/kanari-pwned:KanariFeatureDriftCritical"  # one argument, never a shell
    assert json.loads(env)["fingerprint"] == "a1b2c3"
    with pytest.raises(LaunchError, match="cannot start"):
        CommandLauncher(["/nonexistent/trainer"], tmp_path).launch(LaunchRequest(alert(), POLICY))


# The KFP launcher (its parameters, derived from the ModelDeployment) is tested in
# tests/pipelines/test_pipeline_retrain_launch.py.


# --------------------------------------------------------------------------------- receiver process
TOKEN = "s3cr3t-token-value"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Service, Path]]:
    marker = tmp_path / "runs.txt"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    config = {
        "launcher": {"command": {"argv": [sys.executable, "-c", script, str(marker), "{namespace}/{model}:{alertname}"],
                                 "logDir": str(tmp_path / "logs")}},
        "store": {"file": str(tmp_path / "triggers.json")},
        "models": {"ml-prod/fraud": {"pipeline": "fraud-training", "cooldown": "1h", "maxPerDay": 2}},
    }
    (tmp_path / "receiver.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "token").write_text(TOKEN + "\n")
    args = ["--config", str(tmp_path / "receiver.yaml"), "--token-file", str(tmp_path / "token")]
    svc = start_service("kanari.retrain.receiver", args, tmp_path)
    yield svc, marker
    svc.stop()
    assert TOKEN not in svc.tail()


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "kanari-retrain",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am", "alerts": list(alerts)}


def am_alert(status: str = "firing", fp: str = "f1", starts: str = "2026-11-27T11:00:00Z", **labels: str) -> dict[str, Any]:
    a = alert(status=status, fp=fp, starts=starts, **labels)
    return {"status": status, "labels": a.labels, "annotations": {}, "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph", "fingerprint": fp}


def test_receiver_triggers_once_and_answers_every_delivery_clearly(receiver: tuple[Service, Path], tmp_path: Path) -> None:
    svc, marker = receiver
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{svc.url}/alerts"
    r = httpx.post(url, json=webhook(am_alert()))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = httpx.post(url, json=webhook(am_alert()), headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.post(url, content=b"{oops", headers=auth)
    assert r.status_code == 400 and r.json()["detail"] == "body is not JSON"
    r = httpx.post(url, json={"version": "2", "alerts": []}, headers=auth)
    assert r.status_code == 400 and "version" in r.json()["detail"]
    assert not marker.exists()  # nothing above started anything

    r = httpx.post(url, json=webhook(am_alert()), headers=auth)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["action"] == "triggered" and result["run"].startswith("pid-")
    wait_for(lambda: marker.exists() and marker.read_text(), "the retraining command")

    r = httpx.post(url, json=webhook(am_alert(), am_alert(status="resolved", fp="f0"),
                                     am_alert(fp="f2", starts="2026-11-27T11:30:00Z"),
                                     am_alert(fp="f3", kanari_retrain="false")), headers=auth)
    assert r.status_code == 200
    assert [(x["action"], x["reason"]) for x in r.json()["results"]] == [
        ("skipped", "duplicate"), ("skipped", "not_firing"), ("skipped", "cooldown"), ("skipped", "not_retrain_alert"),
    ]
    # the receiver restarts: the store still knows
    svc.stop()
    args = ["--config", str(tmp_path / "receiver.yaml"), "--token-file", str(tmp_path / "token")]
    again = start_service("kanari.retrain.receiver", args, tmp_path / "second")
    try:
        r = httpx.post(f"{again.url}/alerts", json=webhook(am_alert()), headers=auth)
        assert r.json()["results"][0]["reason"] == "duplicate"
    finally:
        again.stop()
    assert marker.read_text().splitlines() == ["ml-prod/fraud:KanariFeatureDriftCritical"]


def test_receiver_refuses_to_run_without_a_token(tmp_path: Path) -> None:
    from kanari.retrain.receiver import main

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"launcher": {"command": {"argv": ["true"]}},
                                                    "store": {"file": str(tmp_path / "t.json")}}))
    assert main(["--config", str(tmp_path / "r.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"launcher": {}, "store": {"file": "x"}}))
    assert main(["--config", str(tmp_path / "bad.yaml"), "--token-file", str(tmp_path / "r.yaml")]) == 2
