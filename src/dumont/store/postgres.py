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
        import psycopg  # imported here: a controller on SQLite never loads the driver

        self._psycopg = psycopg
        self.url, self._password, self.io_timeout = url, password, io_timeout
        parts = urlsplit(url)
        self.where = f"postgresql://{parts.username}@{parts.hostname}:{parts.port or 5432}{parts.path}"
        self._closed = False
        self._lost = ""  # why the connection was lost, while it is being made again
        self._reconnecting: threading.Thread | None = None
        try:
            self._db: Any = self._connect()
        except self._psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot reach the state database {self.where}: {_first_line(exc)}",
                                   hint="check that PostgreSQL runs and accepts this user, and the password in "
                                   "$DUMONT_STORE_PASSWORD or store.password_file") from None
        self._open()

    def _connect(self) -> Any:
        millis = max(1, round(self.io_timeout * 1000))
        params: dict[str, Any] = {"autocommit": True, "connect_timeout": max(2, min(CONNECT_TIMEOUT_SECONDS,
                                                                                round(self.io_timeout * 1.5))),
                                  "application_name": "dumont", "tcp_user_timeout": millis, "keepalives": 1,
                                  "keepalives_idle": max(1, round(self.io_timeout)), "keepalives_interval": 1,
                                  "keepalives_count": 3, "options": f"-c statement_timeout={millis}"}
        if self._password:
            params["password"] = self._password
        return self._psycopg.connect(self.url, **params)

    def close(self) -> None:
        """Close the connection (and stop making it again)."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            if self._db.closed or self._db.broken:
                # Made again in a thread of its own: a call on the controller's loop never waits for a connect
                # to a database that may be behind a partition; it fails at once, and the leases decide.
                self._reconnect_in_background()
                raise StoreUnavailable(f"the state database {self.where} is not connected ({self._lost}); "
                                       "connecting again in the background",
                                       hint="check the database and the network to it")
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
                self._lost = _first_line(exc)
                self._reconnect_in_background()
                raise StoreUnavailable(f"the state database {self.where} failed: {self._lost}",
                                       hint="it is connected again in the background; check the database if this "
                                            "repeats") from None
            finally:
                deadline.cancel()

    def _reconnect_in_background(self) -> None:
        if self._reconnecting is None or not self._reconnecting.is_alive():
            self._reconnecting = threading.Thread(target=self._reconnect, name="dumont-store-reconnect", daemon=True)
            self._reconnecting.start()

    def _reconnect(self) -> None:
        """Connect until it works (or the store is closed), then hand the new connection to the callers."""
        while not self._closed:
            try:
                db = self._connect()
            except self._psycopg.OperationalError as exc:
                self._lost = _first_line(exc)
                time.sleep(self.io_timeout)  # this thread's own pace between attempts; no caller waits on it
                continue
            with self._lock:
                old, self._db = self._db, db
                if self._closed:
                    db.close()
            with contextlib.suppress(Exception):
                old.close()
            return

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
