"""2,000 bad requests against the API while the loop ticks: nothing dies, each distinct bug is reported once."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx

from dumont.api.server import ApiServer
from tests.unit.core.world import controller_of, make_world, synced_pair

BAD: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/api/status", {}),  # no token
    ("GET", "/api/status", {"Authorization": "Bearer wrong"}),
    ("GET", "/api/status", {"Authorization": "bearer wrong"}),
    ("GET", "/api/events?after=99999999999999999999999999999", {}),
    ("GET", "/api/events?after=-5&wait=nan", {}),
    ("GET", "/api/events?after=1e308", {}),
    ("POST", "/api/pairs/main/intents/explode", {}),
    ("POST", "/api/pairs/nope/intents/sync", {}),
    ("GET", "/api/intents/notanumber", {}),
    ("GET", "/api/intents/999999999999999999999999", {}),
    ("GET", "/nothing/here", {}),
    ("DELETE", "/api/status", {}),
]


async def test_two_thousand_bad_requests_leave_the_loop_ticking_and_the_api_up(tmp_path: Path) -> None:
    world = make_world(tmp_path, {"health_check_interval": 0.05, "health": {"probe_timeout_seconds": 0.04}})
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        api = ApiServer(controller, "the-token", "127.0.0.1", 0)
        await api.start()
        loop = asyncio.create_task(controller.run())
        try:
            before = controller.ticks
            statuses: dict[int, int] = {}
            async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
                for n in range(2000):
                    method, path, headers = BAD[n % len(BAD)]
                    if "Authorization" not in headers and n % 2:
                        headers = {"Authorization": "Bearer the-token"}
                    response = await client.request(method, path, headers=headers)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                # A token in bytes no ASCII header can hold: refused, not a crash.
                raw = await client.get("/api/status", headers={"Authorization": "Bearer t\xe9\xe9".encode("latin-1")})
                statuses[raw.status_code] = statuses.get(raw.status_code, 0) + 1
                ok = await client.get("/api/status", headers={"Authorization": "Bearer the-token"})
            assert ok.status_code == 200 and ok.json()["pairs"][0]["name"] == "main"
            assert 500 not in statuses, statuses
            assert controller.ticks > before + 5, "the loop kept ticking"
            assert rt.endpoint.stats().target is not None
            internal = [e for e in world.ctx.store.events(limit=100_000) if e.kind == "internal_error"]
            assert internal == []
        finally:
            controller.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(loop, 30)
            await api.stop()
