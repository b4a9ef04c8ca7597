"""The controller's state in a SQL database: pairs, operations, intents, passes, the hosts it rented, the events.

One class holds every query; :mod:`dumont.store.sqlite` and :mod:`dumont.store.postgres` only connect, run a
transaction and say how their SQL differs (placeholders, the larger of two values). Queries are written with
``?`` placeholders and portable SQL (``ON CONFLICT``, ``RETURNING``), which SQLite 3.35+ and PostgreSQL share.

The event log is append-only (the database refuses an UPDATE or DELETE of an event). A restarted controller
reads pairs, unfinished operations and pending intents back from here and carries on.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from dumont.errors import EpochConflict, StoreUnavailable
from dumont.store.migrations import LATEST, MIGRATIONS, Dialect
from dumont.store.rows import (
    OP_SELECT,
    PASS_KEYS,
    EventRow,
    IntentRow,
    LeaseRow,
    OperationRow,
    PairRow,
    operation_row,
    pair_row,
    to_json,
)


class SqlStore:
    """Every query of the store; a subclass connects and runs transactions."""

    dialect: ClassVar[Dialect]
    greatest: ClassVar[str]  # the SQL function giving the larger of two values
    where: str  # the database, as messages name it (never with a password)

    def __init__(self) -> None:
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ what a subclass provides

    def _transaction(self) -> AbstractContextManager[Any]:
        """A transaction that commits when the block ends and rolls back when it raises."""
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        """The query in this database's placeholder style."""
        return sql

    def _run_script(self, script: str) -> None:
        """Run a migration's statements."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the database."""
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._transaction() as db:
            return list(db.execute(self._sql(sql), args).fetchall())

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one statement in a transaction of its own; the rows it changed."""
        with self._transaction() as db:
            return int(db.execute(self._sql(sql), args).rowcount)

    def _insert(self, sql: str, args: tuple[Any, ...]) -> int:
        """Run an INSERT ... RETURNING id; the new row's id."""
        with self._transaction() as db:
            return int(db.execute(self._sql(sql + " RETURNING id"), args).fetchone()[0])

    def _open(self) -> None:
        """Migrate a freshly connected database; a refused one is left as it was, with no connection open."""
        try:
            self.migrate()
        except BaseException:
            self.close()
            raise

    def migrate(self) -> int:
        """Bring the schema up to date (each migration once, in order); the version it is at now.

        :raises StoreUnavailable: the database was made by a newer Dumont (its schema is ahead of this one).
        """
        self._run_script("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        rows = self._rows("SELECT value FROM meta WHERE key = 'schema_version'")
        current = int(rows[0][0]) if rows else 0
        if current > LATEST:
            raise StoreUnavailable(f"the state database {self.where} has schema version {current}, newer than this "
                                   f"Dumont's {LATEST}", hint="upgrade dumont on this machine, or point it at "
                                   "another database: nothing was changed")
        for migration in MIGRATIONS:
            if migration.version > current:
                # The step and its version in one transaction: a step cut off half-way is run again whole.
                step = migration.script(self.dialect).rstrip().rstrip(";")
                self._run_script(f"{step};\nINSERT INTO meta VALUES ('schema_version', "
                                 f"'{migration.version}') ON CONFLICT (key) DO UPDATE SET value = excluded.value;")
                current = migration.version
        return current

    # ------------------------------------------------------------------ pairs

    def get_pair(self, name: str) -> PairRow | None:
        """The pair called ``name``, if the controller has seen it."""
        rows = self._rows("SELECT name, state, epoch, primary_host, standby_host, updated_at FROM pairs WHERE name=?",
                          (name,))
        return pair_row(rows[0]) if rows else None

    def pairs(self) -> list[PairRow]:
        """Every pair, by name."""
        return [pair_row(r) for r in self._rows(
            "SELECT name, state, epoch, primary_host, standby_host, updated_at FROM pairs ORDER BY name")]

    def save_pair(self, row: PairRow) -> None:
        """Insert or update a pair's state; its epoch never goes back (only :meth:`advance_epoch` moves it on)."""
        self._write("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "  # noqa: S608 - a class constant
                    f"state=excluded.state, epoch={self.greatest}(pairs.epoch, excluded.epoch), "
                    "primary_host=excluded.primary_host, standby_host=excluded.standby_host, "
                    "updated_at=excluded.updated_at",
                    (row.name, row.state, row.epoch, to_json(row.primary), to_json(row.standby), time.time()))

    def advance_epoch(self, pair: str, expected: int, *, to: int | None = None) -> int:
        """Take the pair's next epoch (or ``to``, when it is higher: a host already there), compare-and-set: only
        if it is still ``expected``; return the new one.

        :raises EpochConflict: the epoch is not ``expected`` (another writer took it): nothing was changed.
        """
        new = max(expected + 1, to or 0)
        with self._transaction() as db:
            moved = db.execute(self._sql("UPDATE pairs SET epoch = ?, updated_at = ? WHERE name = ? AND epoch = ?"),
                               (new, time.time(), pair, expected)).rowcount
            if moved != 1:
                row = db.execute(self._sql("SELECT epoch FROM pairs WHERE name = ?"), (pair,)).fetchone()
                raise EpochConflict(f"pair {pair}: the epoch is {row[0] if row else 'unknown'}, not {expected}: "
                                    "another controller moved it on",
                                    hint="only one controller may act on a pair; stop the other one")
        return new

    # ------------------------------------------------------------------ events

    def add_event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any] | None = None, *,
                  controller: str = "") -> int:
        """Append an event (``controller``: the one that wrote it); return its id."""
        return self._insert("INSERT INTO events (at, pair, kind, reason, data, controller) VALUES (?, ?, ?, ?, ?, ?)",
                            (time.time(), pair, kind, reason, json.dumps(data or {}, default=str), controller))

    def events(self, *, after: int = 0, pair: str | None = None, limit: int = 500,
               newest: bool = False) -> list[EventRow]:
        """Events with an id above ``after``, oldest first: the first ``limit`` of them, or the last (``newest``)."""
        sql = "SELECT id, at, pair, kind, reason, data, controller FROM events WHERE id > ?"
        args: tuple[Any, ...] = (after,)
        if pair is not None:
            sql, args = sql + " AND pair = ?", (*args, pair)
        rows = self._rows(sql + f" ORDER BY id {'DESC' if newest else ''} LIMIT ?", (*args, limit))
        found = [EventRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]
        return found[::-1] if newest else found

    def last_event_id(self) -> int:
        """The newest event's id (0 when the log is empty)."""
        return int(self._rows("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    # ------------------------------------------------------------------ leases

    def lease(self, pair: str) -> LeaseRow | None:
        """Who owns ``pair`` (None: nobody ever has)."""
        rows = self._rows("SELECT pair, owner, version, renewed_at FROM leases WHERE pair = ?", (pair,))
        return LeaseRow(rows[0][0], rows[0][1], int(rows[0][2]), float(rows[0][3])) if rows else None

    def leases(self) -> list[LeaseRow]:
        """Every pair's lease, by pair."""
        return [LeaseRow(r[0], r[1], int(r[2]), float(r[3])) for r in self._rows(
            "SELECT pair, owner, version, renewed_at FROM leases ORDER BY pair")]

    def claim_lease(self, pair: str, owner: str, expected: int | None) -> int | None:
        """Make ``owner`` the owner of ``pair`` (a renewal when it already is), compare-and-set: only if the
        lease is still at version ``expected`` (None: only if there is no lease yet). The new version, or None
        when another controller moved it first (nothing was changed)."""
        if expected is None:
            with self._transaction() as db:
                taken = db.execute(self._sql("INSERT INTO leases VALUES (?, ?, 1, ?) ON CONFLICT (pair) DO NOTHING"),
                                   (pair, owner, time.time())).rowcount
            return 1 if taken == 1 else None
        moved = self._write("UPDATE leases SET owner = ?, version = ?, renewed_at = ? WHERE pair = ? AND version = ?",
                            (owner, expected + 1, time.time(), pair, expected))
        return expected + 1 if moved == 1 else None

    def release_lease(self, pair: str, owner: str, expected: int) -> bool:
        """Give ``pair`` up (another controller may take it at once) if ``owner`` still holds it at ``expected``."""
        return self._write("UPDATE leases SET owner = '', version = ?, renewed_at = ? "
                           "WHERE pair = ? AND owner = ? AND version = ?",
                           (expected + 1, time.time(), pair, owner, expected)) == 1

    # ------------------------------------------------------------------ intents

    def add_intent(self, pair: str, kind: str) -> int:
        """Record an operator's request; return its id."""
        return self._insert("INSERT INTO intents (pair, kind, created_at) VALUES (?, ?, ?)",
                            (pair, kind, time.time()))

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
        self._write("UPDATE intents SET consumed_at = ?, outcome = ? WHERE id = ? AND consumed_at IS NULL",
                    (time.time(), outcome, intent_id))

    # ------------------------------------------------------------------ operations

    def start_operation(self, pair: str, kind: str, step: str, data: dict[str, Any] | None = None) -> int:
        """Record the start of a long operation; return its id."""
        return self._insert("INSERT INTO operations (pair, kind, step, started_at, data) VALUES (?, ?, ?, ?, ?)",
                            (pair, kind, step, time.time(), json.dumps(data or {}, default=str)))

    def update_operation(self, op_id: int, *, step: str | None = None, data: dict[str, Any] | None = None) -> None:
        """Record progress (a new step, and/or data merged into the operation's data)."""
        with self._transaction() as db:
            current = db.execute(self._sql("SELECT step, data FROM operations WHERE id = ?"), (op_id,)).fetchone()
            merged = {**json.loads(current[1]), **(data or {})}
            db.execute(self._sql("UPDATE operations SET step = ?, data = ? WHERE id = ?"),
                       (step or current[0], json.dumps(merged, default=str), op_id))

    def finish_operation(self, op_id: int, *, succeeded: bool, error: str | None = None) -> None:
        """Record how an operation ended."""
        self._write("UPDATE operations SET finished_at = ?, succeeded = ?, error = ? WHERE id = ?",
                    (time.time(), int(succeeded), error, op_id))

    def operation(self, op_id: int) -> OperationRow | None:
        """One operation."""
        rows = self._rows(f"{OP_SELECT} WHERE id = ?", (op_id,))
        return operation_row(rows[0]) if rows else None

    def open_operation(self, pair: str) -> OperationRow | None:
        """The pair's unfinished operation, if any (what a restarted controller resumes)."""
        rows = self._rows(f"{OP_SELECT} WHERE pair = ? AND finished_at IS NULL ORDER BY id DESC LIMIT 1", (pair,))
        return operation_row(rows[0]) if rows else None

    def latest_operation(self, pair: str, kind: str) -> OperationRow | None:
        """The pair's newest operation of ``kind``."""
        rows = self._rows(f"{OP_SELECT} WHERE pair = ? AND kind = ? ORDER BY id DESC LIMIT 1", (pair, kind))
        return operation_row(rows[0]) if rows else None

    def operations_since(self, pair: str, kind: str, since: float, *, failed: bool = False) -> int:
        """How many operations of ``kind`` started after ``since`` (``failed``: only those that ended failing)."""
        sql = "SELECT COUNT(*) FROM operations WHERE pair = ? AND kind = ? AND started_at > ?"
        return int(self._rows(sql + (" AND succeeded = 0" if failed else ""), (pair, kind, since))[0][0])

    # ------------------------------------------------------------------ passes and hosts

    def record_pass(self, pair: str, report: dict[str, Any]) -> None:
        """Remember a completed replication pass (a pass recorded twice keeps its last report)."""
        self._write(
            "INSERT INTO passes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pair, epoch, seq) DO UPDATE SET "
            "snapshot_seq=excluded.snapshot_seq, started_at=excluded.started_at, finished_at=excluded.finished_at, "
            "files=excluded.files, bytes=excluded.bytes, bytes_sent=excluded.bytes_sent, copied=excluded.copied, "
            "deferred=excluded.deferred", (
                pair, report["epoch"], report["seq"], report.get("snapshot_seq"), report["started_at"],
                report["finished_at"], report["files_scanned"], report["bytes_scanned"], report["bytes_sent"],
                int(report["copied"]), len(report.get("deferred", []))))

    def last_pass(self, pair: str) -> dict[str, Any] | None:
        """The newest completed pass of the pair."""
        rows = self._rows(f"{_SELECT_PASSES} WHERE pair = ? ORDER BY finished_at DESC LIMIT 1", (pair,))
        return dict(zip(PASS_KEYS, rows[0], strict=True)) if rows else None

    def passes_since(self, pair: str, finished_after: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Completed passes of the pair that finished after ``finished_after``, oldest first (for metrics)."""
        rows = self._rows(f"{_SELECT_PASSES} WHERE pair = ? AND finished_at > ? ORDER BY finished_at LIMIT ?",
                          (pair, finished_after, limit))
        return [dict(zip(PASS_KEYS, row, strict=True)) for row in rows]

    def recent_passes(self, pair: str, limit: int = 200) -> list[dict[str, Any]]:
        """The pair's newest passes, oldest first."""
        rows = self._rows(f"{_SELECT_PASSES} WHERE pair = ? ORDER BY finished_at DESC LIMIT ?", (pair, limit))
        return [dict(zip(PASS_KEYS, row, strict=True)) for row in reversed(rows)]

    def record_host(self, provider: str, instance_id: str, pair: str, role: str, note: str = "") -> None:
        """Remember an instance the controller rented or adopted (so none is ever forgotten and left running)."""
        self._write("INSERT INTO hosts (provider, instance_id, pair, role, created_at, note) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, instance_id) DO NOTHING",
                    (provider, instance_id, pair, role, time.time(), note))

    def release_host(self, provider: str, instance_id: str, note: str = "") -> None:
        """Record that an instance was destroyed (or handed back)."""
        self._write("UPDATE hosts SET released_at = ?, note = ? WHERE provider = ? AND instance_id = ?",
                    (time.time(), note, provider, instance_id))

    def held_hosts(self, pair: str) -> list[tuple[str, str, str]]:
        """(provider, instance_id, role) of every instance of the pair not yet released."""
        return [(r[0], r[1], r[2]) for r in self._rows(
            "SELECT provider, instance_id, role FROM hosts WHERE pair = ? AND released_at IS NULL "
            "ORDER BY created_at", (pair,))]


_SELECT_PASSES = ("SELECT epoch, seq, snapshot_seq, started_at, finished_at, files, bytes, bytes_sent, copied "
                  "FROM passes")
