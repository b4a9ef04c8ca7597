"""The store on a real SQLite file: round trips, the append-only event log, what a restart reads back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dumont.store.sqlite import PairRow, Store


def test_pairs_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    host = {"provider": "vast", "instance_id": "7", "ssh_host": "127.0.0.1", "ssh_port": 22, "ssh_user": "root",
            "role": "gpu", "alias": "vast-7"}
    store.save_pair(PairRow("main", "syncing", 3, host, None, 0))
    store.close()
    reopened = Store(tmp_path / "state.db")
    row = reopened.get_pair("main")
    assert row is not None and row.state == "syncing" and row.epoch == 3 and row.primary == host
    assert row.standby is None and [p.name for p in reopened.pairs()] == ["main"]


def test_the_event_log_is_append_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    first = store.add_event("main", "failover", "failing over: the GPU failed 3 checks", {"epoch": 2})
    second = store.add_event(None, "controller", "started")
    assert [e.id for e in store.events()] == [first, second]
    assert store.events(after=first)[0].reason == "started"
    assert store.events(pair="main")[0].data == {"epoch": 2}
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._db.execute("UPDATE events SET reason = 'rewritten'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._db.execute("DELETE FROM events")


def test_intents_are_consumed_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    one, two = store.add_intent("main", "sync"), store.add_intent("main", "failover")
    assert [i.kind for i in store.pending_intents("main")] == ["sync", "failover"]
    store.consume_intent(one, "accepted")
    store.consume_intent(one, "twice")
    assert [i.id for i in store.pending_intents("main")] == [two]
    consumed = store.intent(one)
    assert consumed is not None and consumed.outcome == "accepted"


def test_operations_track_progress_and_what_a_restart_resumes(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    op = store.start_operation("main", "recovery", "searching")
    store.update_operation(op, step="renting", data={"instance_id": "42"})
    store.update_operation(op, data={"offer": "9"})
    opened = Store(tmp_path / "state.db").open_operation("main")
    assert opened is not None and opened.step == "renting" and opened.data == {"instance_id": "42", "offer": "9"}
    store.finish_operation(op, succeeded=False, error="every offer failed")
    assert store.open_operation("main") is None
    latest = store.latest_operation("main", "recovery")
    assert latest is not None and latest.succeeded is False and latest.error == "every offer failed"
    assert store.operations_since("main", "recovery", 0) == 1


def test_hosts_are_remembered_until_released(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.record_host("vast", "42", "main", "gpu", "rented for recovery")
    store.record_host("gcp", "standby-main", "main", "cpu")
    store.release_host("vast", "42", "destroyed after failback")
    assert store.held_hosts("main") == [("gcp", "standby-main", "cpu")]


def test_passes(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    report = {"epoch": 1, "seq": 5, "snapshot_seq": 5, "started_at": 10.0, "finished_at": 11.5,
              "files_scanned": 3, "bytes_scanned": 100, "bytes_sent": 40, "copied": True, "deferred": ["a"]}
    store.record_pass("main", report)
    last = store.last_pass("main")
    assert last is not None and last["seq"] == 5 and last["finished_at"] == 11.5 and last["copied"] == 1
