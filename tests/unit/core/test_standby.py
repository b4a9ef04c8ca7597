"""Protecting the standby on fakes: a preempted one started again, a lost one replaced, a bad new one deleted."""

from __future__ import annotations

from pathlib import Path

from dumont.core.pair import PairRuntime
from dumont.core.standby import replace_standby
from dumont.errors import ReplicationError
from tests.unit.core.world import World, make_world, synced_pair


async def run_replacement(world: World, rt: PairRuntime) -> tuple[bool, str | None]:
    op_id = world.ctx.store.start_operation("main", "replace_standby", "creating")
    await replace_standby(world.ctx, rt, op_id)
    row = world.ctx.store.operation(op_id)
    assert row is not None and row.finished_at is not None
    return bool(row.succeeded), row.error


async def test_a_preempted_standby_is_started_again_with_its_disk_and_no_new_vm(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        old = rt.standby
        assert old is not None
        await world.cloud.preempt(old.instance_id)
        succeeded, error = await run_replacement(world, rt)
        assert succeeded, error
        assert rt.standby is not None and rt.standby.instance_id == old.instance_id
        assert rt.standby.ssh_port != old.ssh_port, "it came back on another address, followed"
        assert sorted(world.cloud.instances) == [old.instance_id] and world.cloud.destroyed == []
        assert world.reasons("standby_restarted") and not world.reasons("standby_created")
        assert ("run_pass", rt.standby.alias) in world.hosts.calls, "a pass landed on it before it counts as back"
        assert rt.primary is not None and world.market.destroyed == [], "the GPU is never touched"


async def test_a_deleted_standby_is_replaced_by_a_new_vm_and_forgotten(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        old = rt.standby
        assert old is not None
        await world.cloud.delete(old.instance_id)
        succeeded, error = await run_replacement(world, rt)
        assert succeeded, error
        assert rt.standby is not None and rt.standby.instance_id.startswith("dumont-main-standby-")
        assert rt.standby.instance_id != old.instance_id and rt.standby.ssh_user == "dumont"
        assert world.machine(rt.standby).snapshots[-1] == world.machine(rt.primary).workspace
        assert world.machine(rt.standby).certified


async def test_a_new_standby_that_never_answers_is_deleted_before_the_operation_ends(tmp_path: Path) -> None:
    """The leak the review found: each failed attempt used to leave one more billed VM behind."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        old = rt.standby
        assert old is not None
        await world.cloud.delete(old.instance_id)
        for attempt in range(1, 6):
            world.cloud.unreachable_next = 1
            succeeded, error = await run_replacement(world, rt)
            assert not succeeded and "did not accept SSH" in (error or ""), attempt
            assert world.cloud.instances == {}, f"attempt {attempt} left a VM behind"
        assert len(world.reasons("standby_deleted")) == 5 and rt.standby == old
        succeeded, error = await run_replacement(world, rt)
        assert succeeded, error
        assert list(world.cloud.instances) == [rt.standby.instance_id]  # type: ignore[union-attr]


async def test_a_new_standby_whose_first_pass_keeps_failing_is_deleted(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        await world.cloud.delete(rt.standby.instance_id)  # type: ignore[union-attr]
        name = "dumont-main-standby-1"  # the operation's VM, named by its id
        world.hosts.machine(f"gcp-{name}").fail["run_pass"] = ReplicationError("the standby has 1 MB free")
        succeeded, error = await run_replacement(world, rt)
        assert not succeeded and "first full pass" in (error or "") and "1 MB free" in (error or "")
        assert world.cloud.instances == {} and name in world.cloud.destroyed


async def test_with_the_gpu_failing_a_standby_already_running_again_is_taken_as_it_is(tmp_path: Path) -> None:
    """An earlier attempt started the preempted standby and then failed to fill it from a GPU that was failing
    meanwhile: the attempt that only restarts takes it as it is (its disk is what a failover needs), no new VM."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        old = rt.standby
        assert old is not None and rt.primary is not None
        await world.cloud.preempt(old.instance_id)
        await world.cloud.start(old.instance_id)  # running again, on another address
        world.machine(rt.primary).reachable = False
        op_id = world.ctx.store.start_operation("main", "replace_standby", "creating", {"only_restart": True})
        await replace_standby(world.ctx, rt, op_id)
        row = world.ctx.store.operation(op_id)
        assert row is not None and row.succeeded, row
        assert rt.standby is not None and rt.standby.ssh_port != old.ssh_port
        assert sorted(world.cloud.instances) == [old.instance_id] and world.cloud.calls["start"] == 1
        assert ("run_pass", rt.standby.alias) not in world.hosts.calls, "nothing copied from the failing GPU"
