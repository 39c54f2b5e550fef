"""Notifications: one per controller Event of a notified kind, with the right content, to Slack, Teams and a
generic webhook on loopback; a failing or slow webhook never holds up the caller (the reconcile); every failure
and every drop is counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari import notify
from kanari.api.conditions import Event
from kanari.notify import messages, sinks
from kanari.notify.sinks import ConfigError, NotifyConfig

from tests.dashboard.dashboard_testlib import WebhookReceiver, wait_for

REASONS = ["RolloutStarted", "StepAdvanced", "Paused", "Promoted", "RolledBack", "WeightChanged", "AnalysisPassed",
           "ActionConsumed", "Deployed", "Resumed"]
ROLLED_BACK = {
    "phase": "RolledBack", "stableModel": {"revision": "r1", "version": "v1"}, "abortedRevision": "r2",
    "analysisRuns": [{"name": "step-1", "revision": "r2", "step": 1, "phase": "Failed", "metrics": [
        {"name": "success-rate", "count": 1, "failed": 1, "measurements": [
            {"phase": "Failed", "value": 0.62, "threshold": ">= 0.95", "finishedAt": "2026-11-30T04:10:05Z"}]}]}],
}


def failed(sink: str, reason: str) -> float:
    return sinks.FAILED.labels(sink, reason)._value.get()


@pytest.fixture
def webhooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(slow_seconds=3.0) as w:
        yield w


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    notify.reset()
    yield
    notify.reset()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(REASONS), max_size=20))
def test_exactly_one_notification_per_notified_event(reasons: list[str]) -> None:
    events = [Event("Normal", r, f"msg {i}") for i, r in enumerate(reasons)]
    out = messages.from_events("ml", "fraud", ROLLED_BACK, events)
    assert [n.kind for n in out] == [messages.BY_REASON[r] for r in reasons if r in messages.BY_REASON]
    assert [n.fields["message"] for n in out] == [e.message for e in events if e.reason in messages.BY_REASON]


def test_messages_say_what_happened_and_why() -> None:
    tpl = messages.check_templates({})
    [rb] = messages.from_events("ml", "fraud", ROLLED_BACK, [Event("Warning", "RolledBack", "AnalysisFailed: ...")])
    assert rb.text(tpl).startswith("ml/fraud: rolled back r2: success-rate = 0.62 breached >= 0.95.")
    paused = {"phase": "Paused", "currentStep": 1, "canaryModel": {"revision": "r2", "version": "v2"},
              "stableModel": {"revision": "r1", "version": "v1"}, "canaryWeight": 20,
              "pauseConditions": [{"reason": "AnalysisInconclusive", "startTime": "2026-11-30T04:10:00Z",
                                  "message": "12 samples < 100"}]}
    [p] = messages.from_events("ml", "fraud", paused, [Event("Warning", "Paused", "inconclusive analysis")])
    assert p.text(tpl) == "ml/fraud: paused at step 2 (AnalysisInconclusive): inconclusive analysis"
    # A status written before the rollout rework reads the same.
    legacy = {**paused, "pauseConditions": None, "rollout": {"pausedReason": "PauseStep"}}
    del legacy["pauseConditions"]
    [p2] = messages.from_events("ml", "fraud", legacy, [Event("Normal", "Paused", "step 1: paused")])
    assert "(PauseStep)" in p2.text(tpl)


def test_retraining_records_are_told_once_and_not_replayed_after_a_restart() -> None:
    rec = {"at": "2026-11-30T05:00:00Z", "alert": "KanariFeatureDriftCritical", "fingerprint": "f1",
           "startsAt": "2026-11-30T04:59:00Z", "outcome": "Starting"}
    old = {"at": "2026-11-29T05:00:00Z", "alert": "Old", "fingerprint": "f0", "startsAt": "x", "outcome": "Started", "run": "r0"}
    out, seen = messages.from_retraining("ml", "fraud", {}, {"retraining": [old, rec]}, "2026-11-30T04:30:00Z")
    assert [n.kind for n in out] == ["drift_alert"]
    out, seen = messages.from_retraining("ml", "fraud", seen, {"retraining": [old, {**rec, "outcome": "Started", "run": "run-9"}]},
                                         "2026-11-30T04:30:00Z")
    assert [(n.kind, n.fields["run"]) for n in out] == [("retraining_started", "run-9")]
    out, _ = messages.from_retraining("ml", "fraud", seen, {"retraining": [old, {**rec, "outcome": "Started", "run": "run-9"}]},
                                      "2026-11-30T04:30:00Z")
    assert out == []
    done = messages.retraining_finished("ml", "fraud", {
        "canaryModel": {"revision": "r5", "version": "v5"}, "lineage": {"pipelineRun": "run-9"},
        "retraining": [{**rec, "outcome": "Started", "run": "run-9"}]}, [Event("Normal", "RolloutStarted", "x")])
    assert [(n.kind, n.fields["version"]) for n in done] == [("retraining_finished", "v5")]


async def test_delivered_to_each_sink_in_its_format(webhooks: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"KANARI_NOTIFY_SLACK_URL": f"{webhooks.url}/slack", "KANARI_NOTIFY_TEAMS_URL": f"{webhooks.url}/teams",
           "KANARI_NOTIFY_WEBHOOK_URL": f"{webhooks.url}/hook", "KANARI_NOTIFY_WEBHOOK_TOKEN": "s3cret",
           "KANARI_NOTIFY_DASHBOARD_URL": "https://kanari.example"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    notify.publish("ml", "fraud", ROLLED_BACK, [Event("Warning", "RolledBack", "AnalysisFailed")])
    await notify.drain()
    [slack], [teams], [hook] = webhooks.at("/slack"), webhooks.at("/teams"), webhooks.at("/hook")
    assert "success-rate = 0.62" in slack["text"] and "<https://kanari.example/md/ml/fraud|dashboard>" in slack["text"]
    card = teams["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard" and "success-rate = 0.62" in card["body"][0]["text"]
    assert {"title": "metric", "value": "success-rate"} in card["body"][1]["facts"]
    assert (hook["kind"], hook["severity"], hook["fields"]["value"]) == ("rolled_back", "error", "0.62")
    auth = [h for p, _, h in webhooks.received if p == "/hook"][0]["Authorization"]
    assert auth == "Bearer s3cret"


async def test_a_failing_or_slow_webhook_never_holds_up_the_reconcile(webhooks: WebhookReceiver,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KANARI_NOTIFY_SLACK_URL", f"{webhooks.url}/slow")     # answers after 3 s
    monkeypatch.setenv("KANARI_NOTIFY_WEBHOOK_URL", f"{webhooks.url}/fail")   # answers 500
    monkeypatch.setenv("KANARI_NOTIFY_TEAMS_URL", "http://127.0.0.1:9/closed")  # nothing listens
    before = (failed("webhook", "http_500"), failed("teams", "unreachable"))
    loop = asyncio.get_running_loop()
    ticks: list[float] = []

    async def heartbeat() -> None:  # what a reconcile loop needs: the event loop, free
        while True:
            ticks.append(loop.time())
            await asyncio.sleep(0.01)

    hb = asyncio.create_task(heartbeat())
    calls = []
    for i in range(8):
        start = time.perf_counter()
        notify.publish("ml", f"m{i}", ROLLED_BACK, [Event("Warning", "RolledBack", "x")])
        calls.append(time.perf_counter() - start)
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.0)
    hb.cancel()
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(calls) < 0.05, f"publish() took up to {max(calls):.3f}s"
    assert max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.3f}s"
    # Each sink drains on its own: the slow one does not hold up the others' failures being counted.
    await asyncio.wait_for(asyncio.gather(notify._NOTIFIER.queues["webhook"].join(),  # type: ignore[union-attr]
                                          notify._NOTIFIER.queues["teams"].join()), 30)  # type: ignore[union-attr]
    assert failed("webhook", "http_500") - before[0] == 8
    assert failed("teams", "unreachable") - before[1] == 8
    assert len(webhooks.at("/fail")) == 16  # one retry each, then counted
    assert len(webhooks.at("/slow")) < 8  # still working through its backlog


def test_rate_limit_and_full_queue_drop_and_count(webhooks: WebhookReceiver) -> None:
    async def go() -> None:
        config = NotifyConfig(sinks={"webhook": f"{webhooks.url}/hook"}, rate_per_minute=5)
        notifier = notify.Notifier(config)
        before = failed("webhook", "rate_limited")
        for i in range(12):
            notifier.submit(messages.Notification("promoted", "ml", f"m{i}", {"version": "v2", "message": ""}))
        await asyncio.wait_for(notifier.idle(), 10)
        assert len(webhooks.at("/hook")) == 5
        assert failed("webhook", "rate_limited") - before == 7
        notifier.stop()

    asyncio.run(go())
    full_before = failed("webhook", "queue_full")

    async def flood() -> None:
        notifier = notify.Notifier(NotifyConfig(sinks={"webhook": f"{webhooks.url}/slow"}, rate_per_minute=10000))
        for i in range(sinks.QUEUE_SIZE + 50):
            notifier.submit(messages.Notification("promoted", "ml", f"f{i}", {}))
        notifier.stop()

    asyncio.run(flood())
    assert failed("webhook", "queue_full") - full_before >= 49


@pytest.mark.parametrize(("env", "message"), [
    ({"KANARI_NOTIFY_SLACK_URL": "hooks.slack.com/services/T/B/SECRET"}, "KANARI_NOTIFY_SLACK_URL: not an http(s) URL"),
    ({"KANARI_NOTIFY_EVENTS": "promoted,exploded"}, "KANARI_NOTIFY_EVENTS: unknown exploded"),
    ({"KANARI_NOTIFY_RATE_PER_MINUTE": "lots"}, "KANARI_NOTIFY_RATE_PER_MINUTE: 'lots' is not a number"),
])
def test_bad_settings_name_the_variable_and_never_echo_a_url(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        NotifyConfig.from_env(env)
    assert str(err.value).startswith(message)
    assert "SECRET" not in str(err.value)


def test_bad_template_names_the_event() -> None:
    with pytest.raises(ConfigError, match="templates.rolled_back: invalid placeholder"):
        NotifyConfig.from_env({"KANARI_NOTIFY_TEMPLATES": "promoted: 'shipped $version'\nrolled_back: 'broken ${metric'\n"})
    with pytest.raises(ConfigError, match="templates.shipped: unknown event"):
        NotifyConfig.from_env({"KANARI_NOTIFY_TEMPLATES": '{"shipped": "x"}'})
    with pytest.raises(ConfigError, match="KANARI_NOTIFY_TEMPLATES: expected a mapping"):
        NotifyConfig.from_env({"KANARI_NOTIFY_TEMPLATES": "[1, 2]"})
    config = NotifyConfig.from_env({"KANARI_NOTIFY_TEMPLATES": '{"promoted": "$model shipped $version :tada:"}'})
    n = messages.Notification("promoted", "ml", "fraud", {"version": "v7"})
    assert n.text(config.templates) == "ml/fraud shipped v7 :tada:"


def test_webhook_receiver_is_loopback_only(webhooks: WebhookReceiver) -> None:
    assert webhooks.url.startswith("http://127.0.0.1:")
    wait_for(lambda: webhooks.thread.is_alive(), "the receiver thread")
