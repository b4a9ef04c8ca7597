"""The drill's writer: a job writing numbered, time-stamped records into the workspace through the endpoint.

It runs the way a user's job does: a long SSH session through the pair's stable endpoint, on whatever machine
serves it. Each record is its own small file (``writer/<seq>.rec``: sequence number, time, host), written and
fsynced before its number is reported back, so after a failure the drill knows exactly which writes each
machine acknowledged, and what was lost is counted in files, bytes and age. When the session dies (the GPU was
killed), the writer reconnects through the endpoint and carries on from the next number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from dumont.transport.ssh import quote_remote

log = logging.getLogger("dumont.drill")

# Runs on the host (any Python 3): write one record every INTERVAL seconds, print "ACK seq time host" once
# durable. The marker matters: a real host may print a banner or a shell's noise on the same channel.
REMOTE = r"""
import os, sys, time
ws = os.environ.get("DUMONT_WORKSPACE") or "/workspace"
host = os.environ.get("DUMONT_HOST") or os.uname()[1]
folder = os.path.join(ws, "writer")
os.makedirs(folder, exist_ok=True)
seq, interval = int(sys.argv[1]), float(sys.argv[2])
while True:
    now = time.time()
    path = os.path.join(folder, "%08d.rec" % seq)
    with open(path + ".tmp", "w") as f:
        f.write("%d %.6f %s\n" % (seq, now, host))
        f.flush()
        os.fsync(f.fileno())
    os.rename(path + ".tmp", path)
    dirfd = os.open(folder, os.O_RDONLY)
    os.fsync(dirfd)
    os.close(dirfd)
    print("ACK %d %.6f %s" % (seq, now, host), flush=True)
    seq += 1
    time.sleep(interval)
"""


FIND_PYTHON = ('for p in python3 /opt/conda/bin/python3 /usr/bin/python3; do '
               'command -v "$p" >/dev/null 2>&1 && exec "$p" -c "$@"; done; echo "no python3" >&2; exit 127')


@dataclass(frozen=True)
class Record:
    """One acknowledged write."""

    seq: int
    at: float
    host: str
    stamp: str  # the time exactly as written in the file

    @property
    def path(self) -> str:
        """Where it lives in the workspace."""
        return f"writer/{self.seq:08d}.rec"

    @property
    def content(self) -> bytes:
        """Its exact bytes."""
        return f"{self.seq} {self.stamp} {self.host}\n".encode()


@dataclass
class Writer:
    """Writes records through the endpoint until stopped, reconnecting when the serving machine changes."""

    ssh_config: Path
    alias: str
    interval: float = 0.2
    records: list[Record] = field(default_factory=list)
    sessions: int = 0
    _task: asyncio.Task[None] | None = None
    _proc: asyncio.subprocess.Process | None = None

    def start(self) -> None:
        """Begin writing in the background."""
        self._task = asyncio.create_task(self._run(), name="drill-writer")

    async def stop(self) -> None:
        """Stop writing (the session ends; the records written so far stay)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def by_host(self, host: str) -> list[Record]:
        """Records acknowledged by ``host``."""
        return [r for r in self.records if r.host == host]

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self._session()
            if time.monotonic() - started < 1.0:
                await asyncio.sleep(0.5)  # the endpoint has no machine yet (failover in progress); retry soon

    async def _session(self) -> None:
        next_seq = self.records[-1].seq + 1 if self.records else 1
        # The job runs with the image's Python, wherever it lives (Vast's pytorch images keep it off the PATH).
        remote = quote_remote(["sh", "-c", FIND_PYTHON, "writer", REMOTE, str(next_seq), str(self.interval)])
        self._proc = await asyncio.create_subprocess_exec(
            "ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=3", self.alias, "--", remote,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        self.sessions += 1
        assert self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                record = parse_ack(line)
                if record is not None:
                    self.records.append(record)
        finally:
            if self._proc.returncode is None:
                self._proc.kill()
            await self._proc.wait()


def parse_ack(line: bytes) -> Record | None:
    """The record an ``ACK seq time host`` line acknowledges, or None for any other line (a banner, noise)."""
    fields = line.decode(errors="replace").split()
    if len(fields) != 4 or fields[0] != "ACK" or not fields[1].isdigit():
        return None
    try:
        at = float(fields[2])
    except ValueError:
        return None
    return Record(int(fields[1]), at, fields[3], fields[2])
