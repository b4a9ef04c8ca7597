"""The store on PostgreSQL (``[store] url = "postgresql://USER@HOST:PORT/DB"``), for a fleet whose controllers
share one database. The password never sits in the config: it comes from ``$DUMONT_STORE_PASSWORD`` or from
``store.password_file`` (mode 0600); without either, libpq's own ways apply (``~/.pgpass``, a trusted socket).

One connection, autocommit with explicit transactions, calls serialised by a lock (they are short). A broken
connection is reopened by the next call; a database that cannot be reached is a :class:`StoreUnavailable`
naming it without its password.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import urlsplit

from dumont.errors import StoreUnavailable
from dumont.store.base import SqlStore
from dumont.store.migrations import Dialect

CONNECT_TIMEOUT_SECONDS = 10
# Store calls run on the controller's loop: a database behind a partition must fail them within seconds (and so
# let the lease deadlines decide), not hang the loop until the kernel gives the connection up, minutes later.
# tcp_user_timeout bounds a request the network does not deliver; keepalives notice a dead peer while idle; the
# statement timeout bounds a server that accepted a request and does not answer.
IO_TIMEOUT_SECONDS = 5.0


class PostgresStore(SqlStore):
    """The PostgreSQL database at ``url`` (its schema migrated to the current one on opening)."""

    dialect: ClassVar[Dialect] = "postgres"
    greatest: ClassVar[str] = "GREATEST"

    def __init__(self, url: str, *, password: str | None = None, io_timeout: float = IO_TIMEOUT_SECONDS) -> None:
        super().__init__()
        self.io_timeout = io_timeout
        self._retry_at = 0.0  # monotonic: no reconnecting before this after a failure
        import psycopg  # imported here: a controller on SQLite never loads the driver

        self._psycopg = psycopg
        self.url, self._password = url, password
        parts = urlsplit(url)
        self.where = f"postgresql://{parts.username}@{parts.hostname}:{parts.port or 5432}{parts.path}"
        self._db: Any = None
        self._connect()
        self._open()

    def _connect(self) -> None:
        millis = max(1, round(self.io_timeout * 1000))
        params: dict[str, Any] = {"autocommit": True, "connect_timeout": max(2, min(CONNECT_TIMEOUT_SECONDS,
                                                                                round(self.io_timeout * 1.5))),
                                  "application_name": "dumont", "tcp_user_timeout": millis, "keepalives": 1,
                                  "keepalives_idle": max(1, round(self.io_timeout)), "keepalives_interval": 1,
                                  "keepalives_count": 3, "options": f"-c statement_timeout={millis}"}
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
                # A database that just failed is not asked again for io_timeout: every call would otherwise hold
                # the loop for a whole connect, and a controller cut off would let its pairs go late.
                left = self._retry_at - time.monotonic()
                if left > 0:
                    raise StoreUnavailable(f"the state database {self.where} did not answer; asking again in "
                                           f"{left:.1f} s", hint="check the database and the network to it")
                self._retry_at = time.monotonic() + self.io_timeout
                self._connect()
            # The server bounds a statement it received; this bounds one it never did (a link that swallows
            # packets yet acknowledges them, as a proxy or a userspace relay does, keeps a request waiting with
            # no TCP timeout ever firing): past it the socket is shut, and the call fails at once.
            deadline = threading.Timer(self.io_timeout + 1.0, _shut, (self._db,))
            deadline.daemon = True
            deadline.start()
            try:
                with self._db.transaction(), self._db.cursor() as cursor:
                    yield cursor
            except self._psycopg.OperationalError as exc:
                self._retry_at = time.monotonic() + self.io_timeout
                raise StoreUnavailable(f"the state database {self.where} failed: {_first_line(exc)}",
                                       hint="the next call reconnects; check the database if this repeats") from None
            finally:
                deadline.cancel()

    def _run_script(self, script: str) -> None:
        with self._transaction() as cursor:
            cursor.execute(script)


def _shut(db: Any) -> None:
    """Shut a connection's socket from another thread: the call blocked on it fails instead of waiting on."""
    # Already closed, or finished meanwhile: nothing to shut.
    with contextlib.suppress(Exception), socket.socket(fileno=os.dup(db.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or ["no detail"])[0]
