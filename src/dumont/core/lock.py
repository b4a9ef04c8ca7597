"""One controller per state: an exclusive lock on the state directory, held for the controller's life.

Two controllers acting on the same pairs would each fail over, rent and fence on their own, and end disagreeing
(the core review saw epoch 2 against 5). The lock is an ``flock`` on ``<state_dir>/controller.lock``: the kernel
drops it when the process dies, even by SIGKILL, so a crashed controller never blocks its successor. The file
names the holder (pid, host, start time), so a second ``dumont run`` can say who it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from dumont.errors import ControllerAlreadyRunning


def lock_path(state_dir: Path) -> Path:
    """Where the lock lives."""
    return state_dir / "controller.lock"


@contextlib.contextmanager
def hold_state(state_dir: Path, *, api: str = "") -> Iterator[dict[str, object]]:
    """Hold the state directory for this controller, or raise ControllerAlreadyRunning naming the holder."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(lock_path(state_dir), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _already_running(fd, state_dir) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "api": api}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield holder
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _already_running(fd: int, state_dir: Path) -> ControllerAlreadyRunning:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        holder = {}
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "?"
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, running since {when}"
    api = f", API at {holder['api']}" if holder.get("api") else ""
    return ControllerAlreadyRunning(f"another controller already runs on {state_dir}: {who}{api}",
                                    hint="stop it first (it resumes every pair when restarted), or give this one "
                                         "its own state_dir")
