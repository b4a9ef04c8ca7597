"""The sampler: disk and price read in the background, cost accumulated, its two alerts raised once until clear."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dumont.core.model import HostRef, PairState
from dumont.errors import HostUnreachable
from dumont.providers.base import Instance, InstanceState
from dumont.telemetry.sampler import Sampler
from tests.unit.telemetry.conftest import Clock, FakeController

GIB = 2**30


@dataclass
class FakeHosts:
    """Prices by instance id and the CPU's disk, as providers and the agent would report them."""

    prices: dict[str, float | None] = field(default_factory=lambda: {"7001": 0.30, "standby-1": None})
    free: int = 60 * GIB
    total: int = 100 * GIB
    reachable: bool = True
    disk_calls: int = 0

    async def instance(self, ref: HostRef) -> Instance:
        if not self.reachable:
            raise HostUnreachable(f"{ref.alias} does not answer")
        return Instance(ref.provider, ref.instance_id, InstanceState.RUNNING, "running",
                        price_per_hour=self.prices.get(ref.instance_id))

    async def disk(self, ref: HostRef) -> tuple[int, int]:
        self.disk_calls += 1
        if not self.reachable:
            raise HostUnreachable("the standby does not answer")
        return self.free, self.total


@pytest.fixture
def hosts(controller: FakeController) -> FakeHosts:
    fake = FakeHosts()
    controller.ctx.instance = fake.instance
    controller.ctx.hosts = fake
    return fake


def alerts(controller: FakeController) -> list[tuple[str, str]]:
    return [(data["alert"], reason) for _, kind, reason, data in controller.events if kind == "alert"]


async def test_the_standby_disk_alert_is_raised_once_and_again_only_after_it_cleared(
        controller: FakeController, hosts: FakeHosts) -> None:
    sampler = Sampler(controller.ctx, controller.pairs)
    await sampler.sample()
    assert alerts(controller) == [] and sampler.pair("main").disk is not None
    assert sampler.pair("main").disk.used_ratio == pytest.approx(0.4)

    hosts.free = 15 * GIB
    await sampler.sample()
    await sampler.sample()
    assert alerts(controller) == [("standby_disk", "the standby's disk is 85% full (alert above 80%; 15.0 GiB free); "
                                                   "old snapshots are pruned first, then add disk")]
    hosts.free = 50 * GIB
    await sampler.sample()
    hosts.free = 10 * GIB
    await sampler.sample()
    assert [kind for kind, _ in alerts(controller)] == ["standby_disk", "standby_disk"]


async def test_the_disk_is_not_asked_while_a_failover_may_be_underway(controller: FakeController,
                                                                     hosts: FakeHosts) -> None:
    """A degraded pair may fail over any moment: the sampler leaves the standby's agent channel alone."""
    controller.pairs["main"].state = PairState.DEGRADED
    await Sampler(controller.ctx, controller.pairs).sample()
    assert hosts.disk_calls == 0


async def test_a_gpu_price_above_the_maximum_or_jumping_by_half_is_an_anomaly(controller: FakeController,
                                                                           hosts: FakeHosts) -> None:
    sampler = Sampler(controller.ctx, controller.pairs)
    await sampler.sample()
    hosts.prices["7001"] = 0.44  # 1.47x the first price: not yet a spike
    await sampler.sample()
    assert alerts(controller) == []
    hosts.prices["7001"] = 0.45
    await sampler.sample()
    hosts.prices["7001"] = 0.60
    await sampler.sample()
    assert alerts(controller) == [("gpu_price", "the GPU 7001 price jumped from $0.300/h to $0.450/h")]
    hosts.prices["7001"] = 0.30
    await sampler.sample()
    hosts.prices["7001"] = 0.55
    await sampler.sample()
    assert alerts(controller)[-1] == ("gpu_price", "the GPU 7001 costs $0.550/h, above gpu_max_price $0.500/h")


async def test_cost_accumulates_per_machine_and_stops_when_the_gpu_leaves(controller: FakeController,
                                                                         hosts: FakeHosts, clock: Clock) -> None:
    sampler = Sampler(controller.ctx, controller.pairs)
    hosts.prices["standby-1"] = 0.01
    await sampler.sample()
    clock.advance(1800)
    await sampler.sample()
    hosts.prices["7001"] = 0.50
    clock.advance(1800)
    assert sampler.pair("main").cost_dollars(clock.now) == pytest.approx({"gpu": 0.30, "cpu": 0.01})

    rt = controller.pairs["main"]
    rt.primary, rt.standby, rt.state = rt.standby, None, PairState.FAILED_OVER  # the failover
    await sampler.sample()
    clock.advance(3600)
    samples = sampler.pair("main")
    assert samples.cost_dollars(clock.now) == pytest.approx({"gpu": 0.30, "cpu": 0.02})
    assert samples.gpu_price is None


async def test_hosts_that_do_not_answer_keep_the_last_samples(controller: FakeController, hosts: FakeHosts,
                                                              clock: Clock) -> None:
    sampler = Sampler(controller.ctx, controller.pairs)
    await sampler.sample()
    hosts.reachable = False
    clock.advance(3600)
    await sampler.sample()
    samples = sampler.pair("main")
    assert samples.disk is not None and samples.gpu_price is not None
    assert samples.cost_dollars(clock.now)["gpu"] == pytest.approx(0.30)
