"""The local cloud's daemon: owns the host pool and serves its control API on 127.0.0.1.

``dumont local up`` starts it in the background; it writes ``<state_dir>/localcloud.json`` once it is ready and
removes it when it stops. On SIGTERM or SIGINT, or on ``POST /shutdown``, it kills every host and exits, so
nothing of the local cloud outlives it. Run it in the foreground with
``python -m dumont.localcloud.daemon --state-dir DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from dumont.errors import DumontError, UsageError
from dumont.localcloud import layout
from dumont.localcloud.emulators import Emulator, create_emulators
from dumont.localcloud.link import PROFILES, LinkSpec, spec_from_dict
from dumont.localcloud.pool import HostPool
from dumont.transport.keys import ensure_keypair, write_private

log = logging.getLogger("dumont.localcloud")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json`` (no charset suffix)."""
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


class LocalCloud:
    """The running local cloud: the pool plus its control API."""

    def __init__(self, state_dir: Path, *, login_banner: str | None = None, link: LinkSpec | None = None) -> None:
        self.state_dir = state_dir
        self.pool = HostPool(state_dir, login_banner=login_banner, link=link)
        self.token = secrets.token_urlsafe(24)
        self.stopping = asyncio.Event()
        self.emulators: list[Emulator] = []
        self.urls: dict[str, str] = {}

    async def start_emulators(self) -> None:
        """Start every cloud API emulator; remember their URLs (``vast_url``, ``gcp_url``, ``registry_url``)."""
        self.emulators = create_emulators(self)
        for emulator in self.emulators:
            url = await emulator.start()
            if url:
                self.urls[f"{emulator.name}_url"] = url

    async def stop_emulators(self) -> None:
        """Stop every emulator."""
        for emulator in self.emulators:
            await emulator.stop()

    def app(self) -> web.Application:
        """The control API."""
        app = web.Application(middlewares=[self._auth, self._errors])
        app.router.add_get("/hosts", self._list)
        app.router.add_post("/hosts", self._create)
        app.router.add_post("/hosts/{name}/{action}", self._act)
        app.router.add_post("/shutdown", self._shutdown)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return json_response({"error": "missing or wrong control token"}, status=401)
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except UsageError as exc:
            return json_response({"error": str(exc)}, status=400)
        except DumontError as exc:
            return json_response({"error": str(exc)}, status=409)

    async def _list(self, request: web.Request) -> web.Response:
        return json_response({"hosts": [h.as_dict() for h in self.pool.hosts()]})

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        keys = list(body.get("authorized_keys") or [])
        if body.get("user_key", True):
            keys.append(ensure_keypair(layout.user_key(self.state_dir), "dumont-local-user"))
        host = await self.pool.create(str(body["name"]), authorized_keys=keys, role=str(body.get("role", "")))
        return json_response(host.as_dict(), status=201)

    async def _act(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        actions = {"start": self.pool.start, "stop": self.pool.stop, "kill": self.pool.kill,
                   "partition": self.pool.partition, "heal": self.pool.heal}
        if action == "destroy":
            await self.pool.destroy(name)
            return json_response({"destroyed": name})
        if action == "link":
            body = await request.json() if request.can_read_body else {}
            host = self.pool.set_link(name, spec_from_dict(body if isinstance(body, dict) else {}))
            log.info("link %s: %s", name, spec_from_dict(host.link or {}).describe())
            return json_response(host.as_dict())
        log.info("%s %s", action, name)
        if action in actions:
            return json_response((await actions[action](name)).as_dict())
        host = self.pool.get(name)
        owner = next((e for e in self.emulators if e.name == host.provider), None)
        if owner is None or action not in owner.fault_actions:
            vendor = sorted(owner.fault_actions) if owner else []
            raise UsageError(f"{action!r} does not apply to {host.name} (a {host.provider} host)",
                             hint=f"actions: {', '.join([*sorted(actions), 'destroy', *vendor])}")
        return json_response(await owner.fault(action, host))

    async def _shutdown(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return json_response({"stopping": True})


async def serve(state_dir: Path, ready_fd: int | None = None, link: LinkSpec | None = None) -> None:
    """Run the local cloud until asked to stop, then kill every host (``link``: every host behind one)."""
    cloud = LocalCloud(state_dir, link=link)
    runner = web.AppRunner(cloud.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, cloud.stopping.set)
    try:
        ensure_keypair(layout.user_key(state_dir), "dumont-local-user")
        await cloud.start_emulators()
        ready = {"pid": os.getpid(), "control_url": f"http://127.0.0.1:{port}", "cloud_id": cloud.pool.cloud_id,
                 **cloud.urls}
        write_private(layout.control_token(state_dir), cloud.token)
        write_private(layout.ready_file(state_dir), json.dumps(ready, indent=2) + "\n")
        log.info("local cloud ready on port %d", port)
        if ready_fd is not None:
            os.write(ready_fd, json.dumps(ready).encode() + b"\n")
            os.close(ready_fd)
        await cloud.stopping.wait()
    finally:
        layout.ready_file(state_dir).unlink(missing_ok=True)
        await cloud.stop_emulators()
        killed = await cloud.pool.shutdown()
        log.info("local cloud stopped; %d process(es) ended", len(killed))
        await runner.cleanup()


def main() -> None:
    """Entry point: ``python -m dumont.localcloud.daemon --state-dir DIR``."""
    parser = argparse.ArgumentParser(description="Run the Dumont local cloud in the foreground.")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ready-fd", type=int, default=None, help="Write the ready record to this fd, then close it.")
    parser.add_argument("--link", choices=sorted(PROFILES), default=None,
                        help="Put every host behind a link with this profile (changeable at run time).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args.state_dir.resolve(), args.ready_fd, PROFILES[args.link] if args.link else None))


if __name__ == "__main__":
    main()
