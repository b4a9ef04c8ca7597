"""The store on PostgreSQL (``[store] url = "postgresql://USER@HOST:PORT/DB"``), for a fleet whose controllers
share one database. The password never sits in the config: it comes from ``$DUMONT_STORE_PASSWORD`` or from
``store.password_file`` (mode 0600); without either, libpq's own ways apply (``~/.pgpass``, a trusted socket).

One connection, autocommit with explicit transactions, calls serialised by a lock (they are short). A broken
connection is reopened by the next call; a database that cannot be reached is a :class:`StoreUnavailable`
naming it without its password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import urlsplit

from dumont.errors import StoreUnavailable
from dumont.store.base import SqlStore
from dumont.store.migrations import Dialect

CONNECT_TIMEOUT_SECONDS = 10


class PostgresStore(SqlStore):
    """The PostgreSQL database at ``url`` (its schema migrated to the current one on opening)."""

    dialect: ClassVar[Dialect] = "postgres"
    greatest: ClassVar[str] = "GREATEST"

    def __init__(self, url: str, *, password: str | None = None) -> None:
        super().__init__()
        import psycopg  # imported here: a controller on SQLite never loads the driver

        self._psycopg = psycopg
        self.url, self._password = url, password
        parts = urlsplit(url)
        self.where = f"postgresql://{parts.username}@{parts.hostname}:{parts.port or 5432}{parts.path}"
        self._db: Any = None
        self._connect()
        self._open()

    def _connect(self) -> None:
        params: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                                  "application_name": "dumont"}
        if self._password:
            params["password"] = self._password
        try:
            self._db = self._psycopg.connect(self.url, **params)
        except self._psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot reach the state database {self.where}: {_first_line(exc)}",
                                   hint="check that PostgreSQL runs and accepts this user, and the password in "
                                   "$DUMONT_STORE_PASSWORD or store.password_file") from None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._db is not None:
                self._db.close()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            if self._db is None or self._db.closed or self._db.broken:
                self._connect()
            try:
                with self._db.transaction(), self._db.cursor() as cursor:
                    yield cursor
            except self._psycopg.OperationalError as exc:
                raise StoreUnavailable(f"the state database {self.where} failed: {_first_line(exc)}",
                                       hint="the next call reconnects; check the database if this repeats") from None

    def _run_script(self, script: str) -> None:
        with self._transaction() as cursor:
            cursor.execute(script)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or ["no detail"])[0]
