"""The controller's state in SQLite: pairs, operations, intents, passes, the hosts it rented, and the event log.

The event log is append-only (nothing updates or deletes an event). A restarted controller reads pairs,
unfinished operations and pending intents back from here and carries on. Calls are short and local, so they run
on the loop's thread; WAL mode keeps readers (the API) from blocking the writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dumont.errors import EpochConflict

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, epoch INTEGER NOT NULL,
    primary_host TEXT, standby_host TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, pair TEXT, kind TEXT NOT NULL,
    reason TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pair TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL,
    consumed_at REAL, outcome TEXT);
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pair TEXT NOT NULL, kind TEXT NOT NULL, step TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, succeeded INTEGER, error TEXT, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS passes (
    pair TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, snapshot_seq INTEGER,
    started_at REAL NOT NULL, finished_at REAL NOT NULL, files INTEGER NOT NULL, bytes INTEGER NOT NULL,
    bytes_sent INTEGER NOT NULL, copied INTEGER NOT NULL, deferred INTEGER NOT NULL,
    PRIMARY KEY (pair, epoch, seq));
CREATE TABLE IF NOT EXISTS hosts (
    provider TEXT NOT NULL, instance_id TEXT NOT NULL, pair TEXT NOT NULL, role TEXT NOT NULL,
    created_at REAL NOT NULL, released_at REAL, note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (provider, instance_id));
CREATE TRIGGER IF NOT EXISTS events_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""


@dataclass(frozen=True)
class PairRow:
    """A pair's durable state; hosts are stored as JSON objects (HostRef.as_dict)."""

    name: str
    state: str
    epoch: int
    primary: dict[str, Any] | None
    standby: dict[str, Any] | None
    updated_at: float


@dataclass(frozen=True)
class EventRow:
    """One entry of the append-only event log."""

    id: int
    at: float
    pair: str | None
    kind: str
    reason: str
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"id": self.id, "at": self.at, "pair": self.pair, "kind": self.kind, "reason": self.reason,
                "data": self.data}


@dataclass(frozen=True)
class IntentRow:
    """An operator's request waiting for (or handled by) the loop."""

    id: int
    pair: str
    kind: str
    created_at: float
    consumed_at: float | None
    outcome: str | None


@dataclass(frozen=True)
class OperationRow:
    """A long operation and its progress."""

    id: int
    pair: str
    kind: str
    step: str
    started_at: float
    finished_at: float | None
    succeeded: bool | None
    error: str | None
    data: dict[str, Any]


class Store:
    """The SQLite database at ``path`` (created with the current schema if new)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._db.executescript(SCHEMA)  # idempotent; executescript manages its own transaction
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ pairs

    def get_pair(self, name: str) -> PairRow | None:
        """The pair called ``name``, if the controller has seen it."""
        rows = self._rows("SELECT name, state, epoch, primary_host, standby_host, updated_at FROM pairs WHERE name=?",
                          (name,))
        return _pair(rows[0]) if rows else None

    def pairs(self) -> list[PairRow]:
        """Every pair, by name."""
        return [_pair(r) for r in self._rows(
            "SELECT name, state, epoch, primary_host, standby_host, updated_at FROM pairs ORDER BY name")]

    def save_pair(self, row: PairRow) -> None:
        """Insert or update a pair's state; its epoch never goes back (only :meth:`advance_epoch` moves it on)."""
        with self._tx() as db:
            db.execute("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "state=excluded.state, epoch=MAX(epoch, excluded.epoch), primary_host=excluded.primary_host, "
                       "standby_host=excluded.standby_host, updated_at=excluded.updated_at",
                       (row.name, row.state, row.epoch, _json(row.primary), _json(row.standby), time.time()))

    def advance_epoch(self, pair: str, expected: int, *, to: int | None = None) -> int:
        """Take the pair's next epoch (or ``to``, when it is higher: a host already there), compare-and-set: only
        if it is still ``expected``; return the new one.

        :raises EpochConflict: the epoch is not ``expected`` (another writer took it): nothing was changed.
        """
        new = max(expected + 1, to or 0)
        with self._tx() as db:
            moved = db.execute("UPDATE pairs SET epoch = ?, updated_at = ? WHERE name = ? AND epoch = ?",
                               (new, time.time(), pair, expected)).rowcount
            if moved != 1:
                row = db.execute("SELECT epoch FROM pairs WHERE name = ?", (pair,)).fetchone()
                raise EpochConflict(f"pair {pair}: the epoch is {row[0] if row else 'unknown'}, not {expected}: "
                                    "another controller moved it on",
                                    hint="only one controller may act on a pair; stop the other one")
        return new

    # ------------------------------------------------------------------ events

    def add_event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any] | None = None) -> int:
        """Append an event; return its id."""
        with self._tx() as db:
            cursor = db.execute("INSERT INTO events (at, pair, kind, reason, data) VALUES (?, ?, ?, ?, ?)",
                                (time.time(), pair, kind, reason, json.dumps(data or {}, default=str)))
            return int(cursor.lastrowid or 0)

    def events(self, *, after: int = 0, pair: str | None = None, limit: int = 500,
               newest: bool = False) -> list[EventRow]:
        """Events with an id above ``after``, oldest first: the first ``limit`` of them, or the last (``newest``)."""
        sql = "SELECT id, at, pair, kind, reason, data FROM events WHERE id > ?"
        args: tuple[Any, ...] = (after,)
        if pair is not None:
            sql, args = sql + " AND pair = ?", (*args, pair)
        rows = self._rows(sql + f" ORDER BY id {'DESC' if newest else ''} LIMIT ?", (*args, limit))
        found = [EventRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]
        return found[::-1] if newest else found

    def last_event_id(self) -> int:
        """The newest event's id (0 when the log is empty)."""
        return int(self._rows("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    # ------------------------------------------------------------------ intents

    def add_intent(self, pair: str, kind: str) -> int:
        """Record an operator's request; return its id."""
        with self._tx() as db:
            cursor = db.execute("INSERT INTO intents (pair, kind, created_at) VALUES (?, ?, ?)",
                                (pair, kind, time.time()))
            return int(cursor.lastrowid or 0)

    def pending_intents(self, pair: str) -> list[IntentRow]:
        """Requests not yet handled, oldest first."""
        return [IntentRow(*r) for r in self._rows(
            "SELECT id, pair, kind, created_at, consumed_at, outcome FROM intents "
            "WHERE pair = ? AND consumed_at IS NULL ORDER BY id", (pair,))]

    def intent(self, intent_id: int) -> IntentRow | None:
        """One request, handled or not."""
        rows = self._rows("SELECT id, pair, kind, created_at, consumed_at, outcome FROM intents WHERE id = ?",
                          (intent_id,))
        return IntentRow(*rows[0]) if rows else None

    def consume_intent(self, intent_id: int, outcome: str) -> None:
        """Mark a request handled."""
        with self._tx() as db:
            db.execute("UPDATE intents SET consumed_at = ?, outcome = ? WHERE id = ? AND consumed_at IS NULL",
                       (time.time(), outcome, intent_id))

    # ------------------------------------------------------------------ operations

    def start_operation(self, pair: str, kind: str, step: str, data: dict[str, Any] | None = None) -> int:
        """Record the start of a long operation; return its id."""
        with self._tx() as db:
            cursor = db.execute("INSERT INTO operations (pair, kind, step, started_at, data) VALUES (?, ?, ?, ?, ?)",
                                (pair, kind, step, time.time(), json.dumps(data or {}, default=str)))
            return int(cursor.lastrowid or 0)

    def update_operation(self, op_id: int, *, step: str | None = None, data: dict[str, Any] | None = None) -> None:
        """Record progress (a new step, and/or data merged into the operation's data)."""
        with self._tx() as db:
            current = db.execute("SELECT step, data FROM operations WHERE id = ?", (op_id,)).fetchone()
            merged = {**json.loads(current[1]), **(data or {})}
            db.execute("UPDATE operations SET step = ?, data = ? WHERE id = ?",
                       (step or current[0], json.dumps(merged, default=str), op_id))

    def finish_operation(self, op_id: int, *, succeeded: bool, error: str | None = None) -> None:
        """Record how an operation ended."""
        with self._tx() as db:
            db.execute("UPDATE operations SET finished_at = ?, succeeded = ?, error = ? WHERE id = ?",
                       (time.time(), int(succeeded), error, op_id))

    def operation(self, op_id: int) -> OperationRow | None:
        """One operation."""
        rows = self._rows(f"{_OP_SELECT} WHERE id = ?", (op_id,))
        return _operation(rows[0]) if rows else None

    def open_operation(self, pair: str) -> OperationRow | None:
        """The pair's unfinished operation, if any (what a restarted controller resumes)."""
        rows = self._rows(f"{_OP_SELECT} WHERE pair = ? AND finished_at IS NULL ORDER BY id DESC LIMIT 1", (pair,))
        return _operation(rows[0]) if rows else None

    def latest_operation(self, pair: str, kind: str) -> OperationRow | None:
        """The pair's newest operation of ``kind``."""
        rows = self._rows(f"{_OP_SELECT} WHERE pair = ? AND kind = ? ORDER BY id DESC LIMIT 1", (pair, kind))
        return _operation(rows[0]) if rows else None

    def operations_since(self, pair: str, kind: str, since: float) -> int:
        """How many operations of ``kind`` started after ``since``."""
        return int(self._rows("SELECT COUNT(*) FROM operations WHERE pair = ? AND kind = ? AND started_at > ?",
                              (pair, kind, since))[0][0])

    # ------------------------------------------------------------------ passes and hosts

    def record_pass(self, pair: str, report: dict[str, Any]) -> None:
        """Remember a completed replication pass."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO passes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                pair, report["epoch"], report["seq"], report.get("snapshot_seq"), report["started_at"],
                report["finished_at"], report["files_scanned"], report["bytes_scanned"], report["bytes_sent"],
                int(report["copied"]), len(report.get("deferred", []))))

    def last_pass(self, pair: str) -> dict[str, Any] | None:
        """The newest completed pass of the pair."""
        rows = self._rows("SELECT epoch, seq, snapshot_seq, started_at, finished_at, files, bytes, bytes_sent, copied "
                          "FROM passes WHERE pair = ? ORDER BY finished_at DESC LIMIT 1", (pair,))
        return dict(zip(_PASS_KEYS, rows[0], strict=True)) if rows else None

    def passes_since(self, pair: str, finished_after: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Completed passes of the pair that finished after ``finished_after``, oldest first (for metrics)."""
        rows = self._rows("SELECT epoch, seq, snapshot_seq, started_at, finished_at, files, bytes, bytes_sent, copied "
                          "FROM passes WHERE pair = ? AND finished_at > ? ORDER BY finished_at LIMIT ?",
                          (pair, finished_after, limit))
        return [dict(zip(_PASS_KEYS, row, strict=True)) for row in rows]

    def recent_passes(self, pair: str, limit: int = 200) -> list[dict[str, Any]]:
        """The pair's newest passes, oldest first."""
        keys = ("epoch", "seq", "snapshot_seq", "started_at", "finished_at", "files", "bytes", "bytes_sent", "copied")
        rows = self._rows("SELECT epoch, seq, snapshot_seq, started_at, finished_at, files, bytes, bytes_sent, copied "
                          "FROM passes WHERE pair = ? ORDER BY finished_at DESC LIMIT ?", (pair, limit))
        return [dict(zip(keys, row, strict=True)) for row in reversed(rows)]

    def record_host(self, provider: str, instance_id: str, pair: str, role: str, note: str = "") -> None:
        """Remember an instance the controller rented or adopted (so none is ever forgotten and left running)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO hosts (provider, instance_id, pair, role, created_at, note) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (provider, instance_id, pair, role, time.time(), note))

    def release_host(self, provider: str, instance_id: str, note: str = "") -> None:
        """Record that an instance was destroyed (or handed back)."""
        with self._tx() as db:
            db.execute("UPDATE hosts SET released_at = ?, note = ? WHERE provider = ? AND instance_id = ?",
                       (time.time(), note, provider, instance_id))

    def held_hosts(self, pair: str) -> list[tuple[str, str, str]]:
        """(provider, instance_id, role) of every instance of the pair not yet released."""
        return [(r[0], r[1], r[2]) for r in self._rows(
            "SELECT provider, instance_id, role FROM hosts WHERE pair = ? AND released_at IS NULL", (pair,))]


_PASS_KEYS = ("epoch", "seq", "snapshot_seq", "started_at", "finished_at", "files", "bytes", "bytes_sent", "copied")
_OP_SELECT = "SELECT id, pair, kind, step, started_at, finished_at, succeeded, error, data FROM operations"


def _json(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value) if value is not None else None


def _pair(row: tuple[Any, ...]) -> PairRow:
    return PairRow(row[0], row[1], int(row[2]), json.loads(row[3]) if row[3] else None,
                   json.loads(row[4]) if row[4] else None, float(row[5]))


def _operation(row: tuple[Any, ...]) -> OperationRow:
    succeeded = None if row[6] is None else bool(row[6])
    return OperationRow(row[0], row[1], row[2], row[3], row[4], row[5], succeeded, row[7], json.loads(row[8]))
