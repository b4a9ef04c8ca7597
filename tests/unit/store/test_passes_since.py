"""Reading back the passes completed after a moment (what the metrics count at each scrape)."""

from __future__ import annotations

from dumont.store.base import SqlStore


def test_passes_since_returns_later_passes_of_the_pair_oldest_first(store: SqlStore) -> None:
    for seq, finished, pair in ((1, 100.0, "main"), (2, 200.0, "main"), (3, 300.0, "main"), (1, 250.0, "other")):
        store.record_pass(pair, {"epoch": 1, "seq": seq, "snapshot_seq": seq, "started_at": finished - 1,
                                 "finished_at": finished, "files_scanned": 2, "bytes_scanned": 10,
                                 "bytes_sent": seq * 5, "copied": True})
    later = store.passes_since("main", 100.0)
    assert [(p["seq"], p["bytes_sent"]) for p in later] == [(2, 10), (3, 15)]
    assert store.passes_since("main", 300.0) == []
    assert store.last_pass("main") == later[-1]
