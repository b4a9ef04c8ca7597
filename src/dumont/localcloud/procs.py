"""Finding and signalling every process that belongs to one local host.

A local host is an ``sshd`` plus whatever its sessions started, some of which may have daemonized away from the
sshd's process tree. Every session process carries ``DUMONT_LOCAL_HOST=<cloud>/<host>`` in its environment
(``SetEnv`` passes it on), so a host's processes are its sshd's descendants plus anything bearing that mark.
Reading ``/proc`` needs no privileges for our own processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from collections.abc import Iterable
from pathlib import Path

MARK = "DUMONT_LOCAL_HOST"
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses; everything after the last ')' is fixed-format.
    return raw[raw.rfind(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits (any process, not just our children); True if it did within ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return bool(ready) or not is_alive(pid)


async def wait_for_exits(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait (without blocking the event loop) until every pid exits; return those still alive at the deadline."""
    loop = asyncio.get_running_loop()
    waiting: dict[int, int] = {}
    done = asyncio.Event()

    def exited(pid: int) -> None:
        loop.remove_reader(waiting[pid])
        os.close(waiting.pop(pid))
        if not waiting:
            done.set()

    for pid in pids:
        try:
            waiting[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        loop.add_reader(waiting[pid], exited, pid)
    if waiting:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await done.wait()
    still = {p for p in list(waiting) if is_alive(p)}
    for pid in list(waiting):
        loop.remove_reader(waiting[pid])
        os.close(waiting.pop(pid))
    return still


def is_stopped(pid: int) -> bool:
    """True when ``pid`` is stopped by a signal (SIGSTOP)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "T"


def _all_pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _has_mark(pid: int, mark: bytes) -> bool:
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return mark in environ.split(b"\0")


def host_processes(mark: str, roots: Iterable[int] = ()) -> set[int]:
    """Every live process that descends from ``roots`` or carries ``DUMONT_LOCAL_HOST=mark``."""
    marker = f"{MARK}={mark}".encode()
    pids = _all_pids()
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    for pid in pids:
        parent = _parent(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
        if _has_mark(pid, marker):
            found.add(pid)
    stack = [r for r in roots if is_alive(r)]
    while stack:
        pid = stack.pop()
        if pid in found and pid not in roots:
            continue
        found.add(pid)
        stack.extend(children.get(pid, []))
    found.discard(os.getpid())
    return {p for p in found if is_alive(p)}


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each pid, ignoring ones that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def freeze(mark: str, roots: Iterable[int] = ()) -> set[int]:
    """Stop (SIGSTOP) every process of the host until no new one appears; return the frozen set.

    Freezing first means nothing can fork or react while we look, so the following SIGKILL lands on all of them
    at once, which is how a machine that loses power looks from the outside.
    """
    roots = list(roots)
    frozen: set[int] = set()
    for _ in range(50):
        current = host_processes(mark, roots)
        fresh = current - frozen
        if not fresh:
            break
        signal_all(fresh, signal.SIGSTOP)
        frozen |= fresh
    return {p for p in frozen if is_alive(p)}


def kill_host(mark: str, roots: Iterable[int] = ()) -> set[int]:
    """Kill every process of the host at once (freeze, then SIGKILL); return the pids killed."""
    frozen = freeze(mark, roots)
    signal_all(frozen, signal.SIGKILL)
    return frozen


def thaw(mark: str, roots: Iterable[int] = ()) -> set[int]:
    """Resume (SIGCONT) every process of the host."""
    pids = host_processes(mark, roots)
    signal_all(pids, signal.SIGCONT)
    return pids


def marked_processes(cloud_id: str, hosts_dir: Path | None = None) -> set[int]:
    """Every live process of the local cloud ``cloud_id``: marked ones, and sshd listeners of ``hosts_dir``.

    sshd overwrites its own environment with its process title, so its listener is recognised by the config path
    in that title instead.
    """
    prefix = f"{MARK}={cloud_id}/".encode()
    config_marker = os.fsencode(hosts_dir) + b"/" if hosts_dir is not None else None
    found = set()
    for pid in _all_pids():
        try:
            environ = (PROC / str(pid) / "environ").read_bytes()
            cmdline = (PROC / str(pid) / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        marked = any(item.startswith(prefix) for item in environ.split(b"\0"))
        if (marked or (config_marker is not None and config_marker in cmdline)) and is_alive(pid):
            found.add(pid)
    found.discard(os.getpid())
    return found


def kill_marked(cloud_id: str, hosts_dir: Path | None = None) -> set[int]:
    """Freeze and kill every process of the local cloud ``cloud_id``; return the pids killed."""
    frozen: set[int] = set()
    for _ in range(50):
        fresh = marked_processes(cloud_id, hosts_dir) - frozen
        if not fresh:
            break
        signal_all(fresh, signal.SIGSTOP)
        frozen |= fresh
    signal_all(frozen, signal.SIGKILL)
    return frozen
