"""Failover on fakes: take over (fence, promote, then the epoch), switch; an epoch taken by compare-and-set;
nothing half done, and a standby never left ahead of the controller."""

from __future__ import annotations

from pathlib import Path

import pytest

from dumont.core.failover import fail_over
from dumont.core.model import PairState
from dumont.core.pair import run_sync
from dumont.errors import DumontError, EpochConflict, IntegrityError
from tests.unit.core.world import make_world, synced_pair


async def test_a_failover_fences_promotes_and_switches_then_reports_its_outcome(tmp_path: Path) -> None:
    """Given a synced pair, failing over moves the epoch on in the store, fences the standby against the old GPU,
    makes its snapshot the workspace, points the endpoint at it, and leaves the state to the next decision."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        gpu, cpu = rt.primary, rt.standby
        assert gpu is not None and cpu is not None
        await fail_over(world.ctx, rt, "the GPU failed 3 consecutive health checks")
        assert world.ctx.store.get_pair("main").epoch == 2  # type: ignore[union-attr]
        standby = world.machine(cpu)
        assert standby.epoch == 2 and standby.paired_for is None, "fenced: the old GPU's key no longer works"
        assert standby.workspace == {"model.pt": b"weights", "data.csv": b"a,b\n1,2\n"}
        assert rt.endpoint.stats().target == (cpu.ssh_host, cpu.ssh_port)
        assert (rt.primary, rt.standby, rt.failed, rt.epoch) == (cpu, None, [gpu], 2)
        assert rt.state == PairState.SYNCING, "only decide() changes the state"
        assert rt.outcome is not None and rt.outcome.kind == "failover" and "3 consecutive" in rt.outcome.detail
        assert [op for op, alias in world.hosts.calls if alias == cpu.alias and op.startswith(("take", "prom"))] \
            == ["take_over"], "fenced and promoted in one step on the standby"
        snippet = (world.ctx.layout.ssh_dir("main") / "config").read_text()
        assert "User dumont" in snippet, "the user's ssh_config names the CPU's login (Google refuses root)"
        known = (world.ctx.layout.ssh_dir("main") / "known_hosts").read_text().splitlines()
        assert known[0].startswith("@cert-authority dumont-main ssh-ed25519 "), "the user trusts the pair's CA"
        assert known[1:] == [f"@revoked * {world.hosts.host_key(gpu)}"], "the old GPU's certificate is worthless"
        assert world.kinds().count("failover") == 1


async def test_a_second_writer_that_moved_the_epoch_stops_the_failover_before_anything_is_fenced(
        tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        world.ctx.store.advance_epoch("main", 1)  # another controller got there first
        with pytest.raises(EpochConflict):
            await fail_over(world.ctx, rt, "the provider reports the GPU offline")
        assert world.machine(rt.standby).epoch == 1 and ("take_over", rt.standby.alias) not in world.hosts.calls  # type: ignore[union-attr]
        assert rt.endpoint.stats().target == (rt.primary.ssh_host, rt.primary.ssh_port)  # type: ignore[union-attr]


async def test_a_promotion_that_fails_leaves_the_endpoint_on_the_gpu(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        gpu = rt.primary
        assert gpu is not None and rt.standby is not None
        world.machine(rt.standby).fail["take_over"] = IntegrityError("the candidate is incomplete")
        with pytest.raises(DumontError, match="incomplete"):
            await fail_over(world.ctx, rt, "an operator asked for a failover")
        assert rt.primary == gpu and rt.endpoint.stats().target == (gpu.ssh_host, gpu.ssh_port)
        assert rt.outcome is None and rt.paired_epoch is None, "the pair key may be gone: pair again"


async def test_a_failed_take_over_leaves_the_standby_behind_the_controller_and_the_next_pass_works(
        tmp_path: Path) -> None:
    """hostile-review.md #5: a standby fenced ahead of the controller refused every later pass."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        standby = rt.standby
        assert standby is not None
        world.machine(standby).snapshots = []  # nothing to promote: the take-over fails
        with pytest.raises(DumontError):
            await fail_over(world.ctx, rt, "an operator asked for a failover")
        assert world.machine(standby).epoch == 1 and rt.epoch == 2
        world.machine(standby).snapshots = [{"model.pt": b"weights"}]
        report = await run_sync(world.ctx, rt)
        assert report is not None and world.machine(standby).epoch == 2 and rt.sync.consecutive_failures == 0


async def test_a_standby_already_ahead_of_the_controller_is_reconciled_not_left_refusing(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        standby = rt.standby
        assert standby is not None
        world.machine(standby).epoch = 4  # fenced by an older version, or a take-over whose answer was lost
        rt.paired_epoch = None
        report = await run_sync(world.ctx, rt)
        assert report is not None and rt.epoch == 4 and world.ctx.store.get_pair("main").epoch == 4  # type: ignore[union-attr]
        assert world.reasons("epoch_reconciled") == [
            f"{standby.alias} was at epoch 4, ahead of the controller's 1; the pair moved up to it"]


async def test_the_old_gpu_is_stopped_through_its_provider_in_the_background(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        await fail_over(world.ctx, rt, "the provider reports the GPU outbid")
        for _ in range(5):
            await world.clock.sleep(0)
        assert str(world.market.instances["30000001"].state) == "stopped"
        assert world.reasons("fenced") == ["the old GPU 30000001 was stopped through its provider"]
