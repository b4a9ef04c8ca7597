"""Starting and stopping the endpoint process from another one (the controller, the CLI).

The process is started detached: ``python -m dumont.endpoint.daemon --background`` runs in a new session and
forks once more, so the endpoint is nobody's child (no zombie, no parent whose exit or Ctrl-C reaches it) and
lives on when its starter is killed. It reports readiness through a pipe: its pid, once it answers on its socket;
the pipe closing without a pid means it exited, and its log says why.

Under systemd run ``dumont-endpoint.service`` instead: a process started by the controller lives in the
controller's cgroup, and stopping the controller's unit kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from dumont.endpoint.control import request
from dumont.endpoint.layout import EndpointLayout
from dumont.endpoint.lock import is_locked, read_lock_pid
from dumont.errors import EndpointError, EndpointUnavailable

DEFAULT_START_TIMEOUT = 15.0
DEFAULT_STOP_TIMEOUT = 15.0
_PING_TIMEOUT = 2.0


async def running_pid(root: Path, *, timeout: float = _PING_TIMEOUT) -> int | None:
    """The pid of the endpoint process answering in ``root``, or None when none answers within ``timeout``."""
    layout = EndpointLayout(root)
    try:
        answer = await request(layout.control_socket, {"op": "ping"}, timeout=timeout, what=f"endpoint in {root}")
    except EndpointUnavailable:
        return None
    return int(answer["pid"])


async def ensure_endpoint_daemon(root: Path, *, timeout: float = DEFAULT_START_TIMEOUT) -> int:
    """Return the pid of the endpoint process serving ``root``, starting one (detached) if none answers.

    :raises EndpointError: the process it started exited before answering (the message carries its log's tail).
    :raises EndpointUnavailable: it did not answer within ``timeout`` seconds (it is left running; see its log).
    """
    layout = EndpointLayout(root)
    layout.check_socket_path()
    pid = await running_pid(root, timeout=min(timeout, _PING_TIMEOUT))
    if pid is not None:
        return pid
    layout.create()
    line, timed_out = await _start_and_wait(layout, timeout)
    if line.strip().isdigit():
        return int(line)
    # No pid: it may have lost a race for the lock to a process that answers now.
    pid = await running_pid(root, timeout=min(timeout, _PING_TIMEOUT))
    if pid is not None:
        return pid
    if timed_out:
        raise EndpointUnavailable(f"the endpoint process for {root} did not answer within {timeout:g} s",
                                  hint=f"it may still be starting; its log: {_log_tail(layout)}")
    raise EndpointError(f"the endpoint process for {root} exited before it answered: {_log_tail(layout)}",
                        hint=f"its whole log is {layout.log}")


async def stop_endpoint_daemon(root: Path, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
    """Stop the endpoint process serving ``root`` and wait until it exits; return its pid (None: none ran).

    A process that does not answer but still holds the directory's lock gets SIGTERM; one that outlives
    ``timeout`` seconds after that gets SIGKILL.
    """
    layout = EndpointLayout(root)
    pid = await running_pid(root)
    if pid is not None:
        with contextlib.suppress(EndpointUnavailable):
            await request(layout.control_socket, {"op": "shutdown"}, what=f"endpoint in {root}")
    elif is_locked(layout.lock):
        pid = read_lock_pid(layout.lock)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    if pid is None:
        return None
    if not await asyncio.to_thread(wait_for_exit, pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not await asyncio.to_thread(wait_for_exit, pid, timeout):
            raise EndpointError(f"the endpoint process {pid} for {root} survived SIGKILL",
                                hint="look at it with `ps`; it may be stuck in the kernel")
    return pid


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until process ``pid`` (not necessarily a child) exits; True if it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0]) or not is_alive(pid)
    finally:
        os.close(fd)


def is_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return raw[raw.rfind(")") + 2 :].split()[0] not in ("Z", "X")


async def _start_and_wait(layout: EndpointLayout, timeout: float) -> tuple[bytes, bool]:
    """Start the daemon; return what it wrote to the readiness pipe (its pid, or nothing) and whether it timed out."""
    read_end, write_end = os.pipe()
    try:
        pipe, ready = await _watch_pipe(read_end)
    except BaseException:
        os.close(write_end)
        raise
    try:
        try:
            await _spawn(layout, write_end, timeout=timeout)
        finally:
            os.close(write_end)  # only the daemon holds it now: its exit closes the pipe
        return await _read_line(ready, timeout)
    finally:
        pipe.close()


async def _spawn(layout: EndpointLayout, ready_fd: int, *, timeout: float) -> None:
    """Start the daemon in a new session; the first process forks it off and exits at once."""
    argv = [sys.executable, "-m", "dumont.endpoint.daemon", "--dir", str(layout.root), "--background",
            "--ready-fd", str(ready_fd)]
    with layout.log.open("ab") as log:
        launcher = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                        start_new_session=True, pass_fds=(ready_fd,))
    try:
        async with asyncio.timeout(timeout):
            code = await launcher.wait()
    except TimeoutError:
        launcher.kill()
        await launcher.wait()
        raise EndpointUnavailable(f"the endpoint launcher for {layout.root} did not fork within {timeout:g} s",
                                  hint=f"its log: {_log_tail(layout)}") from None
    if code != 0:
        raise EndpointError(f"the endpoint process for {layout.root} could not start (exit {code}): "
                            f"{_log_tail(layout)}", hint=f"its whole log is {layout.log}")


async def _watch_pipe(fd: int) -> tuple[asyncio.ReadTransport, asyncio.StreamReader]:
    """Read the readiness pipe from the event loop; closing the transport closes ``fd``."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    return transport, reader


async def _read_line(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """One line (empty when the pipe closed first) and whether ``timeout`` seconds passed before either."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.readline(), False
    except TimeoutError:
        return b"", True


def _log_tail(layout: EndpointLayout, lines: int = 5) -> str:
    try:
        text = layout.log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no log was written"
    return " | ".join(text[-lines:]) or "the log is empty"
