"""Starting, stopping and talking to the local cloud daemon (what ``dumont local ...`` does)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dumont.errors import LocalCloudError, UsageError
from dumont.localcloud import layout, procs

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def read_ready(state_dir: Path) -> dict[str, Any] | None:
    """The running daemon's ready record, or None when no daemon is serving this state dir."""
    path = layout.ready_file(state_dir)
    try:
        ready: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return ready if procs.is_alive(int(ready.get("pid", 0))) else None


def start(state_dir: Path, link: str | None = None) -> tuple[dict[str, Any], bool]:
    """Start the daemon for ``state_dir`` unless one already serves it; return (ready record, was running).

    ``link`` names a link profile every host is put behind (``localcloud/link.py``)."""
    ready = read_ready(state_dir)
    if ready is not None:
        return ready, True
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.ready_file(state_dir).unlink(missing_ok=True)
    read_end, write_end = os.pipe()
    try:
        with layout.daemon_log(state_dir).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dumont.localcloud.daemon", "--state-dir", str(state_dir),
                 "--ready-fd", str(write_end), *(["--link", link] if link else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, pass_fds=(write_end,),
            )
        os.close(write_end)
        (state_dir / "daemon.pid").write_text(f"{proc.pid}\n")
        line = _read_line(read_end, START_TIMEOUT)
    finally:
        os.close(read_end)
    if not line:
        if proc.poll() is None:
            proc.kill()
            raise LocalCloudError(f"the local cloud did not become ready within {START_TIMEOUT:g} s: "
                                  f"{_log_tail(state_dir)}")
        raise LocalCloudError(f"the local cloud daemon exited with {proc.returncode}: {_log_tail(state_dir)}")
    ready = json.loads(line)
    return ready, False


def _read_line(fd: int, timeout: float) -> bytes:
    """Read one line from ``fd`` within ``timeout`` (empty when it closed or the deadline passed)."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b""
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        data += chunk
    return data


def stop(state_dir: Path) -> set[int]:
    """Stop the daemon and every host; kill whatever is left of them; return the pids that had to be killed."""
    ready = read_ready(state_dir)
    pid = _daemon_pid(state_dir, ready)
    if ready is not None:
        with contextlib.suppress(LocalCloudError):  # unresponsive: it is killed below
            client(state_dir).post("/shutdown")
    if pid and not procs.wait_for_exit(pid, STOP_TIMEOUT):
        os.kill(pid, signal.SIGKILL)
    killed: set[int] = set()
    from dumont.endpoint.launch import stop_endpoint_daemon
    from dumont.localcloud.ready import controller_dir

    # The ready config's controller keeps its users' endpoints in a process of their own: it goes with the cloud.
    asyncio.run(stop_endpoint_daemon(controller_dir(state_dir) / "endpoint"))
    if (state_dir / "cloud_id").exists():
        from dumont.localcloud.pool import HostPool

        killed = asyncio.run(HostPool(state_dir).shutdown())
    (state_dir / "daemon.pid").unlink(missing_ok=True)
    layout.ready_file(state_dir).unlink(missing_ok=True)
    return killed


def _daemon_pid(state_dir: Path, ready: dict[str, Any] | None) -> int | None:
    if ready is not None:
        return int(ready["pid"])
    try:
        return int((state_dir / "daemon.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _log_tail(state_dir: Path) -> str:
    try:
        lines = layout.daemon_log(state_dir).read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no log"
    return " | ".join(lines[-5:]) or "no log"


class ControlClient:
    """The daemon's control API."""

    def __init__(self, base_url: str, token: str) -> None:
        import httpx  # here, not at the top: `dumont local --help` needs no HTTP client

        self._http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def get(self, path: str) -> Any:
        """GET ``path`` and return its JSON."""
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST ``body`` to ``path`` and return the JSON answer."""
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise LocalCloudError(f"the local cloud daemon did not answer: {exc}") from exc
        data = response.json()
        if response.status_code == 400:
            raise UsageError(str(data.get("error", response.text)))
        if response.status_code >= 400:
            raise LocalCloudError(str(data.get("error", response.text)))
        return data


def client(state_dir: Path) -> ControlClient:
    """A client for the daemon serving ``state_dir``."""
    ready = read_ready(state_dir)
    if ready is None:
        raise LocalCloudError(f"no local cloud is running in {state_dir}", hint="start one with: dumont local up")
    return ControlClient(ready["control_url"], layout.control_token(state_dir).read_text().strip())
