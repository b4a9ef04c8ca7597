"""The controller on PostgreSQL: the same story as on SQLite, its state in the database the config names."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dumont.errors import StoreUnavailable
from dumont.localcloud.link import LinkRelay, LinkSpec
from dumont.store.postgres import PostgresStore
from tests.conftest import eventually
from tests.integration.stack import running_stack
from tests.postgres import PostgresServer

pytestmark = pytest.mark.slow


async def test_a_controller_on_postgres_fails_over_and_keeps_its_state_there(tmp_path: Path,
                                                                             postgres: PostgresServer) -> None:
    """Given a controller whose [store] url names a PostgreSQL database, when its GPU is killed, then it fails
    over as it does on SQLite, and the pair, the failover event and the rented hosts are in that database (the
    state dir holds no SQLite file)."""
    url = postgres.new_database()
    async for stack in running_stack(tmp_path, {"store": {"url": url}}):
        await stack.wait_for("the first pass", lambda s: s["state"] == "syncing" and s["last_sync"] is not None, 120)
        gpu = stack.host(stack.status()["primary"]["instance_id"])
        await stack.cloud.pool.kill(gpu.name)
        killed = time.time()
        await stack.wait_for("the failover", lambda s: s["state"] in ("failed_over", "recovering"), 30)
        assert not stack.controller.ctx.layout.database.exists()
        store = PostgresStore(url)
        try:
            [failover] = [e for e in store.events(limit=10_000) if e.kind == "failover"]
            assert failover.pair == "main" and failover.at >= killed
            row = store.get_pair("main")
            assert row is not None and row.epoch >= 2 and row.primary is not None
            assert {role for _, _, role in store.held_hosts("main")} >= {"cpu"}
        finally:
            store.close()


async def test_a_store_cut_off_fails_fast_and_connects_again_on_its_own(postgres: PostgresServer) -> None:
    """Given a store reaching PostgreSQL through a link, when the link swallows everything (blackholed: packets
    acknowledged, nothing delivered), then a call fails within the store's I/O bound instead of hanging, the next
    calls fail at once while it reconnects in the background, and once the link heals calls work again."""
    url = postgres.new_database()
    relay = LinkRelay()
    try:
        host, port = url.split("@", 1)[1].split("/", 1)[0].split(":")
        through = relay.add(host, int(port), LinkSpec())
        store = PostgresStore(url.replace(f":{port}/", f":{through}/"), io_timeout=1.0)
        try:
            store.add_event("main", "note", "before the cut")
            relay.set(through, LinkSpec(blackhole=True))
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match="failed"):
                store.add_event("main", "note", "into the void")
            assert time.monotonic() - began < 1.0 + 1.0 + 0.5, "bounded by io_timeout and a second"
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match="connecting again in the background"):
                store.events()
            assert time.monotonic() - began < 0.1, "no caller waits for the reconnect"
            relay.set(through, LinkSpec())

            async def reads_again() -> None:  # the reconnect runs in a thread of its own
                assert [e.reason for e in store.events()] == ["before the cut"]

            await eventually(reads_again, timeout=30, retry_on=(StoreUnavailable,))
        finally:
            store.close()
    finally:
        relay.close()
