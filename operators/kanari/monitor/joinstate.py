"""The delayed-ground-truth join stores on disk: what waits for its other half survives a monitor restart.

Labels arrive hours after their predictions, so a monitor that kept its join stores in memory only would lose,
on every restart (an upgrade, an eviction, a crash), every prediction still waiting for its label. This keeps
them in SQLite (stdlib sqlite3; WAL) under `--state-dir`: a PersistentVolumeClaim in the chart.

What is kept, per labelled model: its settings (task, threshold, ttl), the pending predictions and labels in
arrival order (with the wall-clock time they arrived: the TTL runs across restarts), the ids joined lately
(a label re-sent after a restart is still a duplicate), the drop counters, and the per-revision quality
accumulators (counters, error sums and the PR-AUC reservoir). The accumulators are kept, not rebuilt: a joined
pair leaves the pending tables, so nothing from which to rebuild them would remain.

Writes follow kanari.judging.groundtruth.JoinStore's journal: after each batch the monitor calls `save`, which
applies the journalled changes in one transaction. A label batch is saved with `durable=True` (synchronous=FULL:
the WAL is fsynced before the monitor answers 2xx); a prediction batch with the WAL's NORMAL setting, which
survives a killed process (the payload logger's events are not acknowledged to anyone who would re-send them).
A failed write leaves the changes journalled, to be written by the next save, and raises StateError: the caller
answers 503, never 2xx. Should failures pile up beyond the journal's bound, the store is rewritten whole at the
next successful save instead.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from kanari.judging.groundtruth import JoinStore, Quality

log = logging.getLogger("kanari.monitor.joinstate")

FILE = "groundtruth.sqlite3"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS stores (
  namespace TEXT NOT NULL, model TEXT NOT NULL, task TEXT NOT NULL, threshold REAL NOT NULL, ttl REAL NOT NULL,
  expired INTEGER NOT NULL DEFAULT 0, evicted INTEGER NOT NULL DEFAULT 0, duplicate INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (namespace, model));
CREATE TABLE IF NOT EXISTS pending (
  namespace TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL, id BLOB NOT NULL,
  revision TEXT, value REAL NOT NULL, at REAL NOT NULL, UNIQUE (namespace, model, kind, id));
CREATE TABLE IF NOT EXISTS joined (
  namespace TEXT NOT NULL, model TEXT NOT NULL, id BLOB NOT NULL, UNIQUE (namespace, model, id));
CREATE TABLE IF NOT EXISTS quality (
  namespace TEXT NOT NULL, model TEXT NOT NULL, revision TEXT NOT NULL, joined INTEGER NOT NULL,
  tp INTEGER NOT NULL, fp INTEGER NOT NULL, fn INTEGER NOT NULL, tn INTEGER NOT NULL,
  abs_error REAL NOT NULL, sq_error REAL NOT NULL, PRIMARY KEY (namespace, model, revision));
CREATE TABLE IF NOT EXISTS reservoir (
  namespace TEXT NOT NULL, model TEXT NOT NULL, revision TEXT NOT NULL, slot INTEGER NOT NULL,
  score REAL NOT NULL, label INTEGER NOT NULL, PRIMARY KEY (namespace, model, revision, slot));
"""
_TABLES = ("stores", "pending", "joined", "quality", "reservoir")


def _b(inference_id: object) -> bytes:
    # Inference ids are the caller's: a lone surrogate (JSON's "\ud800", a header byte aiohttp decoded with
    # surrogateescape) is a valid key in memory but not UTF-8, so ids are kept as bytes that round-trip exactly.
    return str(inference_id).encode("utf-8", "surrogatepass")


def _s(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")


class StateError(RuntimeError):
    """The join state could not be read or written (the message names the file, never the data)."""


Settings = tuple[str, float, float]  # task, threshold, ttl


class JoinState:
    """One SQLite file holding every labelled model's join store. Used from the event loop's thread only."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / FILE
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN ... COMMIT), one per save.
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StateError(f"--state-dir: {self.path.name} has schema {version}; this monitor reads "
                                 f"{SCHEMA_VERSION} (move the file away to start empty)")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"--state-dir: cannot open {self.path.name} ({type(exc).__name__}: {exc})") from None
        self.failures = 0

    def close(self) -> None:
        self.db.close()

    # -------------------------------------------------------------------------------------------- read
    def load(self, max_pending: int, clock: Callable[[], float]) -> dict[tuple[str, str], tuple[Settings, JoinStore]]:
        """Every saved store, rebuilt (journalled) under this run's max_pending; what the bound evicts is
        journalled, to be written by the next save. StateError naming the file when it does not read (a damaged
        page, another program's tables, a row no monitor wrote): opening checks only its first page."""
        try:
            return self._load(max_pending, clock)
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StateError(f"--state-dir: {self.path.name} cannot be read ({type(exc).__name__}: {exc}); move "
                             "the file away to start empty") from None

    def _load(self, max_pending: int, clock: Callable[[], float]) -> dict[tuple[str, str], tuple[Settings, JoinStore]]:
        out: dict[tuple[str, str], tuple[Settings, JoinStore]] = {}
        q = self.db.execute
        for ns, model, task, threshold, ttl, expired, evicted, duplicate in q("SELECT * FROM stores").fetchall():
            store = JoinStore(task=task, ttl=ttl, max_pending=max_pending, threshold=threshold,
                              clock=clock, journal=True)
            key = (ns, model)
            rows = q("SELECT kind, id, revision, value, at FROM pending WHERE namespace=? AND model=? ORDER BY rowid",
                     key).fetchall()
            quality: dict[str, Quality] = {}
            for revision, joined, tp, fp, fn, tn, abs_error, sq_error in q(
                    "SELECT revision, joined, tp, fp, fn, tn, abs_error, sq_error FROM quality "
                    "WHERE namespace=? AND model=?", key).fetchall():
                sample = q("SELECT score, label FROM reservoir WHERE namespace=? AND model=? AND revision=? "
                           "ORDER BY slot", (*key, revision)).fetchall()
                quality[revision] = Quality(task, threshold, joined, tp, fp, fn, tn, abs_error, sq_error,
                                            [(float(s), int(y)) for s, y in sample])
            store.restore(
                [(_s(i), r, v, at) for kind, i, r, v, at in rows if kind == "p"],
                [(_s(i), v, at) for kind, i, _r, v, at in rows if kind == "l"],
                [_s(i) for (i,) in q("SELECT id FROM joined WHERE namespace=? AND model=? ORDER BY rowid", key)],
                quality, {"expired": expired, "evicted": evicted, "duplicate": duplicate},
            )
            out[key] = ((task, threshold, ttl), store)
        return out

    # ------------------------------------------------------------------------------------------- write
    def save(self, key: tuple[str, str], settings: Settings, store: JoinStore, *, durable: bool = False) -> None:
        """Write the store's journalled changes in one transaction; on success they leave the journal.
        StateError when the write failed (the changes stay journalled for the next save)."""
        assert store.changes is not None, "a store saved here is journalled"
        changes = list(store.changes)
        written = {r: list(q.written or []) for r, q in store.quality.items()}
        # ("rewrite",): an earlier failed save gave up its journal, so the store is written whole from memory.
        whole = len(changes) > _journal_bound(store) or ("rewrite",) in changes
        try:
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if whole:
                    self._delete(key)
                    self._write_all(key, store)
                else:
                    self._apply(key, store, changes, written)
                self._write_settings(key, settings, store)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.failures += 1
            if whole:  # keep the journal bounded: the next save rewrites the store from memory
                del store.changes[:]
                store.changes.append(("rewrite",))
                for q in store.quality.values():
                    q.written = []
            raise StateError(f"the ground-truth state could not be written to {self.path.name} "
                             f"({type(exc).__name__}: {exc})") from None
        del store.changes[:len(changes)]
        for revision, slots in written.items():
            kept = store.quality.get(revision)
            if kept is not None and kept.written is not None:
                del kept.written[:len(slots)]

    def forget(self, key: tuple[str, str]) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self._delete(key)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.failures += 1
            log.warning("could not delete %s/%s from %s (%s)", *key, self.path.name, type(exc).__name__)
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def _delete(self, key: tuple[str, str]) -> None:
        for table in _TABLES:
            self.db.execute(f"DELETE FROM {table} WHERE namespace=? AND model=?", key)  # noqa: S608 (fixed names)

    def _write_settings(self, key: tuple[str, str], settings: Settings, store: JoinStore) -> None:
        d = store.dropped
        self.db.execute(
            "INSERT INTO stores VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (namespace, model) DO UPDATE SET "
            "task=excluded.task, threshold=excluded.threshold, ttl=excluded.ttl, expired=excluded.expired, "
            "evicted=excluded.evicted, duplicate=excluded.duplicate",
            (*key, *settings, d["expired"], d["evicted"], d["duplicate"]))

    def _write_quality(self, key: tuple[str, str], revision: str, q: Quality, slots: list[int]) -> None:
        self.db.execute("INSERT OR REPLACE INTO quality VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (*key, revision, q.joined, q.tp, q.fp, q.fn, q.tn, q.abs_error, q.sq_error))
        self.db.executemany("INSERT OR REPLACE INTO reservoir VALUES (?,?,?,?,?,?)",
                            [(*key, revision, j, *q.reservoir[j]) for j in dict.fromkeys(slots)])

    def _write_all(self, key: tuple[str, str], store: JoinStore) -> None:
        self.db.executemany("INSERT INTO pending VALUES (?,?,?,?,?,?,?)",
                            [(*key, "p", _b(i), p.revision, p.value, p.at) for i, p in store.predictions.items()])
        self.db.executemany("INSERT INTO pending VALUES (?,?,?,?,?,?,?)",
                            [(*key, "l", _b(i), None, v, at) for i, (v, at) in store.labels.items()])
        self.db.executemany("INSERT INTO joined VALUES (?,?,?)", [(*key, _b(i)) for i in store.joined_ids])
        for revision, q in store.quality.items():
            self._write_quality(key, revision, q, list(range(len(q.reservoir))))

    def _apply(self, key: tuple[str, str], store: JoinStore, changes: list[tuple[object, ...]],
               written: dict[str, list[int]]) -> None:
        x = self.db.execute
        dirty: set[str] = set()
        for change in changes:
            op = change[0]
            if op == "prediction":
                _, i, revision, value, at = change
                x("INSERT OR REPLACE INTO pending VALUES (?,?,?,?,?,?,?)", (*key, "p", _b(i), revision, value, at))
            elif op == "label":
                _, i, value, at = change
                x("INSERT OR REPLACE INTO pending VALUES (?,?,?,?,?,?,?)", (*key, "l", _b(i), None, value, at))
            elif op in ("-prediction", "-label"):
                x("DELETE FROM pending WHERE namespace=? AND model=? AND kind=? AND id=?",
                  (*key, "p" if op == "-prediction" else "l", _b(change[1])))
            elif op == "joined":
                x("INSERT OR REPLACE INTO joined VALUES (?,?,?)", (*key, _b(change[1])))
            elif op == "-joined":
                x("DELETE FROM joined WHERE namespace=? AND model=? AND id=?", (*key, _b(change[1])))
            elif op == "quality":
                dirty.add(str(change[1]))
            elif op == "-quality":
                dirty.discard(str(change[1]))
                x("DELETE FROM quality WHERE namespace=? AND model=? AND revision=?", (*key, change[1]))
                x("DELETE FROM reservoir WHERE namespace=? AND model=? AND revision=?", (*key, change[1]))
        for revision in dirty:
            q = store.quality.get(revision)
            if q is not None:
                self._write_quality(key, revision, q, written.get(revision, []))


def _journal_bound(store: JoinStore) -> int:
    # Beyond this many unsaved changes (saves failing for a while), rewriting the store whole is cheaper than
    # the journal and keeps memory bounded by the store's own bounds.
    return 8 * store.max_pending + 1000
