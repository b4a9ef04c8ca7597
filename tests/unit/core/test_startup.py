"""Start-up on fakes: adopting a GPU attaches the controller's key through its market; a known pair resumes."""

from __future__ import annotations

from pathlib import Path

from dumont.core.model import PairState
from dumont.core.startup import load_pair, reach_hosts, start_endpoint
from dumont.store.sqlite import PairRow
from tests.unit.core.world import gpu_ref, make_world


async def test_adopting_a_gpu_attaches_the_key_readies_it_and_holds_the_endpoint_until_it_is_rekeyed(
        tmp_path: Path) -> None:
    world = make_world(tmp_path, {"controller": {"endpoint": "in-process"}})
    gpu = world.market._new("30000001", machine_id="m0", label="my-own-gpu")
    world.clock.now = gpu.ready_at + 1
    rt = await load_pair(world.ctx, world.ctx.config.pairs[0])
    try:
        controller_key = world.ctx.controller_public_key()
        assert controller_key in gpu.keys, "attached through the market: account keys never reach it"
        assert rt.state == PairState.STARTING and rt.epoch == 1 and rt.standby is None
        assert world.ctx.store.held_hosts("main") == [("vast", "30000001", "gpu")]
        await start_endpoint(world.ctx, rt)
        assert rt.endpoint.stats().held, "no user reaches a GPU that still shows its own host key"
        await reach_hosts(world.ctx, rt)
        machine = world.machine(rt.primary)
        assert machine.certified and ("ready", rt.primary.alias) in world.hosts.calls  # type: ignore[union-attr]
        assert not rt.endpoint.stats().held
        assert world.reasons("adopted") == ["protecting GPU 30000001; a standby will be created"]
    finally:
        await rt.endpoint.stop()


async def test_a_known_pair_resumes_as_it_was_with_its_operation(tmp_path: Path) -> None:
    world = make_world(tmp_path, {"controller": {"endpoint": "in-process"}})
    world.market._new("30000001")
    ref = gpu_ref(world, "30000001")
    world.ctx.store.save_pair(PairRow("main", "recovering", 4, ref.as_dict(), None, 0))
    op = world.ctx.store.start_operation("main", "recovery", "restoring", {"instance_id": "30000002"})
    rt = await load_pair(world.ctx, world.ctx.config.pairs[0])
    assert (rt.state, rt.epoch, rt.primary, rt.operation_id) == (PairState.RECOVERING, 4, ref, op)
    assert rt.operation is not None and rt.operation.step == "restoring"
    assert world.reasons("resumed") == ["resumed as recovering at epoch 4 after a controller restart"]
    assert ("attach_keys", "vast-30000001") not in world.hosts.calls
