"""The store contract, on a real SQLite file and a real PostgreSQL database: round trips, the append-only event
log, what a restart reads back, migrations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dumont.errors import StoreUnavailable
from dumont.store.base import SqlStore
from dumont.store.migrations import LATEST
from dumont.store.rows import PairRow
from dumont.store.sqlite import Store


def test_pairs_round_trip_and_survive_reopening(open_store: Callable[[], SqlStore]) -> None:
    store = open_store()
    host = {"provider": "vast", "instance_id": "7", "ssh_host": "127.0.0.1", "ssh_port": 22, "ssh_user": "root",
            "role": "gpu", "alias": "vast-7"}
    store.save_pair(PairRow("main", "syncing", 3, host, None, 0))
    store.close()
    reopened = open_store()
    row = reopened.get_pair("main")
    assert row is not None and row.state == "syncing" and row.epoch == 3 and row.primary == host
    assert row.standby is None and [p.name for p in reopened.pairs()] == ["main"]


def test_the_event_log_is_append_only(store: SqlStore) -> None:
    first = store.add_event("main", "failover", "failing over: the GPU failed 3 checks", {"epoch": 2})
    second = store.add_event(None, "controller", "started")
    assert [e.id for e in store.events()] == [first, second]
    assert store.events(after=first)[0].reason == "started"
    assert store.events(pair="main")[0].data == {"epoch": 2}
    for statement in ("UPDATE events SET reason = 'rewritten'", "DELETE FROM events"):
        with pytest.raises(Exception, match="append-only"):  # the database's own refusal, whichever it is
            store._write(statement)
    assert [e.reason for e in store.events()] == ["failing over: the GPU failed 3 checks", "started"]


def test_intents_are_consumed_once(store: SqlStore) -> None:
    one, two = store.add_intent("main", "sync"), store.add_intent("main", "failover")
    assert [i.kind for i in store.pending_intents("main")] == ["sync", "failover"]
    store.consume_intent(one, "accepted")
    store.consume_intent(one, "twice")
    assert [i.id for i in store.pending_intents("main")] == [two]
    consumed = store.intent(one)
    assert consumed is not None and consumed.outcome == "accepted"


def test_operations_track_progress_and_what_a_restart_resumes(open_store: Callable[[], SqlStore]) -> None:
    store = open_store()
    op = store.start_operation("main", "recovery", "searching")
    store.update_operation(op, step="renting", data={"instance_id": "42"})
    store.update_operation(op, data={"offer": "9"})
    opened = open_store().open_operation("main")
    assert opened is not None and opened.step == "renting" and opened.data == {"instance_id": "42", "offer": "9"}
    store.finish_operation(op, succeeded=False, error="every offer failed")
    assert store.open_operation("main") is None
    latest = store.latest_operation("main", "recovery")
    assert latest is not None and latest.succeeded is False and latest.error == "every offer failed"
    assert store.operations_since("main", "recovery", 0) == 1
    assert store.operations_since("main", "recovery", 0, failed=True) == 1
    fine = store.start_operation("main", "recovery", "searching")
    store.finish_operation(fine, succeeded=True)
    running = store.start_operation("main", "recovery", "searching")
    assert store.operations_since("main", "recovery", 0) == 3
    assert store.operations_since("main", "recovery", 0, failed=True) == 1, "only the one that failed"
    store.finish_operation(running, succeeded=True)


def test_hosts_are_remembered_until_released(store: SqlStore) -> None:
    store.record_host("vast", "42", "main", "gpu", "rented for recovery")
    store.record_host("gcp", "standby-main", "main", "cpu")
    store.release_host("vast", "42", "destroyed after failback")
    assert store.held_hosts("main") == [("gcp", "standby-main", "cpu")]


def test_passes(store: SqlStore) -> None:
    report = {"epoch": 1, "seq": 5, "snapshot_seq": 5, "started_at": 10.0, "finished_at": 11.5,
              "files_scanned": 3, "bytes_scanned": 100, "bytes_sent": 40, "copied": True, "deferred": ["a"]}
    store.record_pass("main", report)
    last = store.last_pass("main")
    assert last is not None and last["seq"] == 5 and last["finished_at"] == 11.5 and last["copied"] == 1
    store.record_pass("main", {**report, "bytes_sent": 50})  # the same pass again: its last report stands
    assert [p["bytes_sent"] for p in store.recent_passes("main")] == [50]


def test_times_keep_their_fractions_of_a_second(store: SqlStore) -> None:
    store.record_pass("main", {"epoch": 1, "seq": 1, "started_at": 1764700000.25, "finished_at": 1764700001.75,
                               "files_scanned": 0, "bytes_scanned": 0, "bytes_sent": 0, "copied": False})
    assert store.last_pass("main")["finished_at"] == 1764700001.75  # type: ignore[index]


def test_migrating_again_changes_nothing(open_store: Callable[[], SqlStore]) -> None:
    store = open_store()
    store.add_event(None, "controller", "started")
    assert store.migrate() == LATEST
    assert open_store().migrate() == LATEST and [e.reason for e in store.events()] == ["started"]


def test_a_database_from_a_newer_dumont_is_refused_untouched(open_store: Callable[[], SqlStore]) -> None:
    store = open_store()
    store._write("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(LATEST + 1),))
    with pytest.raises(StoreUnavailable, match=f"schema version {LATEST + 1}, newer than this Dumont"):
        open_store()
    assert store._rows("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(LATEST + 1),)]


def test_a_sqlite_file_at_version_1_is_migrated_and_keeps_its_events(tmp_path: Path) -> None:
    """The first schema was written with CREATE IF NOT EXISTS and a meta row (migration 1 exactly): opening it
    applies the later migrations, and its events read back, written by no named controller."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('schema_version', '1');"
                     "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, pair TEXT, "
                     "kind TEXT NOT NULL, reason TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');"
                     "INSERT INTO events (at, pair, kind, reason) VALUES (1.5, 'main', 'failover', 'kept');")
    db.close()
    store = Store(tmp_path / "old.db")
    assert [(e.reason, e.controller) for e in store.events()] == [("kept", "")] and store.migrate() == LATEST
    assert store._rows("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(LATEST),)]


def test_a_lease_changes_hands_only_by_compare_and_set(open_store: Callable[[], SqlStore]) -> None:
    """Two controllers on one database: the first claim wins, a renewal or a take names the version it saw, a
    stale version changes nothing, and a release lets the next claimant in."""
    a, b = open_store(), open_store()
    assert a.lease("main") is None
    assert a.claim_lease("main", "a", None) == 1
    assert b.claim_lease("main", "b", None) is None, "the row exists: a second first claim fails"
    assert a.claim_lease("main", "a", 1) == 2  # a renewal
    assert b.claim_lease("main", "b", 1) is None, "a version already moved on changes nothing"
    assert b.claim_lease("main", "b", 2) == 3  # b takes it (it judged it expired)
    assert not a.release_lease("main", "a", 2), "a no longer holds it"
    lease = a.lease("main")
    assert lease is not None and (lease.owner, lease.version) == ("b", 3)
    assert b.release_lease("main", "b", 3)
    assert [(r.pair, r.owner, r.version) for r in a.leases()] == [("main", "", 4)]
    assert a.claim_lease("main", "a", 4) == 5


def test_events_name_the_controller_that_wrote_them(store: SqlStore) -> None:
    store.add_event("main", "lease_taken", "controller vm-1 acts on the pair now", controller="vm-1")
    store.add_event(None, "controller_started", "started")
    assert [(e.kind, e.controller) for e in store.events()] == [("lease_taken", "vm-1"), ("controller_started", "")]
