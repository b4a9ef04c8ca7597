"""The store on a SQLite file, the embedded default (``[store] url = ""`` or ``"sqlite:///PATH"``).

Calls are short and local, so they run on the loop's thread; WAL mode keeps readers (the API) from blocking the
writer, and a busy timeout lets two processes on one file (a second controller refused by its lock, the CLI)
wait for each other instead of failing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from dumont.store.base import SqlStore
from dumont.store.migrations import Dialect
from dumont.store.rows import EventRow, IntentRow, OperationRow, PairRow

__all__ = ["EventRow", "IntentRow", "OperationRow", "PairRow", "Store"]


class Store(SqlStore):
    """The SQLite database at ``path`` (created, or migrated to the current schema, on opening)."""

    dialect: ClassVar[Dialect] = "sqlite"
    greatest: ClassVar[str] = "MAX"

    def __init__(self, path: Path) -> None:
        super().__init__()
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.where = path, str(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._open()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _run_script(self, script: str) -> None:
        with self._lock:
            # executescript commits what is pending and runs the script as written: BEGIN..COMMIT makes it atomic.
            try:
                self._db.executescript(f"BEGIN IMMEDIATE;\n{script.rstrip().rstrip(';')};\nCOMMIT;")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
