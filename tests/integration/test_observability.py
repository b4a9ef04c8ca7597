"""Seeing a failover: scrapes that promtool accepts, a notification that arrives, a dashboard that shows it live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dumont.telemetry.promtool import check_metrics, scrape_metrics
from tests.integration.browser import Browser
from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SECRET = "s3cret-hook-token"


@dataclass
class Receiver:
    """A webhook on 127.0.0.1 that records what apprise's ``json://`` posts to it."""

    port: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """The apprise URL of this receiver (its path carries a token, as real webhooks do)."""
        return f"json://hook-user:{SECRET}@127.0.0.1:{self.port}/hooks/{SECRET}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append({**body, "path": request.path, "auth": request.headers.get("Authorization", "")})
        self.changed.set()
        return web.json_response({"ok": True})

    async def wait_for(self, what: str, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 60) -> dict[str, Any]:
        """The first notification matching ``predicate``, waiting for it at most ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not (found := [n for n in self.received if predicate(n)]):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} notification within {timeout:g} s; received: {self.received}") from None
        return found[0]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{token}", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield hook
    await runner.cleanup()


@contextlib.asynccontextmanager
async def stack_running(root: Path, overrides: dict[str, Any]) -> AsyncIterator[Stack]:
    """A running stack with these config overrides, torn down even when the test fails inside it."""
    async with contextlib.aclosing(running_stack(root, overrides)) as stacks:  # type: ignore[type-var]
        async for stack in stacks:
            yield stack


def promtool_path() -> str:
    """Debian's promtool; missing, it fails the test (it is a declared system dependency)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("these tests need promtool: run `make system-deps` (Debian package `prometheus`)")
    return path


def sample(exposition: bytes, name: str, **labels: str) -> float | None:
    """The value of one sample in an exposition (None when absent)."""
    for line in exposition.decode().splitlines():
        metric, _, value = line.rpartition(" ")
        if not metric.startswith(name) or line.startswith("#"):
            continue
        found_name, _, rest = metric.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if found_name == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


async def scrape_and_check(stack: Stack, when: str) -> bytes:
    """A scrape as Prometheus takes it, which promtool must accept without a single complaint."""
    assert stack.api is not None
    exposition = await scrape_metrics(stack.api.url, stack.api.token)
    (ARTIFACTS / f"metrics-{when}.txt").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"metrics-{when}.txt").write_bytes(exposition)
    verdict = await check_metrics(exposition)
    assert verdict.ok, f"promtool check metrics on the scrape {when}: {verdict.output}"
    return exposition


def synced(status: dict[str, Any]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


def recovered_from(old_gpu: str) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        primary = status["primary"]
        return synced(status) and primary["role"] == "gpu" and primary["instance_id"] != old_gpu

    return check


def titled(title: str) -> Callable[[dict[str, Any]], bool]:
    return lambda n: n["title"] == title


async def test_a_failover_is_notified_once_measured_and_logged_once(tmp_path: Path, receiver: Receiver,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Given a synced pair whose notifications go to a local JSON webhook, when the GPU host is killed, then the
    webhook receives "dumont: main failover" with the failover's reason, then the recovery's start and end; every
    scrape passes promtool and counts the failover, the detection, the switch and the recovery; each state change
    is one log line with its reason; and the webhook's token appears in no log line."""
    promtool_path()
    caplog.set_level(logging.DEBUG, logger="apprise")
    caplog.set_level(logging.DEBUG, logger="urllib3")
    caplog.set_level(logging.INFO, logger="dumont")
    urls = tmp_path / "notify_urls"
    urls.write_text(f"# the test's webhook\n{receiver.url}\n")
    urls.chmod(0o600)
    async with stack_running(tmp_path / "stack", {"notifications": {"urls_file": str(urls)}}) as stack:
        await stack.wait_for("the first pass to the new standby", synced, 120)
        before = await scrape_and_check(stack, "synced")
        assert sample(before, "dumont_pair_state", pair="main", state="syncing") == 1
        assert (sample(before, "dumont_sync_passes_total", pair="main") or 0) >= 1
        assert sample(before, "dumont_standby_lag_seconds", pair="main") is not None
        gpu_id = stack.status()["primary"]["instance_id"]

        await stack.cloud.pool.kill(stack.host(gpu_id).name)
        note = await receiver.wait_for("failover", titled("dumont: main failover"), 60)
        failover = stack.events("failover")[-1]
        assert note["message"] == failover["reason"], note
        assert "failed over to the standby" in note["message"]
        assert note["type"] == "failure"
        assert note["path"] == f"/hooks/{SECRET}" and note["auth"].startswith("Basic ")

        await stack.wait_for("the recovery", recovered_from(gpu_id), 180)
        started = await receiver.wait_for("recovery start", titled("dumont: main recovery_started"), 30)
        ended = await receiver.wait_for("recovery end", titled("dumont: main recovered"), 30)
        assert started["message"] == stack.events("recovery_started")[-1]["reason"]
        assert ended["message"] == stack.events("recovered")[-1]["reason"] and ended["type"] == "success"
        after = await scrape_and_check(stack, "recovered")
        events = stack.events()

    assert sample(after, "dumont_failovers_total", pair="main") == 1
    assert sample(after, "dumont_recoveries_total", pair="main", outcome="succeeded") == 1
    assert sample(after, "dumont_recovery_duration_seconds_count", pair="main") == 1
    assert sample(after, "dumont_failover_detection_seconds_count", pair="main") == 1
    assert (sample(after, "dumont_failover_switch_seconds_sum", pair="main") or 9) <= 1.0
    assert sample(after, "dumont_pair_epoch", pair="main") == 3
    assert sample(after, "dumont_notifications_total", event="failover", outcome="sent") == 1
    titles = [n["title"] for n in receiver.received]
    assert titles.count("dumont: main failover") == 1, titles
    assert "dumont: main standby_lost" not in titles, "creating the first standby is not a loss"
    assert_one_line_per_state_change(caplog, events)
    assert SECRET not in caplog.text, "a notification URL's token reached a log line"


def assert_one_line_per_state_change(caplog: pytest.LogCaptureFixture, events: list[dict[str, Any]]) -> None:
    """Each state change is told once, by one line that names both ends and gives the reason."""
    lines = [r.getMessage() for r in caplog.records if r.name == "dumont.controller" and r.levelno >= logging.INFO]
    changes = [e for e in events if e["kind"] == "state"]
    assert changes, "the story has state changes"
    for change in changes:
        line = f"main: state {change['data']['from']} -> {change['data']['to']}: {change['reason']}"
        assert lines.count(line) == 1, f"{line!r} logged {lines.count(line)} times"
    assert len([line for line in lines if line.startswith("main: state ")]) == len(changes)
    for event in events:
        if event["pair"] == "main":
            assert lines.count(f"main: {event['reason']}") == 0, f"the decision was logged apart: {event['reason']}"


async def test_the_dashboard_shows_the_pair_failed_over_live(tmp_path: Path) -> None:
    """Given a synced pair shown on the dashboard, when the GPU host is killed, then the open page (never reloaded)
    shows the pair failed over, with the failover's reason in its state line and timeline, the CPU as primary and
    no standby; a screenshot of it is kept in artifacts/."""
    async with stack_running(tmp_path / "stack", {"auto_recovery": False}) as stack:
        status = await stack.wait_for("the first pass to the new standby", synced, 120)
        assert stack.api is not None
        async with Browser(tmp_path / "chromium") as browser:
            await browser.open(f"{stack.api.url}/?token={stack.api.token}")
            await browser.wait_for_text("main", "syncing", "Timeline", "standby_replaced", status["endpoint"])

            await stack.cloud.pool.kill(stack.host(status["primary"]["instance_id"]).name)
            failed = await stack.wait_for("the failover", lambda s: s["state"] == "failed_over", 60)
            reason = stack.events("failover")[-1]["reason"]
            text = await browser.wait_for_text("failed_over", reason, timeout=30)
            shot = await browser.screenshot(ARTIFACTS / "dashboard-failover.png")
            (ARTIFACTS / "dashboard-failover.txt").write_text(text)
            print(f"\ndashboard screenshot: {shot}")

    cpu = failed["primary"]
    assert f"CPU {cpu['provider']} {cpu['instance_id']}" in text, text
    assert "Standby\nnone" in text, text
    assert re.search(r"\bfailover\b", text) and reason in text
    assert shot.stat().st_size > 10_000
