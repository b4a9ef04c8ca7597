"""Epochs by compare-and-set: two writers racing for the next epoch, and no write ever taking one back."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from dumont.errors import EpochConflict
from dumont.store.base import SqlStore
from dumont.store.rows import PairRow


def test_two_writers_race_and_exactly_one_takes_each_epoch(open_store: Callable[[], SqlStore]) -> None:
    """Two controllers' stores on one database, each trying to move epoch N on at the same instant, 50 times."""
    first, second = open_store(), open_store()
    first.save_pair(PairRow("main", "syncing", 1, None, None, 0))
    issued: list[int] = []
    conflicts = 0
    lock = threading.Lock()
    for _ in range(50):
        expected = first.get_pair("main").epoch  # type: ignore[union-attr]
        start = threading.Barrier(2)

        def take(store: SqlStore, expected: int = expected, start: threading.Barrier = start) -> None:
            nonlocal conflicts
            start.wait()
            try:
                epoch = store.advance_epoch("main", expected)
            except EpochConflict:
                with lock:
                    conflicts += 1
                return
            with lock:
                issued.append(epoch)

        threads = [threading.Thread(target=take, args=(s,)) for s in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert conflicts == 50, "each round, one writer found the epoch already taken"
    assert issued == list(range(2, 52)) and len(set(issued)) == len(issued), "no epoch was issued twice"
    assert second.get_pair("main").epoch == 51  # type: ignore[union-attr]


def test_a_stale_writer_is_refused_and_says_who_moved_it(store: SqlStore) -> None:
    store.save_pair(PairRow("main", "syncing", 4, None, None, 0))
    with pytest.raises(EpochConflict) as caught:
        store.advance_epoch("main", 3)
    assert "the epoch is 4, not 3" in str(caught.value)
    assert store.get_pair("main").epoch == 4  # type: ignore[union-attr]


def test_saving_a_pair_never_takes_its_epoch_back(store: SqlStore) -> None:
    store.save_pair(PairRow("main", "syncing", 1, None, None, 0))
    assert store.advance_epoch("main", 1) == 2
    store.save_pair(PairRow("main", "degraded", 1, None, None, 0))  # a writer that still thinks it is 1
    row = store.get_pair("main")
    assert row is not None and (row.state, row.epoch) == ("degraded", 2)
