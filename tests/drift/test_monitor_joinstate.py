"""Issue 16: the delayed-ground-truth join stores survive a monitor restart (--state-dir, SQLite).

The guarantee is checked against the in-memory JoinStore as the reference model: any sequence of predictions,
labels, clock advances, dropped revisions and restarts (the process killed, the file reopened) leaves the
durable store exactly where the reference is: nothing within the TTL is lost, the bounds and drop counters
hold, the same pairs join. Then the real process: a prediction, kill -9, a restart on the same directory, the
label, and the joined quality on /metrics.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from drift_testlib import RESPONSE, kserve_headers, metric_samples, start_service, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.judging import groundtruth as gt
from kanari.judging.groundtruth import JoinStore
from kanari.monitor.groundtruth import GroundTruth, GroundTruthConfig
from kanari.monitor.joinstate import FILE, JoinState, StateError
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(120)

KEY = ("ml-prod", "fraud")
TTL = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def snapshot(store: JoinStore) -> dict[str, Any]:
    """Everything a verdict depends on, in the order expiry and eviction read it."""
    return {
        "predictions": [(i, p.revision, p.value, p.at) for i, p in store.predictions.items()],
        "labels": list(store.labels.items()),
        "joined": list(store.joined_ids),
        "dropped": dict(store.dropped),
        "quality": {r: (q.joined, q.tp, q.fp, q.fn, q.tn, q.abs_error, q.sq_error, list(q.reservoir))
                    for r, q in sorted(store.quality.items())},
        "metrics": {r: q.metrics() for r, q in sorted(store.quality.items())},
    }


# Hostile ids too: a lone surrogate (a JSON "\\ud800", or a header's undecodable byte), NUL, non-ASCII, 256 chars.
ids = st.integers(0, 25).map(str) | st.sampled_from(["\ud800", "a\x00b", "é/0", "x" * 256])
ops = st.lists(st.one_of(
    st.tuples(st.just("prediction"), ids, st.sampled_from(["7", "8"]), st.sampled_from([0.1, 0.4, 0.6, 0.9])),
    st.tuples(st.just("label"), ids, st.sampled_from([0.0, 1.0])),
    st.tuples(st.just("advance"), st.floats(0, 25)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("drop_revision"), st.sampled_from(["7", "8"])),
    st.tuples(st.just("expire")),
), max_size=80)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops, st.integers(1, 12), st.sampled_from(["binary", "regression"]))
def test_any_sequence_with_restarts_ends_where_the_in_memory_store_does(
    tmp_path_factory: pytest.TempPathFactory, seq: list[tuple[Any, ...]], capacity: int, task: str
) -> None:
    directory = tmp_path_factory.mktemp("state")
    clock = Clock()
    settings_ = (task, 0.5, TTL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gt, "RESERVOIR", 4)  # small, so that sampling overwrites slots within a short sequence
        reference = JoinStore(task=task, ttl=TTL, max_pending=capacity, clock=clock)  # type: ignore[arg-type]
        state = JoinState(directory)
        store = JoinStore(task=task, ttl=TTL, max_pending=capacity, clock=clock, journal=True)  # type: ignore[arg-type]
        arrivals: dict[tuple[str, str], float] = {}
        restarts = 0
        for op in seq:
            kind = op[0]
            if kind == "restart":
                # kill -9: the old connection is abandoned, never closed; a new process opens the file.
                state = JoinState(directory)
                loaded = state.load(capacity, clock)
                restarts += 1
                if KEY in loaded:
                    assert loaded[KEY][0] == settings_
                    store = loaded[KEY][1]
                else:  # nothing was ever saved: the store is empty
                    assert snapshot(reference) == snapshot(JoinStore(task=task, ttl=TTL, max_pending=capacity,  # type: ignore[arg-type]
                                                                     clock=clock))
                    store = JoinStore(task=task, ttl=TTL, max_pending=capacity, clock=clock,  # type: ignore[arg-type]
                                      journal=True)
            elif kind == "advance":
                clock.now += op[1]
                continue
            else:
                for s in (reference, store):
                    if kind == "prediction":
                        s.prediction(op[1], op[2], op[3])
                    elif kind == "label":
                        s.label(op[1], op[2])
                    elif kind == "drop_revision":
                        s.drop_revision(op[1])
                    else:
                        s.expire()
                if kind in ("prediction", "label"):
                    arrivals.setdefault((kind, op[1]), clock.now)
                state.save(KEY, settings_, store, durable=kind == "label")
            assert snapshot(store) == snapshot(reference), f"after {op} ({restarts} restarts)"
            assert len(store.predictions) <= capacity and len(store.labels) <= capacity
            assert len(store.joined_ids) <= capacity
        # On disk, bounded too: what is pending, joined lately and sampled, nothing more.
        db = sqlite3.connect(directory / FILE)
        assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == len(store.predictions) + len(store.labels)
        assert db.execute("SELECT COUNT(*) FROM joined").fetchone()[0] == len(store.joined_ids)
        assert db.execute("SELECT COUNT(*) FROM reservoir").fetchone()[0] <= 4 * len(store.quality)
        db.close()
    # Nothing within the TTL lost, whatever the restarts: with room to spare (no eviction), an id whose
    # prediction and label both arrived, within the TTL of each other, and was not dropped since, has joined.
    if sum(op[0] in ("prediction", "label") for op in seq) <= capacity:
        dropped = {op[1] for op in seq if op[0] == "drop_revision"}
        for ident in {op[1] for op in seq if op[0] == "prediction"}:
            p, lab = arrivals.get(("prediction", ident)), arrivals.get(("label", ident))
            first = next(op for op in seq if op[0] == "prediction" and op[1] == ident)
            if p is not None and lab is not None and abs(p - lab) <= TTL and not dropped:
                assert ident in store.joined_ids, (ident, p, lab)
                assert store.quality[first[2]].joined >= 1


def test_a_smaller_bound_after_a_restart_evicts_the_oldest_and_counts_them(tmp_path: Path) -> None:
    clock = Clock()
    state = JoinState(tmp_path)
    store = JoinStore(task="binary", ttl=TTL, max_pending=10, clock=clock, journal=True)
    for k in range(8):
        store.prediction(f"p{k}", "7", 0.9)
    state.save(KEY, ("binary", 0.5, TTL), store)
    restarted = JoinState(tmp_path).load(3, clock)[KEY][1]  # --max-label-pending lowered to 3
    assert list(restarted.predictions) == ["p5", "p6", "p7"] and restarted.dropped["evicted"] == 5
    # The TTL ran on while the monitor was down: the wall clock, saved with each half.
    clock.now += TTL + 1
    restarted.expire()
    assert not restarted.predictions and restarted.dropped["expired"] == 3


def test_a_failed_write_is_not_acknowledged_and_is_written_by_the_next_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A label batch whose write fails raises (the endpoint answers 503); its changes stay journalled, bounded,
    and the next successful save writes them: nothing acknowledged is lost, nothing unacknowledged is lost either."""
    clock = Clock()
    state = JoinState(tmp_path)
    truth = GroundTruth(CollectorRegistry(), max_pending=5, window_size=100, min_samples=10, clock=clock, state=state)
    config = GroundTruthConfig("binary", 0.5, 3600.0)
    truth.predictions(*KEY, "7", "a", {"predictions": [0.9]}, config, None, 10)
    good = state.db
    broken = sqlite3.connect(":memory:")
    broken.close()
    monkeypatch.setattr(state, "db", broken)
    with pytest.raises(StateError, match="could not be written to groundtruth.sqlite3"):
        truth.labels(*KEY, config, [("a", 1.0)])
    # Saves keep failing while predictions pour in: the journal gives way to one whole rewrite, bounded.
    for k in range(700):
        truth.predictions(*KEY, "7", f"b{k}", {"predictions": [0.2]}, config, None, 10)
    store = truth.stores[KEY][1]
    assert store.changes is not None and len(store.changes) < 8 * 5 + 1000 + 10
    monkeypatch.setattr(state, "db", good)
    truth.labels(*KEY, config, [("b699", 0.0)])  # acknowledged: everything before it is on disk too
    again = JoinState(tmp_path).load(5, clock)[KEY][1]
    assert snapshot(again) == snapshot(store)
    assert again.quality["7"].joined == 2 and again.quality["7"].tp == 1 and again.quality["7"].tn == 1


def test_a_state_file_from_another_schema_is_refused_by_name(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILE)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StateError, match=r"--state-dir: groundtruth.sqlite3 has schema 99"):
        JoinState(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="--state-dir: cannot open"):
        JoinState(tmp_path / "file")


def test_a_restarted_monitor_keeps_its_stores_until_the_models_are_listed(tmp_path: Path) -> None:
    """Before the first list of ModelDeployments every model looks unmonitored: the loaded state is not dropped."""
    from kanari.monitor.registry import ModelRegistry
    from kanari.monitor.server import DriftMonitor
    from kanari.monitor.settings import MonitorSettings

    clock = Clock()
    state = JoinState(tmp_path)
    store = JoinStore(task="binary", ttl=3600, max_pending=10, clock=clock, journal=True)
    store.prediction("p", "7", 0.9)
    state.save(KEY, ("binary", 0.5, 3600.0), store)
    models = ModelRegistry()
    models.expect(["ml-prod", "other"])
    monitor = DriftMonitor(MonitorSettings(), models, state=JoinState(tmp_path))
    models.replace([], "other")  # one watched namespace listed, not the model's
    monitor.evaluate()
    assert KEY in monitor.truth.stores and JoinState(tmp_path).load(10, clock)[KEY][1].predictions
    models.replace([], "ml-prod")  # now every namespace is listed: the model is gone, and so is its state
    monitor.evaluate()
    assert KEY not in monitor.truth.stores and KEY not in JoinState(tmp_path).load(10, clock)


def test_ground_truth_in_the_static_config_is_checked_field_by_field(tmp_path: Path) -> None:
    from kanari.monitor.registry import from_static_file

    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"baselines": {"ml/fraud": {"uri": "file:///b", "groundTruth": {"ttl": "soon"}}}}))
    with pytest.raises(ValueError, match=r"baselines\.ml/fraud\.groundTruth\.ttl"):
        from_static_file(config)
    config.write_text(json.dumps({"baselines": {"ml/fraud": {"uri": "file:///b", "groundTruth": {"ttl": "2h"}}}}))
    found = from_static_file(config).lookup("ml", "fraud")
    assert found is not None and found.ground_truth == GroundTruthConfig("binary", 0.5, 7200.0)


def test_a_prediction_survives_kill_9_and_joins_its_label_after_the_restart(
    tmp_path: Path, cancer_baseline_dir: Path
) -> None:
    """The real process: a logged prediction, the monitor killed with SIGKILL, restarted on the same state
    directory, the label posted: the joined pair is on /metrics; killed again, restarted: still there."""
    token = "joinstore-token"
    (tmp_path / "token").write_text(token)
    (tmp_path / "models.yaml").write_text(json.dumps({"baselines": {"ml-prod/fraud": {
        "uri": f"file://{cancer_baseline_dir}", "version": "7", "groundTruth": {"task": "binary", "ttl": "1h"}}}}))
    args = ["--config", str(tmp_path / "models.yaml"), "--state-dir", str(tmp_path / "state"),
            "--labels-token-file", str(tmp_path / "token"), "--evaluate-interval", "0.2", "--no-replay"]
    monitor = start_service("kanari.monitor.server", args, tmp_path / "run1")
    try:
        headers = kserve_headers(ce_id="inf-1", ce_type=RESPONSE, model="fraud", namespace="ml-prod")
        r = httpx.post(monitor.url, headers=headers, content=json.dumps({"predictions": [0.93]}), timeout=10)
        assert r.status_code == 200, r.text
    finally:
        monitor.proc.kill()  # SIGKILL: no shutdown hook runs
        monitor.proc.wait(10)
    monitor = start_service("kanari.monitor.server", args, tmp_path / "run2")
    auth = {"Authorization": f"Bearer {token}"}

    def joined() -> dict[str, float] | None:
        text = httpx.get(f"{monitor.url}/metrics", timeout=5).text
        quality = {lab["metric"]: v for lab, v in metric_samples(text, "kanari_realised_quality")
                   if lab["model"] == "fraud" and lab["revision"] == "7"}
        return quality or None

    try:
        r = httpx.post(f"{monitor.url}/v1/labels/ml-prod/fraud", headers=auth, timeout=10,
                       json={"labels": [{"id": "inf-1", "label": 1}]})
        assert r.status_code == 200 and r.json() == {"accepted": 1, "joined": 1}, r.text
        quality = wait_for(joined, "the joined pair's realised quality on /metrics")
        assert quality["recall"] == 1.0 and quality["precision"] == 1.0
    finally:
        monitor.proc.kill()  # killed again right after the 2xx: the acknowledged label is on disk
        monitor.proc.wait(10)
    monitor = start_service("kanari.monitor.server", args, tmp_path / "run3")
    try:
        assert wait_for(joined, "the realised quality, restored") == quality
        again = httpx.post(f"{monitor.url}/v1/labels/ml-prod/fraud", headers=auth, timeout=10,
                           json={"labels": [{"id": "inf-1", "label": 1}]})
        assert again.json() == {"accepted": 1, "joined": 0}, "the joined id is remembered: a re-sent label is a duplicate"
    finally:
        monitor.stop()


async def test_the_label_endpoint_answers_503_when_the_batch_is_not_on_disk(
    tmp_path: Path, cancer_baseline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never a 2xx for a batch that is not saved: the sender retries, and the retry is acknowledged once written."""
    from kanari.monitor.registry import from_static_file
    from kanari.monitor.server import DriftMonitor
    from kanari.monitor.settings import MonitorSettings

    (tmp_path / "models.yaml").write_text(json.dumps({"baselines": {"ml-prod/fraud": {
        "uri": f"file://{cancer_baseline_dir}", "version": "7", "groundTruth": {"task": "binary"}}}}))
    state = JoinState(tmp_path / "state")
    monitor = DriftMonitor(MonitorSettings(), from_static_file(tmp_path / "models.yaml"), labels_token="t", state=state)
    headers = kserve_headers(ce_id="i1", ce_type=RESPONSE, model="fraud", namespace="ml-prod")
    assert (await monitor.handle(headers, json.dumps({"predictions": [0.8]}).encode()))[0] == 200
    good = state.db
    broken = sqlite3.connect(":memory:")
    broken.close()
    monkeypatch.setattr(state, "db", broken)
    batch = json.dumps({"labels": [{"id": "i1", "label": 1}]}).encode()
    status, body = monitor.handle_labels("ml-prod", "fraud", batch)
    assert status == 503 and "groundtruth" not in body["error"] and str(tmp_path) not in body["error"]
    monkeypatch.setattr(state, "db", good)
    assert monitor.handle_labels("ml-prod", "fraud", batch) == (200, {"accepted": 1, "joined": 0})
    restored = JoinState(tmp_path / "state").load(10, lambda: 0.0)[("ml-prod", "fraud")][1]
    assert restored.quality["7"].tp == 1 and "i1" in restored.joined_ids
