"""A throwaway PostgreSQL cluster for the tests: Debian's ``postgresql`` package (``make test`` installs it),
``initdb`` and ``pg_ctl`` in a temporary directory, listening on 127.0.0.1 only, trust authentication for one
superuser. PostgreSQL refuses to run as root, so a root run starts it as the ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPERUSER = "dumont"


def _binary(name: str) -> str:
    """``name`` from PATH, else from Debian's versioned directory (the newest installed)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is missing: install Debian's postgresql package "
                           "(make test does it: scripts/install-system-deps)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """subprocess arguments that run a command as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid}
    raise RuntimeError("running as root with neither a postgres nor a nobody user to run PostgreSQL as")


@dataclass
class PostgresServer:
    """A running cluster; :meth:`new_database` gives each test a database of its own."""

    root: Path
    port: int
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres") -> str:
        """A ``[store] url`` for ``database``."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the cluster at once and remove its files."""
        subprocess.run([_binary("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, check=False, **_run_as())
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    """initdb and start a cluster in a new temporary directory (bounded: pg_ctl -w waits at most 60 s)."""
    root = Path(tempfile.mkdtemp(prefix="dumont-pg-"))
    as_user = _run_as()
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data, port = root / "data", _free_port()
    subprocess.run([_binary("initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                    "--no-sync"], capture_output=True, check=True, cwd=root, **as_user)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    started = subprocess.run([_binary("pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
                              "-t", "60", "start"], capture_output=True, check=False, cwd=root, **as_user)
    if started.returncode != 0:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')}\n{log}")
    return PostgresServer(root, port)
