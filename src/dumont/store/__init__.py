"""The controller's durable state: SQLite in the state dir (the default) or PostgreSQL for a fleet.

:func:`open_store` picks the database from ``[store]``; both speak the same queries (:mod:`dumont.store.base`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dumont.config import StoreConfig
from dumont.store.base import SqlStore
from dumont.store.sqlite import Store

PASSWORD_VARIABLE = "DUMONT_STORE_PASSWORD"  # noqa: S105 - the variable's name, not a password


def open_store(config: StoreConfig, default_path: Path, environ: Mapping[str, str] = os.environ, *,
               lease_seconds: float = 30.0) -> SqlStore:
    """The store ``config`` names (``default_path``: the SQLite file used when it names none). A call to a
    PostgreSQL store that the network or the server holds up fails within a sixth of ``lease_seconds`` (5 s at
    most), so a controller cut off from it still stops acting, between calls, before its leases run out."""
    if not config.url:
        return Store(default_path)
    url = urlsplit(config.url)
    if url.scheme == "sqlite":
        return Store(Path(unquote(url.path)))
    from dumont.store.postgres import IO_TIMEOUT_SECONDS, PostgresStore

    password = environ.get(PASSWORD_VARIABLE)
    if password is None and config.password_file is not None:
        password = config.password_file.read_text().strip()
    return PostgresStore(config.url, password=password or None,
                         io_timeout=max(0.5, min(IO_TIMEOUT_SECONDS, lease_seconds / 6)))
