"""Headless Chromium driven over the DevTools protocol (no downloads: Debian's ``chromium`` package).

Everything runs as asyncio subprocesses and sockets: the controller under test shares this event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")
LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")

# Resolves with the page's text once it contains every wanted string; rejects with what it does show otherwise.
WAIT_FOR_TEXT = """
new Promise((resolve, reject) => {
  const wanted = %s, deadline = Date.now() + %d;
  const check = () => {
    const text = document.body ? document.body.innerText : "";
    if (wanted.every((w) => text.includes(w))) return resolve(text);
    if (Date.now() > deadline) {
      return reject(new Error("missing " + JSON.stringify(wanted.filter((w) => !text.includes(w))) + " in: " + text));
    }
    setTimeout(check, 100);
  };
  check();
})
"""


def chromium_path() -> str:
    """Debian's chromium; a missing browser fails the test (it is a declared system dependency)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the dashboard test needs Chromium: run `make system-deps` (Debian package `chromium`)")
    return path


class Browser:
    """One headless Chromium with one page, controlled over its DevTools websocket."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = bytearray()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None
        self.session: str | None = None

    async def __aenter__(self) -> Browser:
        self.proc = await asyncio.create_subprocess_exec(
            chromium_path(), *FLAGS, f"--user-data-dir={self.profile}", "--window-size=1280,1000", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        url = await asyncio.wait_for(self._devtools_url(), 60)
        self._drain = asyncio.create_task(self._keep_draining())
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.session = attached["sessionId"]
        await self.call("Page.enable")
        await self.call("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1,
                        mobile=False)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("Browser.close", session=False), 10)
        for task in (self._reader, self._drain):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def _devtools_url(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"chromium exited before listening: {bytes(self.stderr).decode(errors='replace')}")
            self.stderr += line
            found = LISTENING.search(line)
            if found:
                return found.group(1).decode()

    async def _keep_draining(self) -> None:
        """Read chromium's stderr so it never blocks on a full pipe (kept for failure messages)."""
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk[-65536:]

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._replies:
                self._replies.pop(data["id"]).set_result(data)
            for waiter in self._events.pop(data.get("method", ""), []):
                if not waiter.done():
                    waiter.set_result(data.get("params", {}))

    async def call(self, method: str, *, session: bool = True, **params: Any) -> dict[str, Any]:
        """Send one DevTools command (to the page's session unless ``session`` is False) and return its result."""
        assert self._ws is not None
        number = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[number] = reply
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session and self.session is not None:
            message["sessionId"] = self.session
        await self._ws.send_str(json.dumps(message))
        data = await asyncio.wait_for(reply, 60)
        if "error" in data:
            raise AssertionError(f"{method} failed: {data['error']}")
        result: dict[str, Any] = data.get("result", {})
        return result

    async def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        loaded: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._events.setdefault("Page.loadEventFired", []).append(loaded)
        await self.call("Page.navigate", url=url)
        await asyncio.wait_for(loaded, 30)

    async def wait_for_text(self, *wanted: str, timeout: float = 20) -> str:
        """The page's visible text once it contains every ``wanted`` string (fails with the text it has)."""
        expression = WAIT_FOR_TEXT % (json.dumps(list(wanted)), int(timeout * 1000))
        result = await asyncio.wait_for(self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                                  returnByValue=True), timeout + 10)
        if "exceptionDetails" in result:
            detail = result["exceptionDetails"].get("exception", {}).get("description", result["exceptionDetails"])
            raise AssertionError(f"the dashboard did not show {list(wanted)}: {detail}")
        text: str = result["result"]["value"]
        return text

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page."""
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))
        return path


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
