"""What every part of the agent shares: the error it reports, where things live, atomic files, epochs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
from typing import Any, Callable, Dict, List

# One manifest entry: [path, kind, mode, size, mtime_ns, hash-or-link-target, hard-link leader or None]
PATH, KIND, MODE, SIZE, MTIME, DATA, LINK = range(7)
Entry = List[Any]
Json = Dict[str, Any]


class Failure(Exception):
    """An error reported back to the controller as ``{"kind": ..., "message": ...}``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def data_dir() -> str:
    """Where the agent keeps its data on this host."""
    return os.environ.get("DUMONT_DATA_DIR") or "/var/lib/dumont"


def workspace_dir() -> str:
    """The workspace this host serves (``/workspace`` on a real machine)."""
    return os.environ.get("DUMONT_WORKSPACE") or "/workspace"


def snapshots_dir() -> str:
    """Where complete snapshots live."""
    return os.path.join(data_dir(), "snapshots")


def incoming_dir(epoch: int) -> str:
    """The staging area of a pass for ``epoch``."""
    return os.path.join(data_dir(), f"incoming-{epoch}")


def snapshot_name(seq: int) -> str:
    """The name of snapshot ``seq``'s directory under ``snapshots/`` (zero-padded: names sort as numbers)."""
    return f"{seq:010d}"


def snapshot_path(seq: int) -> str:
    """The directory of snapshot ``seq``."""
    return os.path.join(snapshots_dir(), snapshot_name(seq))


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a file so that readers see the old or the new content, never a mix; durable on return."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(parent)


def file_signature(path: str) -> tuple[int, int, int] | None:
    """(size, mtime, inode) of a file we wrote whole, to know a copy held in memory still is its content; None
    when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def fsync_dir(path: str) -> None:
    """Make a rename or creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str, default: Any = None) -> Any:
    """A JSON file's content, or ``default`` if it does not exist."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return default


def dump_json(value: Any) -> bytes:
    """Canonical JSON: the same value always gives the same bytes (digests depend on it)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, sort_keys=True).encode()


def disk_usage(path: str) -> Json:
    """Free and total bytes of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return {"free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}


def remove_tree(path: str) -> None:
    """Remove a directory tree of ours (staging or pruned snapshots), tolerating read-only subdirectories."""
    if not os.path.lexists(path):
        return

    def make_writable(func: Callable[[str], Any], target: str, _exc: Any) -> None:
        parent = os.path.dirname(target)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) | stat.S_IRWXU)
        func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)  # novermin (guarded by the version check)
    else:
        shutil.rmtree(path, onerror=make_writable)


def unlink_if_present(path: str) -> None:
    """Remove a file that may already be gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def read_epoch() -> int:
    """The highest epoch this host has accepted (0 before any)."""
    return int(read_json(os.path.join(data_dir(), "epoch"), 0))


def write_epoch(epoch: int) -> None:
    """Record ``epoch`` durably."""
    write_atomic(os.path.join(data_dir(), "epoch"), dump_json(epoch))


def accept_epoch(epoch: int) -> int:
    """Adopt ``epoch`` if it is newer; refuse a source whose epoch is older than ours."""
    current = read_epoch()
    if epoch < current:
        raise Failure(
            "StaleEpochRefused",
            f"source epoch {epoch} is older than this host's epoch {current}: it is a fenced former primary",
        )
    if epoch > current:
        write_epoch(epoch)
    return epoch


def suspects() -> list[str]:
    """Paths whose every copy on this host failed a scrub (``scrub.py``): the next pass must send them again."""
    return list(read_json(os.path.join(data_dir(), "suspects.json"), []) or [])
