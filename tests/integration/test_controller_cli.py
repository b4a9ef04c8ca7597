"""The controller's command line against a running controller: status, events, and every intent."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dumont.transport.ssh import run_local
from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.slow


def synced(status: dict[str, Any]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in running_stack(tmp_path, {"auto_recovery": False}):
        await s.wait_for("the first pass", synced, 120)
        yield s


async def dumont(stack: Stack, *args: str) -> tuple[int, str, str]:
    """Run the CLI as a separate process (without blocking the loop the controller runs in)."""
    result = await run_local([sys.executable, "-m", "dumont", *args, "--config", str(stack.config_path)],
                             timeout=120, what=f"dumont {args[0]}")
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_status_json_has_every_field(stack: Stack) -> None:
    """`dumont status --json` prints one object with the API URLs and, per pair, the SPEC's fields."""
    code, out, err = await dumont(stack, "status", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {"api_url", "metrics_url", "dashboard_url", "pairs"} <= set(data)
    pair = data["pairs"][0]
    for field in ("name", "state", "epoch", "endpoint", "primary", "standby", "last_sync", "lag_seconds"):
        assert field in pair, field
    for role in ("primary", "standby"):
        assert {"provider", "instance_id", "ssh_host", "ssh_port", "role"} <= set(pair[role])
    assert {"time", "epoch", "seq"} <= set(pair["last_sync"])
    assert pair["endpoint"].startswith("127.0.0.1:") and pair["state"] == "syncing"
    code, out, _ = await dumont(stack, "status")
    assert code == 0 and "main: syncing" in out


async def test_intents_are_recorded_and_carried_out_by_the_loop(stack: Stack) -> None:
    """pause, resume, sync and failover go through the API as intents; the loop takes them and says so."""
    code, out, err = await dumont(stack, "pause", "--json")
    assert code == 0, err
    assert json.loads(out)["outcome"] == "paused"
    await stack.wait_for("paused", lambda s: s["state"] == "paused", 10)
    code, out, _ = await dumont(stack, "resume", "--json")
    assert json.loads(out)["outcome"] == "resumed"
    seq = stack.status()["last_sync"]["seq"]
    code, out, _ = await dumont(stack, "sync", "--json")
    assert code == 0 and json.loads(out)["kind"] == "sync"
    await stack.wait_for("the requested pass", lambda s: s["last_sync"]["seq"] > seq, 30)
    code, out, _ = await dumont(stack, "failover", "--json")
    assert code == 0 and json.loads(out)["outcome"] == "accepted"
    await stack.wait_for("the failover", lambda s: s["state"] == "failed_over", 30)
    assert "an operator asked for a failover" in stack.events("failover")[-1]["reason"]

    code, out, _ = await dumont(stack, "events", "--all", "--json")
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]
    assert kinds.count("intent") == 4 and "failover" in kinds


async def test_bad_requests_are_refused_with_exit_2(stack: Stack) -> None:
    code, _, err = await dumont(stack, "failover", "--pair", "nope")
    assert code == 2 and "--pair 'nope': no such pair" in err
    code, _, err = await dumont(stack, "events", "--after", "soon")
    assert code == 2 and "soon" in err
