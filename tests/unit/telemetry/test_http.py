"""The telemetry routes: the dashboard page (self-contained, public), /metrics and /api/telemetry (token required)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from dumont.api.server import ApiServer, Handler
from dumont.core.model import Memory
from dumont.telemetry import Telemetry
from dumont.telemetry.http import dashboard_page
from tests.unit.telemetry.conftest import FakeController

TOKEN = "unit-test-token"


@dataclass
class Served:
    url: str
    telemetry: Telemetry


@pytest.fixture
async def served(controller: FakeController, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.delenv("DUMONT_NOTIFY_URLS", raising=False)
    telemetry = Telemetry(controller)  # type: ignore[arg-type]
    api = ApiServer(controller, TOKEN, "127.0.0.1", 0, telemetry.extensions)  # type: ignore[arg-type]
    await api.start()
    yield Served(api.url, telemetry)
    await api.stop()


def test_the_dashboard_is_one_self_contained_page() -> None:
    """Nothing to build and nothing fetched from elsewhere: no external URL, stylesheet or script file."""
    page = dashboard_page().decode()
    assert page.startswith("<!doctype html>")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|<link\b|<script[^>]*\bsrc=|@import|url\(", page)
    for route in ('"/api/status"', '"/api/telemetry"', "/api/events?after="):
        assert route in page, f"the page does not use {route}"
    assert "innerHTML" not in page, "event reasons are text, never markup"


async def test_the_page_is_public_and_the_data_needs_the_token(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.content == dashboard_page()
        for path in ("/metrics", "/api/telemetry"):
            assert (await client.get(path)).status_code == 401, path
        metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert metrics.status_code == 200
        assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert 'dumont_pair_state{pair="main",state="syncing"} 1.0' in metrics.text
        by_query = await client.get(f"/api/telemetry?token={TOKEN}")
        assert by_query.status_code == 200


async def test_api_telemetry_gives_what_the_dashboard_shows_beyond_status(served: Served,
                                                                          controller: FakeController) -> None:
    controller.pairs["main"].memory = Memory(alerted=frozenset({"sync_failures"}))
    served.telemetry.sampler.pair("main").charge("gpu", 0.36, controller.ctx.clock() - 600)
    async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        body = (await client.get("/api/telemetry")).json()
    main = body["pairs"]["main"]
    assert main["cost_dollars"] == pytest.approx(0.06)
    assert main["alerts"] == ["sync_failures"]
    assert main["disk_used_ratio"] is None and main["probes"] == {}
    assert body["notifications"] is False and body["gpu_max_price_per_hour"] == 0.5


async def test_a_dashboard_left_open_does_not_hold_the_controller_s_stop(controller: FakeController,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The page long-polls the event log for 25 s at a time; stopping the API cuts such a poll short."""
    monkeypatch.delenv("DUMONT_NOTIFY_URLS", raising=False)
    polling = asyncio.Event()

    @web.middleware
    async def seen(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/api/events":
            polling.set()  # the handler runs on from here to its wait without yielding
        return await handler(request)

    telemetry = Telemetry(controller)  # type: ignore[arg-type]
    api = ApiServer(controller, TOKEN, "127.0.0.1", 0,  # type: ignore[arg-type]
                    (*telemetry.extensions, lambda app: app.middlewares.append(seen)))
    await api.start()
    async with httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        last = controller.ctx.store.last_event_id()
        poll = asyncio.create_task(client.get(f"/api/events?after={last}&wait=60", timeout=90))
        await asyncio.wait_for(polling.wait(), 10)
        await asyncio.wait_for(api.stop(), 10)
        with contextlib.suppress(httpx.HTTPError):
            await poll
