"""One endpoint process per directory: an flock on ``DIR/endpoint.lock``, which holds the owner's pid."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from dumont.errors import EndpointError


class DirectoryLock:
    """The exclusive lock of one endpoint directory, held for the life of the process that serves it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid into it; raise EndpointError naming the pid of the process holding it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = read_lock_pid(self.path)
            raise EndpointError(
                f"another endpoint process (pid {owner if owner else 'unknown'}) already serves {self.path.parent}",
                hint=f"stop it first with: dumont endpoint stop --dir {self.path.parent}",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (closing its file releases the flock); the file stays, so no one races its creation."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


def read_lock_pid(path: Path) -> int | None:
    """The pid written in the lock file, or None when it holds none."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def is_locked(path: Path) -> bool:
    """True when a process holds the lock at ``path`` now."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
