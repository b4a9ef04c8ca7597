"""The store contract runs on both databases: every test here gets SQLite and PostgreSQL in turn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dumont.store.base import SqlStore
from dumont.store.postgres import PostgresStore
from dumont.store.sqlite import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], SqlStore]]:
    """Opens the test's database: each call a new store on the same one (a restart, or a second controller)."""
    opened: list[SqlStore] = []
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def connect() -> SqlStore:
            return Store(path)
    else:
        url = request.getfixturevalue("postgres").new_database()

        def connect() -> SqlStore:
            return PostgresStore(url)

    def open_one() -> SqlStore:
        opened.append(connect())
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], SqlStore]) -> SqlStore:
    """A fresh store."""
    return open_store()
