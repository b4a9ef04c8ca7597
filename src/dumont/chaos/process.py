"""The controller as its own process (``dumont run --config``), driven through its API: a chaos campaign kills it
with SIGKILL and starts it again, as a machine losing power and systemd bringing it back would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import httpx

from dumont.core.layout import ControllerLayout
from dumont.errors import DumontError


class ControllerProcess:
    """One ``dumont run`` process of a config; its output goes to ``log``."""

    def __init__(self, config_path: Path, state_dir: Path, api_listen: str, log: Path) -> None:
        self.config_path, self.layout, self.log = config_path, ControllerLayout(state_dir), log
        host, port = api_listen.rsplit(":", 1)
        self.url = f"http://{host}:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start the controller and wait until it says it is ready (its ready file names this process)."""
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dumont", "run", "--config", str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
        self.starts += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._is_ready():
            if self.proc.returncode is not None:
                raise DumontError(f"the controller exited with {self.proc.returncode} while starting",
                                  hint=f"its output is in {self.log}")
            if loop.time() > deadline:
                raise DumontError(f"the controller was not ready after {timeout:g} s", hint=f"see {self.log}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 0.2)  # returns early only if it died

    def _is_ready(self) -> bool:
        try:
            return bool(self.proc and json.loads(self.layout.ready.read_text())["pid"] == self.proc.pid)
        except (OSError, ValueError, KeyError):
            return False

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.returncode is None

    async def get(self, path: str, **params: Any) -> Any:
        """GET an API path with the controller's token; the decoded JSON."""
        token = self.layout.api_token.read_text().strip()
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            response = await http.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind (the endpoint process outlives it by design)."""
        if self.running and self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, *, timeout: float = 60.0) -> None:
        """SIGTERM and wait (then SIGKILL when it does not stop in time)."""
        if not self.running or self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
