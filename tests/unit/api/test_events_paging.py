"""`dumont events` shows the newest events and can page through all of them (hostile-review.md #12: the CLI
showed only the oldest 500 of 2,000)."""

from __future__ import annotations

from pathlib import Path

import httpx

from dumont.api.server import EVENT_PAGE, ApiServer
from tests.unit.core.world import controller_of, make_world, synced_pair

TOKEN = {"Authorization": "Bearer the-token"}


async def test_the_newest_events_come_first_to_hand_and_every_event_can_be_paged_to(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        for n in range(2000):
            world.ctx.store.add_event("main", "note", f"note {n}")
        newest_id = world.ctx.store.last_event_id()
        api = ApiServer(controller_of(world, rt), "the-token", "127.0.0.1", 0)
        await api.start()
        try:
            async with httpx.AsyncClient(base_url=api.url, timeout=10, headers=TOKEN) as client:
                last = (await client.get("/api/events", params={"last": 50})).json()
                assert [e["reason"] for e in last["events"]] == [f"note {n}" for n in range(1950, 2000)]
                assert last["events"][-1]["id"] == newest_id
                seen, after = [], 0
                while True:
                    page = (await client.get("/api/events", params={"after": after})).json()
                    seen += page["events"]
                    if len(page["events"]) < page["page_size"]:
                        break
                    after = page["events"][-1]["id"]
                assert page["page_size"] == EVENT_PAGE
                assert [e["id"] for e in seen] == sorted({e["id"] for e in seen}) and seen[-1]["id"] == newest_id
                assert sum(e["kind"] == "note" for e in seen) == 2000
                for bad in ("0x", "-1", str(EVENT_PAGE + 1)):
                    assert (await client.get("/api/events", params={"last": bad})).status_code == 400
        finally:
            await api.stop()
