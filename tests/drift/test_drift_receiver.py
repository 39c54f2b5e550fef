"""The retraining trigger: decisions, trigger stores that survive restarts, the launchers, and the
webhook receiver as a real process."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
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
from prometheus_client import generate_latest

from devstack.stack import free_port
from tests.support.slowloris import held_open_seconds

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


def test_a_claim_abandoned_by_a_crash_is_retried_and_failures_back_off() -> None:
    starts = alert().starts_at
    claimed = record(NOW, fp="a1b2c3", starts=starts, outcome="Starting")
    # the process died between claim and launch: a fresh claim is a duplicate, a stale one is retried
    assert decide(alert(), POLICY, [claimed], NOW + timedelta(minutes=1)).reason == "duplicate"
    assert decide(alert(), POLICY, [claimed], NOW + timedelta(minutes=11)).trigger
    # a stale claim neither counts for the cooldown nor the daily cap
    assert decide(alert(fp="other"), POLICY, [claimed], NOW + timedelta(minutes=11)).trigger
    failed = [record(NOW - timedelta(seconds=10 * i), fp="a1b2c3", starts=starts, outcome="Failed") for i in (3, 2, 1)]
    backoff = decide(alert(), POLICY, failed, NOW)
    assert backoff.reason == "backoff" and backoff.retry_later  # 3 failures: next try 2 minutes after the last
    assert decide(alert(), POLICY, failed, NOW + timedelta(minutes=2)).trigger
    many = [record(NOW - timedelta(hours=i), fp="a1b2c3", starts=starts, outcome="Failed") for i in range(8, 0, -1)]
    assert decide(alert(), POLICY, many, NOW + timedelta(hours=2)).reason == "gave_up"


def test_alert_annotations_never_set_the_policy() -> None:
    # Anyone who can post to Alertmanager's API can make an alert say this; it must change nothing.
    hostile = {"retrain_pipeline": "attacker-pipeline", "retrain_cooldown": "0s", "retrain_max_per_day": "100",
               "retrain_parameters": '{"output_bucket": "s3://attacker", "auto_approve": "true"}'}
    a = Alert("firing", alert().labels, hostile, "2026-11-27T11:00:00Z", "f")
    assert policy_for(a, {}) is None  # no policy configured: nothing runs
    configured = {"ml-prod/fraud": RetrainSpec(pipeline="from-config", cooldown="1h")}
    assert policy_for(a, configured) == RetrainPolicy("from-config", 3600.0, 2, {})
    assert policy_for(alert(), {}) is None


def test_policy_from_the_model_deployment_spec() -> None:
    from kanari.retrain.policy import policy_from_model_deployment

    md = {"spec": {"monitoring": {"retrain": {"pipeline": "fraud-training", "cooldown": "6h", "maxPerDay": 1,
                                              "parameters": {"epochs": "5"}}}}}
    assert policy_from_model_deployment(md) == RetrainPolicy("fraud-training", 6 * 3600.0, 1, {"epochs": "5"})
    assert policy_from_model_deployment({"spec": {"monitoring": {"enabled": False, **md["spec"]["monitoring"]}}}) is None
    assert policy_from_model_deployment({"spec": {"monitoring": {}}}) is None
    assert policy_from_model_deployment({"spec": {"monitoring": {"retrain": {"pipeline": ""}}}}) is None


def test_labels_that_are_not_kubernetes_names_start_nothing() -> None:
    for model in ("fraud; touch /tmp/x", "Fraud", "a" * 64, "fraud\x00"):
        assert decide(alert(model=model), POLICY, [], NOW).reason == "no_model"


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



def test_a_corrupt_history_is_set_aside_and_reported_and_stale_temps_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "triggers.json"
    FileTriggerStore(path).claim(alert(), POLICY, NOW)
    # kill -9 during a write leaves the temporary file behind; the next start removes it
    (tmp_path / ".triggers.json.k9x2a1").write_text("{partial")
    truncated = path.read_text()[:40]
    path.write_text(truncated)  # truncated (full disk)
    reports: list[str] = []
    store = FileTriggerStore(path, on_corrupt=reports.append)
    assert not (tmp_path / ".triggers.json.k9x2a1").exists()
    assert store.claim(alert(fp="new"), POLICY, NOW + timedelta(days=2)).trigger  # it goes on
    assert len(reports) == 1 and "moved aside" in reports[0] and str(tmp_path) not in reports[0]
    (aside,) = store.set_aside
    assert aside.read_text() == truncated and aside.name.startswith("triggers.json.corrupt-")
    assert [r.fingerprint for r in store.history("ml-prod", "fraud")] == ["new"]


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
    # a record someone else wrote into status that is not a RetrainRecord: skipped, never a 500
    kube.custom.patch_namespaced_custom_object_status(
        "kanari.dev", "v1alpha1", "ml-prod", "modeldeployments", "fraud",
        {"status": {"retraining": [*status["retraining"], {"outcome": "Started"}, "junk"]}})
    assert store.claim(alert(), POLICY, NOW).reason == "duplicate"


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
    # a NUL byte (from a label) made Popen raise ValueError, which escaped as a 500
    with pytest.raises(LaunchError, match="cannot start"):
        launcher.launch(LaunchRequest(alert(alertname="x\x00y"), POLICY))


def test_commands_are_argv_lists_never_shell_lines(tmp_path: Path) -> None:
    # Regression: the check looked for a literal "-c" only, and this test skipped the cases it missed
    # (`bash -lc`), so `sh -ec '... {alertname}'` or `env sh -c ...` still ran a label value as shell code.
    for command in ("kanari pipeline run --model-name {model}", ["sh", "-c", "train --model {model}"],
                    ["/bin/bash", "-lc", "x"], ["sh", "-ec", "train {alertname}"],
                    ["/usr/bin/env", "-i", "A=1", "sh", "-c", "train {alertname}"],
                    ["python3", "-c", "import os; os.system('train {alertname}')"]):
        with pytest.raises(ValueError, match="command"):
            CommandLauncher(command, tmp_path)  # type: ignore[arg-type]
    # Labels passed as arguments, never as code, stay allowed.
    CommandLauncher([sys.executable, "-c", "import sys; print(sys.argv)", "{model}"], tmp_path)
    CommandLauncher(["env", "KFP=1", "kanari", "pipeline", "run", "--model-name", "{model}"], tmp_path)
    from kanari.retrain.receiver import main

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"launcher": {"command": {"argv": "sh -c 'train {model}'"}},
                                                    "store": {"file": str(tmp_path / "t.json")}}))
    (tmp_path / "token").write_text("t")
    assert main(["--config", str(tmp_path / "r.yaml"), "--token-file", str(tmp_path / "token")]) == 2


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
    args = ["--config", str(tmp_path / "receiver.yaml"), "--token-file", str(tmp_path / "token"), "--header-timeout", "1"]
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


# ------------------------------------------------------------------------------- receiver, in process
class _Launcher:
    """A launcher whose behaviour per model the test sets: hang until released, raise, or start."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []

    def launch(self, request: LaunchRequest) -> str:
        model = request.alert.model
        if model.startswith("hang"):
            self.release.wait(30)
            return "late-run"
        if model.startswith("boom"):
            raise RuntimeError("kfp_server_api raised something unexpected")
        self.started.append(f"{model}:{request.policy.pipeline}")
        return f"run-{model}"


def _receiver(tmp_path: Path, launcher: Any, models: list[str], **kw: Any) -> Any:
    from kanari.retrain.receiver import RetrainReceiver

    specs = {f"ml-prod/{m}": RetrainSpec(pipeline="fraud-training", cooldown="1h", maxPerDay=2) for m in models}
    store = FileTriggerStore(tmp_path / "triggers.json")
    return RetrainReceiver(TOKEN, store, launcher, specs, **kw)


def _deliver(receiver: Any, *alerts: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return asyncio.run(receiver.deliver(f"Bearer {TOKEN}", json.dumps(webhook(*alerts)).encode()))


def test_a_hung_launch_blocks_no_other_delivery_and_its_outcome_is_recorded_when_it_ends(tmp_path: Path) -> None:
    launcher = _Launcher()
    receiver = _receiver(tmp_path, launcher, ["hang", "fraud"], launch_timeout=1.0)

    async def both() -> list[tuple[int, dict[str, Any]]]:
        auth = f"Bearer {TOKEN}"
        hung = asyncio.create_task(receiver.deliver(auth, json.dumps(webhook(am_alert(model="hang", fp="h"))).encode()))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        other = await receiver.deliver(auth, json.dumps(webhook(am_alert(model="fraud", fp="f"))).encode())
        assert time.monotonic() - started < 0.5  # not queued behind the hung launch
        return [await hung, other]

    try:
        (hung, other) = asyncio.run(both())
    finally:
        launcher.release.set()
    assert other[0] == 200 and other[1]["results"][0]["action"] == "triggered"
    # Not known to have failed: answered 5xx (Alertmanager comes again), the claim held while the launch runs
    assert hung[0] == 503 and hung[1]["results"][0]["reason"] == "launch_pending"
    wait_for(lambda: [r.outcome for r in receiver.store.history("ml-prod", "hang")] == ["Started"], "the late launch recorded")
    assert receiver.store.history("ml-prod", "hang")[0].run == "late-run"


def test_a_launch_slower_than_the_timeout_is_not_launched_again(tmp_path: Path) -> None:
    """Regression: a launch that outlived launchTimeoutSeconds (a slow pipeline API that still created the run)
    was recorded Failed, so Alertmanager's redelivery after the backoff started a second run for one alert."""

    class Slow:
        def __init__(self) -> None:
            self.runs: list[str] = []

        def launch(self, request: LaunchRequest) -> str:
            time.sleep(1.5)
            self.runs.append(request.alert.fingerprint)
            return f"run-{len(self.runs)}"

    clock = [NOW]
    launcher = Slow()
    receiver = _receiver(tmp_path, launcher, ["fraud"], launch_timeout=0.5, clock=lambda: clock[0])
    status, doc = _deliver(receiver, am_alert(model="fraud", fp="x"))
    assert status == 503  # Alertmanager comes again
    for minutes in (0, 2, 30):  # redeliveries, during and after the slow launch
        clock[0] = NOW + timedelta(minutes=minutes)
        status, doc = _deliver(receiver, am_alert(model="fraud", fp="x"))
        assert doc["results"][0]["reason"] in ("duplicate", "launch_pending"), doc
        time.sleep(0.6)
    wait_for(lambda: [r.outcome for r in receiver.store.history("ml-prod", "fraud")] == ["Started"], "the late launch recorded")
    assert launcher.runs == ["x"]


def test_any_launch_exception_is_recorded_and_retried_with_backoff(tmp_path: Path) -> None:
    clock = [NOW]
    receiver = _receiver(tmp_path, _Launcher(), ["boom"], clock=lambda: clock[0])
    status, doc = _deliver(receiver, am_alert(model="boom"))
    assert status == 502 and doc["results"][0]["reason"] == "launch_failed"
    assert "RuntimeError" in doc["results"][0]["detail"] and "kfp_server_api" not in doc["results"][0]["detail"]
    assert [r.outcome for r in receiver.store.history("ml-prod", "boom")] == ["Failed"]
    # Alertmanager redelivers at once: too soon, answered 503 so it comes again later
    status, doc = _deliver(receiver, am_alert(model="boom"))
    assert status == 503 and doc["results"][0]["reason"] == "backoff"
    clock[0] = NOW + timedelta(minutes=1)
    status, doc = _deliver(receiver, am_alert(model="boom"))
    assert status == 502  # retried after the backoff
    assert [r.outcome for r in receiver.store.history("ml-prod", "boom")] == ["Failed", "Failed"]


def test_a_global_rate_limit_holds_across_models(tmp_path: Path) -> None:
    launcher = _Launcher()
    models = [f"model-{i}" for i in range(150)]
    receiver = _receiver(tmp_path, launcher, models, max_runs_per_hour=10)
    status, doc = _deliver(receiver, *(am_alert(model=m, fp=f"fp-{m}") for m in models))
    reasons = collections.Counter(r["reason"] for r in doc["results"])
    assert reasons == {"trigger": 10, "rate_limited": 140}
    assert status == 503  # the limited ones must come again, not be dropped
    assert len(launcher.started) == 10
    assert 'kanari_retrain_runs_last_hour 10.0' in generate_latest(receiver.registry).decode()


def test_the_policy_comes_from_the_model_deployment_the_alert_names(tmp_path: Path) -> None:
    launcher = _Launcher()
    policies = {("ml-prod", "fraud"): RetrainPolicy("md-pipeline", 3600, 2, {"epochs": "5"})}
    receiver = _receiver(tmp_path, launcher, [], model_deployments=lambda ns, name: policies.get((ns, name)))
    hostile = {**am_alert(), "annotations": {"retrain_pipeline": "attacker", "retrain_cooldown": "0s",
                                             "retrain_max_per_day": "100"}}
    status, doc = _deliver(receiver, hostile)
    assert status == 200 and launcher.started == ["fraud:md-pipeline"]
    again = {**hostile, "fingerprint": "f9", "startsAt": "2026-11-27T11:30:00Z"}
    assert _deliver(receiver, again)[1]["results"][0]["reason"] == "cooldown"  # retrain_cooldown: 0s changed nothing
    assert _deliver(receiver, {**hostile, "labels": {**hostile["labels"], "model": "other"}})[1]["results"][0]["reason"] == "no_policy"


def test_model_deployment_policies_read_through_the_api(cluster: Any) -> None:
    from kanari.retrain.history import ModelDeploymentPolicies
    from kubernetes import client

    from tests.operator.harness import Kube

    kube = Kube(cluster, "ml-prod")
    kube.create_md("churn", {"model": {"storageUri": "s3://m/churn/1", "format": "sklearn"},
                             "monitoring": {"retrain": {"pipeline": "churn-training", "cooldown": "2h"}}})
    kube.create_md("quiet", {"model": {"storageUri": "s3://m/quiet/1", "format": "sklearn"}, "monitoring": {}})
    policies = ModelDeploymentPolicies(lambda: client.CustomObjectsApi(client.ApiClient(client.Configuration(host=cluster.url))))
    assert policies("ml-prod", "churn") == RetrainPolicy("churn-training", 7200.0, 2, {})
    assert policies("ml-prod", "quiet") is None
    assert policies("ml-prod", "absent") is None
    broken = ModelDeploymentPolicies(lambda: client.CustomObjectsApi(client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))))
    with pytest.raises(StoreUnavailable):
        broken("ml-prod", "churn")


def test_hostile_bodies_get_4xx(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path, _Launcher(), ["fraud"])
    auth = f"Bearer {TOKEN}"
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"version": "4", "alerts": [], "x": 1' + b"0" * 400 + b"}",
                 b"\xff\xfe", b'{"version": "4", "alerts": [' + b"{" * 50_000 + b"}" * 50_000 + b"]}"):
        status, doc = asyncio.run(receiver.deliver(auth, body))
        assert status == 400, doc


# ----------------------------------------------------------------------------------- receiver, process
def test_large_and_split_bodies_are_read_whole(receiver: tuple[Service, Path]) -> None:
    svc, marker = receiver
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # 1,000 alerts (about 530 KiB as Alertmanager sends them): all decided, none lost to a short read
    alerts = [am_alert(fp=f"fp-{i:04d}", starts="2026-11-27T11:00:00Z", kanari_retrain="false") for i in range(1000)]
    for a in alerts:
        a["annotations"] = {"summary": "x" * 300, "description": "feature drift " * 10}
    body = json.dumps(webhook(*alerts)).encode()
    assert len(body) > 530 * 1024
    r = httpx.post(f"{svc.url}/alerts", content=body, headers=auth, timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["received"] == 1000
    # a small body in two writes
    small = json.dumps(webhook(am_alert(fp="split"))).encode()
    host, port = svc.url.removeprefix("http://").split(":")
    head = (f"POST /alerts HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(small)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + small[:100])
        time.sleep(0.3)
        sock.sendall(small[100:])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    # 50 MB chunked: 413 once past the limit
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /alerts HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        sent = 0
        while sent < 50 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 65536
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_slowloris_is_cut_off(receiver: tuple[Service, Path]) -> None:
    svc, _ = receiver
    host, port = svc.url.removeprefix("http://").split(":")
    held = held_open_seconds(host, int(port), "/alerts")
    assert held is not None and held < 5, "a slowloris connection was held open"


def test_a_corrupt_history_at_start_is_reported_and_the_receiver_goes_on(tmp_path: Path) -> None:
    (tmp_path / "triggers.json").write_text('{"models": {"ml-prod/fraud": [{"at": ')
    config = {
        "launcher": {"command": {"argv": [sys.executable, "-c", "pass"], "logDir": str(tmp_path / "logs")}},
        "store": {"file": str(tmp_path / "triggers.json")},
        "models": {"ml-prod/fraud": {"pipeline": "fraud-training"}},
    }
    (tmp_path / "receiver.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "token").write_text(TOKEN)
    svc = start_service("kanari.retrain.receiver", ["--config", str(tmp_path / "receiver.yaml"), "--token-file",
                                                    str(tmp_path / "token")], tmp_path / "run")
    try:
        # the corrupt file is found on the first read
        r = httpx.post(f"{svc.url}/alerts", json=webhook(am_alert()), headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["results"][0]["action"] == "triggered", r.text
        health = httpx.get(f"{svc.url}/healthz").json()
        assert health["status"] == "degraded" and "moved aside" in health["problems"][0]
        assert str(tmp_path) not in json.dumps(health)
        assert "kanari_retrain_history_corrupt_total 1.0" in httpx.get(f"{svc.url}/metrics").text
    finally:
        svc.stop()
    assert list(tmp_path.glob("triggers.json.corrupt-*"))


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, as cert-manager would put in the Secret (tls.crt, tls.key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kanari-alert-receiver")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def test_both_services_serve_https_with_a_mounted_certificate(tmp_path: Path, monitor_env: dict[str, str],
                                                              cancer_baseline_dir: Path) -> None:
    import ssl

    crt, key = _self_signed(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"launcher": {"command": {"argv": ["true"]}},
                                                    "store": {"file": str(tmp_path / "t.json")}}))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "b.yaml").write_text(f"baselines:\n  ml/m: file://{cancer_baseline_dir}\n")
    tls = ["--tls-cert-file", str(crt), "--tls-key-file", str(key)]
    services = [
        ("kanari.retrain.receiver", ["--config", str(tmp_path / "r.yaml"), "--token-file", str(tmp_path / "token"), *tls]),
        ("kanari.monitor.server", ["--config", str(tmp_path / "b.yaml"), *tls]),
    ]
    for module, args in services:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), *args],
                                env={**os.environ, **monitor_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            context = ssl.create_default_context(cafile=str(crt))
            ok = wait_for(lambda p=port, c=context: _get(f"https://127.0.0.1:{p}/healthz", c), f"{module} over HTTPS")
            assert ok == 200
            with pytest.raises(httpx.TransportError):  # plain HTTP is not served
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        finally:
            proc.terminate()
            proc.wait(10)
    from kanari.retrain.receiver import main

    assert main(["--config", str(tmp_path / "r.yaml"), "--token-file", str(tmp_path / "token"),
                 "--tls-cert-file", str(tmp_path / "missing.crt"), "--tls-key-file", str(key)]) == 2


def _get(url: str, context: Any) -> int | None:
    try:
        return httpx.get(url, verify=context, timeout=2).status_code
    except httpx.TransportError:
        return None


def test_kill_9_during_writes_leaves_a_whole_history_and_no_temp_files_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "triggers.json"
    writer = (
        "import sys; from datetime import UTC, datetime, timedelta\n"
        "from kanari.retrain.history import FileTriggerStore\n"
        "from kanari.retrain.policy import Alert, RetrainPolicy\n"
        "store = FileTriggerStore(sys.argv[1]); policy = RetrainPolicy('p', 0, 100, {})\n"
        "now = datetime(2026, 11, 27, tzinfo=UTC)\n"
        "for i in range(100000):\n"
        "    a = Alert('firing', {'namespace': 'ml', 'model': f'm{i % 50}', 'kanari_retrain': 'true'}, {}, '2026-11-27T11:00:00Z', f'f{i}')\n"
        "    store.claim(a, policy, now + timedelta(hours=i)); store.complete(a, 'r', 'Started', '', now)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(path)])
    wait_for(lambda: path.exists() and path.stat().st_size > 20_000, "the history to grow", timeout=30)
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait()
    json.loads(path.read_text())  # the old or the new history, never half of one
    store = FileTriggerStore(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["triggers.json", "triggers.json.lock"]
    assert store.history("ml", "m0")


def test_parameters_are_checked_against_and_typed_as_the_pipelines_inputs() -> None:
    from kanari.retrain.launchers import typed_parameters

    spec = {"pipeline_spec": {"root": {"inputDefinitions": {"parameters": {
        "epochs": {"parameterType": "NUMBER_INTEGER"}, "lr": {"parameterType": "NUMBER_DOUBLE"},
        "auto_approve": {"parameterType": "BOOLEAN"}, "image": {"parameterType": "STRING"},
        "drift_alert": {"parameterType": "STRING"}}}}}}
    assert typed_parameters(spec, {"epochs": "5", "lr": "0.01", "auto_approve": "false", "image": "x:1"}, "p") == {
        "epochs": 5, "lr": 0.01, "auto_approve": False, "image": "x:1"}
    with pytest.raises(LaunchError, match="'epoch' is not an input of pipeline 'p'"):
        typed_parameters(spec, {"epoch": "5"}, "p")
    with pytest.raises(LaunchError, match="'epochs' of pipeline 'p': 'five' is not a NUMBER_INTEGER"):
        typed_parameters(spec, {"epochs": "five"}, "p")
    with pytest.raises(LaunchError, match="is not a BOOLEAN"):
        typed_parameters(spec, {"auto_approve": "yes please"}, "p")
    assert typed_parameters(None, {"epochs": "5"}, "p") == {"epochs": "5"}  # nothing to check against


def test_alert_names_and_fingerprints_that_would_bloat_the_status_are_refused() -> None:
    """Review finding: the stored alert name had no bound, and status.retraining lives in the ModelDeployment."""
    base = {"status": "firing", "startsAt": "2026-11-27T11:00:00Z", "fingerprint": "5f3a9c01d2e4b678",
            "labels": {"alertname": "KanariFeatureDriftCritical", "namespace": "ml", "model": "fraud"}}
    assert parse_payload({"version": "4", "alerts": [base]})[0].name == "KanariFeatureDriftCritical"
    with pytest.raises(ValueError, match=r"alerts\[0\]\.labels\.alertname: longer than 253"):
        parse_payload({"version": "4", "alerts": [{**base, "labels": {**base["labels"], "alertname": "A" * 254}}]})
    with pytest.raises(ValueError, match=r"alerts\[0\]\.fingerprint: longer than 64"):
        parse_payload({"version": "4", "alerts": [{**base, "fingerprint": "f" * 65}]})



def test_every_service_reads_its_bearer_token_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One reader (kanari.webguard.bearer_token) for the receiver, the monitor's label and read APIs and the
    label CLI: a Secret file that did not arrive is an error naming the flag (not its path), never a fallback."""
    from kanari.webguard import bearer_token

    monkeypatch.setenv("KANARI_TEST_TOKEN", " from-env ")
    assert bearer_token("--token-file", None, "KANARI_TEST_TOKEN") == "from-env"
    (tmp_path / "t").write_text("from-file\n")
    assert bearer_token("--token-file", str(tmp_path / "t"), "KANARI_TEST_TOKEN") == "from-file"
    for path, said in ((tmp_path / "missing", "unreadable"), (tmp_path / "empty", "empty")):
        if said == "empty":
            path.write_text("  \n")
        with pytest.raises(ValueError, match=f"^--token-file: .*{said}") as err:
            bearer_token("--token-file", str(path), "KANARI_TEST_TOKEN")
        assert str(tmp_path) not in str(err.value)
    monkeypatch.delenv("KANARI_TEST_TOKEN")
    assert bearer_token("--api-token-file", None, "KANARI_TEST_TOKEN") == ""
    with pytest.raises(ValueError, match="pass --token-file or set KANARI_TEST_TOKEN; never open"):
        bearer_token("--token-file", None, "KANARI_TEST_TOKEN", required="never open")
