"""Providers as plug-ins: a second GPU market rents beside Vast, and each failed GPU goes back through its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dumont.core.failover import fail_over
from dumont.core.fakes import FakeMarket, offer
from dumont.core.recovery import recover
from dumont.providers.registry import Plugin, register, unregister
from tests.unit.core.world import World, gpu_ref, make_world, synced_pair


@pytest.fixture(autouse=True)
def spotlab() -> Iterator[None]:
    """A market registered by the test, as a third-party plug-in would be."""

    async def never_opened(config: Any, table: Any) -> Any:
        raise AssertionError("the test opens its fake itself")

    register(Plugin("spotlab", "gpu", never_opened))
    yield
    unregister("spotlab")


def two_markets(tmp_path: Path) -> tuple[World, FakeMarket]:
    world = make_world(tmp_path, {"gpu_markets": ["vast", "spotlab"]})
    lab = FakeMarket(world.clock, world.hosts, [offer(f"s{n}", price=0.40 + n / 100, provider="spotlab")
                                                for n in range(1, 4)], name="spotlab", first_id=900)
    world.ctx.markets["spotlab"] = lab
    return world, lab


async def recover_once(world: World, rt: Any) -> None:
    op_id = world.ctx.store.start_operation("main", "recovery", "searching")
    await recover(world.ctx, rt, op_id)
    row = world.ctx.store.operation(op_id)
    assert row is not None and row.succeeded, row.error if row else "no operation"


async def test_the_cheapest_market_is_rented_and_the_failed_gpu_goes_back_through_its_own(tmp_path: Path) -> None:
    world, lab = two_markets(tmp_path)
    async for rt in synced_pair(world):
        # Vast's offers cost 0.21-0.28, spotlab's 0.41-0.43: after a failover the cheaper Vast GPU is rented.
        await fail_over(world.ctx, rt, "the provider reports the GPU offline")
        await recover_once(world, rt)
        assert rt.primary is not None and rt.primary.provider == "vast"
        assert world.market.destroyed == ["30000001"] and lab.destroyed == []
        # Then Vast has nothing left within the limits: the next GPU comes from spotlab...
        world.market.offers.clear()
        vast_gpu = rt.primary
        await fail_over(world.ctx, rt, "the provider reports the GPU outbid")
        await recover_once(world, rt)
        assert rt.primary is not None and rt.primary.provider == "spotlab"
        assert vast_gpu.instance_id in world.market.destroyed, "the failed Vast GPU, destroyed through Vast"
        # ...and when it fails too, it is destroyed through spotlab, not Vast.
        world.market.offers.append(offer("9", price=0.2))
        lab_gpu = rt.primary
        await fail_over(world.ctx, rt, "the GPU failed 3 consecutive health checks")
        await recover_once(world, rt)
        assert lab.destroyed == [lab_gpu.instance_id]
        assert all(i != lab_gpu.instance_id for i in world.market.destroyed)


async def test_a_pair_whose_gpu_is_on_the_second_market_is_probed_there(tmp_path: Path) -> None:
    world, lab = two_markets(tmp_path)
    async for rt in synced_pair(world):
        lab._new("77", machine_id="s-m", label="dumont-main")
        ref = gpu_ref(world, "30000001")
        rt.primary = type(ref)("spotlab", "77", ref.ssh_host, ref.ssh_port, "root", "gpu", "spotlab-77")
        lab.instances["77"].state = type(lab.instances["77"].state)("offline")
        instance = await world.ctx.instance(rt.primary)
        assert instance.provider == "spotlab" and str(instance.state) == "offline"
