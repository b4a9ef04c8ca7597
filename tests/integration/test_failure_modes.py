"""Failures other than a clean kill: partitions, flapping, outbid, preemption, the controller's own network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dumont.localcloud.link import LinkSpec
from tests.integration.stack import Stack, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # timings and lags measured: run alone


def synced(status: dict[str, Any]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


def failed_over(status: dict[str, Any]) -> bool:
    return status["state"] in ("failed_over", "recovering")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A protected pair that does not recover on its own (so the failed-over state can be examined), every host
    behind a link (a plain one until a test changes it)."""
    async for s in running_stack(tmp_path, {"auto_recovery": False}, link=LinkSpec()):
        await s.wait_for("the first pass", synced, 120)
        yield s


async def test_a_blackholed_gpu_fails_over_by_three_strikes_and_can_never_write_again(stack: Stack) -> None:
    """Given a synced pair, when the GPU's link drops every packet (no reset: a true partition; its provider still
    says it runs) and the pair fails over on three failed checks, then after the link heals the old GPU cannot
    push to the standby (its pair key is refused) and no file of the pair changes because of it."""
    gpu = stack.host(stack.status()["primary"]["instance_id"])
    (gpu.workspace / "data.bin").write_bytes(b"before")
    seq = stack.status()["last_sync"]["seq"]
    await stack.wait_for("a pass with data.bin", lambda s: s["last_sync"]["seq"] > seq + 1, 30)
    stack.cloud.pool.set_link(gpu.name, LinkSpec(blackhole=True))
    status = await stack.wait_for("the failover", failed_over, 30)
    assert "failed 3 consecutive health checks" in stack.events("failover")[-1]["reason"]
    cpu = stack.host(status["primary"]["instance_id"])
    # The provider fence stops the old GPU; it then comes back anyway (healed, restarted by its owner).
    await stack.wait_for("the provider fence", lambda _: bool(stack.events("fenced")), 30)
    stack.cloud.pool.set_link(gpu.name, LinkSpec())
    await stack.cloud.pool.start(gpu.name)

    (gpu.workspace / "data.bin").write_bytes(b"zombie write")
    before = sorted((p.relative_to(cpu.base), p.stat().st_mtime_ns) for p in cpu.base.rglob("*") if p.is_file()
                    and "log" not in p.parts)
    # The zombie tries exactly what it did before the failover: a direct push with its pair key.
    zombie = stack.controller.ctx.hosts.agent(stack.pair.failed[-1])  # type: ignore[attr-defined]
    run = await zombie.push(["data.bin"], timeout=30, io_timeout=10)
    assert run.returncode != 0
    assert "refused" in run.stderr or "Permission denied" in run.stderr, run.stderr
    after = sorted((p.relative_to(cpu.base), p.stat().st_mtime_ns) for p in cpu.base.rglob("*") if p.is_file()
                   and "log" not in p.parts)
    assert before == after
    assert (cpu.workspace / "data.bin").read_bytes() == b"before"


async def test_a_flapping_gpu_never_fails_over(stack: Stack) -> None:
    """Given a synced pair, when the GPU alternates between answering and not for 15 s (about 7 flaps, five times
    the three-check threshold), then nothing fails over. Every flapping pattern is covered on virtual time in
    tests/unit/core/test_decide.py; this shows it on real hosts."""
    gpu = stack.host(stack.status()["primary"]["instance_id"])
    loop = asyncio.get_running_loop()
    end = loop.time() + 15
    while loop.time() < end:
        await stack.cloud.pool.partition(gpu.name)
        await stack.next_ticks(1)
        await stack.cloud.pool.heal(gpu.name)
        await stack.next_ticks(1)
    assert stack.events("failover") == []
    assert stack.status()["primary"]["instance_id"] == gpu.instance_id


async def test_outbid_fails_over_without_waiting_for_the_threshold(stack: Stack) -> None:
    """Given a synced pair, when the provider reports the GPU outbid, then the pair fails over on the next check."""
    gpu = stack.host(stack.status()["primary"]["instance_id"])
    vast = next(e for e in stack.cloud.emulators if e.name == "vast")
    outbid_at = time.time()
    await vast.fault("outbid", gpu)
    await stack.wait_for("the failover", failed_over, 30)
    failover = stack.events("failover")[-1]
    assert "the provider reports the GPU outbid" in failover["reason"]
    assert stack.pair.timings["decided_at"] - outbid_at < 2 * stack.config.health_check_interval + 1


async def test_a_preempted_standby_is_brought_back_and_the_gpu_untouched(stack: Stack) -> None:
    """Given a synced pair, when the standby is preempted, then it is started again (its disk kept, on a new address)
    and synced, and the GPU keeps serving with its files untouched."""
    status = stack.status()
    gpu_id, old_standby = status["primary"]["instance_id"], status["standby"]["instance_id"]
    gpu = stack.host(gpu_id)
    (gpu.workspace / "train.log").write_text("epoch 1\n")
    gcp = next(e for e in stack.cloud.emulators if e.name == "gcp")
    seq = status["last_sync"]["seq"]
    await gcp.fault("preempt", stack.host(old_standby))
    status = await stack.wait_for("the standby back", lambda s: synced(s) and bool(stack.events("standby_restarted"))
                                  and s["last_sync"]["seq"] > seq, 120)
    assert status["primary"]["instance_id"] == gpu_id and stack.events("failover") == []
    assert status["standby"]["instance_id"] == old_standby and stack.events("standby_created")[1:] == []
    assert (gpu.workspace / "train.log").read_text() == "epoch 1\n"
    new = stack.host(status["standby"]["instance_id"])
    snapshots = sorted((new.data_dir / "snapshots").iterdir())
    assert (snapshots[-1] / "tree" / "train.log").read_text() == "epoch 1\n"
    assert any("standby" in e["reason"] for e in stack.events("state"))


async def test_when_the_controllers_network_is_down_nothing_fails_over(tmp_path: Path) -> None:
    """Given a synced pair, when the controller's own network is down and the GPU dies, then nothing fails over and
    one clear event says why; when the network is back, the failover happens."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    overrides = {"auto_recovery": False, "health": {"network_check_targets": [f"127.0.0.1:{port}"]}}
    async for stack in running_stack(tmp_path, overrides):
        await stack.wait_for("the first pass", synced, 120)
        gpu = stack.host(stack.status()["primary"]["instance_id"])
        server.close()
        await server.wait_closed()
        await stack.cloud.pool.kill(gpu.name)
        await stack.next_ticks(6)
        assert stack.events("failover") == []
        alerts = [e for e in stack.events("alert") if e["data"].get("alert") == "controller_network"]
        assert len(alerts) == 1, alerts
        assert "cannot reach the network" in alerts[0]["reason"]
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        await stack.wait_for("the failover once the network is back", failed_over, 30)
    server.close()
