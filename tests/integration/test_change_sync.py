"""Change-triggered sync on real hosts (replication.on_change): a write on the GPU reaches the standby within a
second or two, not at the next interval, and a continuous writer never starves or stacks passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.stack import Stack, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # timings and lags measured: run alone


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    # An interval far longer than the test: only the watcher can start these passes.
    async for s in running_stack(tmp_path, {"sync_interval_seconds": 300,
                                            "replication": {"on_change": True, "change_debounce_seconds": 0.2}}):
        yield s


def synced(status: dict[str, object]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


async def test_a_write_on_the_gpu_reaches_the_standby_within_seconds(stack: Stack) -> None:
    await stack.wait_for("the first pass", synced, 120)
    gpu = stack.host(stack.status()["primary"]["instance_id"])
    lags = []
    for n in range(3):
        seq = stack.status()["last_sync"]["seq"]
        written = time.time()
        (gpu.workspace / f"note-{n}.txt").write_text(f"change {n}\n")
        status = await stack.wait_for(f"a pass after change {n}", lambda s, seq=seq: s["last_sync"]["seq"] > seq, 20)
        lags.append(status["last_sync"]["time"] - written)
    print("write -> pass committed: " + ", ".join(f"{lag:.2f} s" for lag in lags))
    assert max(lags) < 3, lags
    cpu = stack.host(stack.status()["standby"]["instance_id"])
    newest = sorted((cpu.data_dir / "snapshots").iterdir())[-1]
    assert (newest / "tree" / "note-2.txt").read_text() == "change 2\n"


async def test_a_continuous_writer_gets_passes_one_at_a_time_and_none_starves(stack: Stack) -> None:
    await stack.wait_for("the first pass", synced, 120)
    gpu = stack.host(stack.status()["primary"]["instance_id"])
    seq = stack.status()["last_sync"]["seq"]
    stop = time.monotonic() + 4
    n = 0
    while time.monotonic() < stop:  # a record every 50 ms for 4 s
        (gpu.workspace / "log.txt").write_text(f"record {n}\n")
        n += 1
        await asyncio.sleep(0.05)  # the writer's pace (a record every 50 ms), not a wait for anything
    status = await stack.wait_for("the pass after the writer stopped", lambda s: s["last_sync"]["seq"] > seq + 1, 20)
    passes = [e for e in stack.events("sync_failed")]
    assert passes == [], "no pass failed (none stacked on another)"
    assert status["last_sync"]["seq"] - seq >= 2, "the writer got passes while it wrote"
