"""Review 4: the join state's file and its failed deletes.

- A damaged state file (a torn page, another program's SQLite file at the path) is refused at start with a
  message naming --state-dir and the file, like a file of another schema: before, opening checked only the first
  page and the first read raised a bare DatabaseError/ValueError traceback, every restart (a crash loop saying
  nothing of the state dir).
- A store forgotten while the disk refused the delete (disk full) left its rows on disk; the store that replaced
  it (the task or threshold changed) was then journalled over them, and the next restart merged the old
  threshold's pending halves into it: a label then joined a prediction the monitor had forgotten.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from kanari.judging.groundtruth import JoinStore
from kanari.monitor.groundtruth import GroundTruth, GroundTruthConfig
from kanari.monitor.joinstate import FILE, JoinState, StateError
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(60)
KEY = ("ml-prod", "fraud")


def _clock() -> float:
    return 1_700_000_000.0


def _damaged(directory: Path) -> None:
    state = JoinState(directory)
    store = JoinStore(task="binary", ttl=3600, max_pending=100_000, clock=_clock, journal=True)
    for k in range(5000):
        store.prediction(f"id{k}", "7", 0.5)
    state.save(KEY, ("binary", 0.5, 3600.0), store)
    state.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    state.close()
    raw = bytearray((directory / FILE).read_bytes())
    for offset in range(8192, len(raw), 4096):  # every page but the first two: the header still reads
        raw[offset + 100:offset + 400] = bytes(range(256)) + bytes(44)
    (directory / FILE).write_bytes(bytes(raw))


def _foreign(directory: Path) -> None:
    directory.mkdir(parents=True)
    db = sqlite3.connect(directory / FILE)
    db.execute("CREATE TABLE stores (x TEXT)")
    db.execute("INSERT INTO stores VALUES ('not a monitor row')")
    db.commit()
    db.close()


@pytest.mark.parametrize("spoil", [_damaged, _foreign])
def test_an_unreadable_state_file_is_refused_by_name(tmp_path: Path, spoil: object) -> None:
    directory = tmp_path / "state"
    spoil(directory)  # type: ignore[operator]
    with pytest.raises(StateError, match=r"--state-dir: groundtruth.sqlite3 cannot be read .*move the file away"):
        GroundTruth(CollectorRegistry(), max_pending=10, window_size=10, min_samples=1, clock=_clock,
                    state=JoinState(directory))


def test_the_monitor_refuses_an_unreadable_state_file_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    _foreign(tmp_path / "state")
    (tmp_path / "models.yaml").write_text(json.dumps({"baselines": {}}))
    (tmp_path / "token").write_text("t0ken")
    proc = subprocess.run(
        [sys.executable, "-m", "kanari.monitor.server", "--port", "0", "--host", "127.0.0.1",
         "--config", str(tmp_path / "models.yaml"), "--state-dir", str(tmp_path / "state"), "--no-replay"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--state-dir: groundtruth.sqlite3 cannot be read" in proc.stderr
    assert "Traceback" not in proc.stderr


class _FullDisk:
    """The connection with the disk full: reads and transaction control work, every write fails."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def _check(self, sql: str) -> None:
        if sql.lstrip().upper().startswith(("INSERT", "DELETE", "UPDATE")):
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        self._check(sql)
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, *args: object) -> sqlite3.Cursor:
        self._check(sql)
        return self.db.executemany(sql, *args)


def test_a_store_forgotten_while_the_disk_refused_the_delete_does_not_come_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = JoinState(tmp_path)
    truth = GroundTruth(CollectorRegistry(), max_pending=10, window_size=10, min_samples=1, clock=_clock, state=state)
    old = GroundTruthConfig("binary", 0.5, 3600.0)
    truth.predictions(*KEY, "7", "stale", {"predictions": [0.9]}, old, None, 10)
    good = state.db
    monkeypatch.setattr(state, "db", _FullDisk(good))
    new = GroundTruthConfig("binary", 0.8, 3600.0)  # the threshold changed: the old store is forgotten
    truth.predictions(*KEY, "7", "fresh", {"predictions": [0.9]}, new, None, 10)  # its delete fails (logged)
    monkeypatch.setattr(state, "db", good)
    truth.labels(*KEY, new, [("fresh", 1.0)])  # acknowledged: on disk
    in_memory = truth.stores[KEY][1]
    assert "stale" not in in_memory.predictions
    restarted = JoinState(tmp_path).load(10, _clock)[KEY]
    assert restarted[0] == ("binary", 0.8, 3600.0)
    assert list(restarted[1].predictions) == [] and restarted[1].quality["7"].joined == 1
