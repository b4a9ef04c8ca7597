"""The controller on PostgreSQL: the same story as on SQLite, its state in the database the config names."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dumont.store.postgres import PostgresStore
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
