"""What metrics need from hosts and providers, sampled in the background so a scrape never calls a host.

Every ``interval`` seconds (and soon after a failover, a failback or a new standby) the sampler reads the CPU
machine's disk through its agent and each machine's price through its provider, accumulates what the machines
cost, and raises the two alerts only it can see: the standby's disk above ``standby_disk_alert_fraction``, and a
GPU price anomaly (above ``gpu_max_price``, or up by half since the instance was first priced). Like the alerts of
``decide``, each is raised once and again only after it has cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dumont.core.model import HostRef, PairState
from dumont.errors import DumontError

if TYPE_CHECKING:
    from dumont.core.context import ControllerContext
    from dumont.core.pair import PairRuntime

log = logging.getLogger("dumont.telemetry")

SAMPLE_SECONDS = 15.0
PRICE_JUMP = 1.5  # a price this many times the instance's first price is an anomaly (the seed's "price spike")
# The agent is asked only while no failover can be underway, and briefly: a call holds the host's agent channel.
DISK_STATES = frozenset({PairState.SYNCING, PairState.FAILED_OVER})
WAKING_EVENTS = frozenset({"failover", "recovered", "standby_replaced"})


@dataclass(frozen=True)
class DiskSample:
    """The CPU machine's data disk at one instant."""

    instance_id: str
    free_bytes: int
    total_bytes: int
    at: float

    @property
    def used_ratio(self) -> float:
        """Used share of the disk (0 when its size is unknown)."""
        return 1.0 - self.free_bytes / self.total_bytes if self.total_bytes > 0 else 0.0


@dataclass(frozen=True)
class GpuPrice:
    """What the GPU serving the pair costs, and what it cost when first seen."""

    instance_id: str
    price: float
    first_price: float


@dataclass
class PairSamples:
    """The last samples of one pair, its cost so far, and the alerts the sampler raised."""

    disk: DiskSample | None = None
    gpu_price: GpuPrice | None = None
    alerts: set[str] = field(default_factory=set)
    spent: dict[str, float] = field(default_factory=dict)  # machine ("gpu"/"cpu") -> dollars up to ``rates``' times
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)  # machine -> (dollars per hour, since)

    def cost_dollars(self, now: float) -> dict[str, float]:
        """Dollars per machine so far, the running ones counted up to ``now``."""
        total = dict(self.spent)
        for machine, (price, since) in self.rates.items():
            total[machine] = total.get(machine, 0.0) + price * max(0.0, now - since) / 3600
        return total

    def charge(self, machine: str, price: float | None, now: float) -> None:
        """Close the running period of ``machine`` at ``now`` and start a new one at ``price`` (None: stopped)."""
        if machine in self.rates:
            self.spent[machine] = self.cost_dollars(now)[machine]
            del self.rates[machine]
        if price is not None:
            self.spent.setdefault(machine, 0.0)
            self.rates[machine] = (price, now)


class Sampler:
    """Samples disks and prices of every pair, in the background."""

    def __init__(self, ctx: ControllerContext, pairs: dict[str, PairRuntime], *,
                 interval: float = SAMPLE_SECONDS) -> None:
        self.ctx = ctx
        self.pairs = pairs
        self.interval = interval
        self._samples: dict[str, PairSamples] = {name: PairSamples() for name in pairs}
        self._wake = asyncio.Event()

    def pair(self, name: str) -> PairSamples:
        """The samples of one pair."""
        return self._samples.setdefault(name, PairSamples())

    def on_event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any]) -> None:
        """Sample again soon after the pair's machines changed (a ``ControllerContext`` listener)."""
        if kind in WAKING_EVENTS or (kind == "state" and data.get("to") in DISK_STATES):
            self._wake.set()

    async def run(self) -> None:
        """Sample every pair every ``interval`` seconds, or sooner when woken, until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.sample()
            except Exception as exc:  # one bad answer must not end the sampler for good
                self.ctx.internal_errors.report("the telemetry sampler", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def sample(self) -> None:
        """Sample every pair once (a pair whose hosts do not answer keeps its last samples)."""
        await asyncio.gather(*(self.sample_pair(rt) for rt in list(self.pairs.values())))

    async def sample_pair(self, rt: PairRuntime) -> None:
        """Sample one pair's prices and disk, and raise or clear its alerts."""
        if rt.state == PairState.PAUSED:
            return
        samples = self.pair(rt.name)
        await self._sample_prices(rt, samples)
        cpu = next((ref for ref in (rt.primary, rt.standby) if ref is not None and ref.role == "cpu"), None)
        if cpu is None or (samples.disk is not None and samples.disk.instance_id != cpu.instance_id):
            samples.disk = None
        if cpu is not None and rt.state in DISK_STATES:
            await self._sample_disk(rt, cpu, samples)
        self._judge_disk(rt, samples)
        self._judge_price(rt, samples)

    async def _sample_prices(self, rt: PairRuntime, samples: PairSamples) -> None:
        now = self.ctx.clock()
        machines = {ref.role: ref for ref in (rt.primary, rt.standby) if ref is not None}
        for machine in set(samples.rates) - set(machines):
            samples.charge(machine, None, now)  # the machine left the pair (failed over, replaced)
        for machine, ref in machines.items():
            price = await self._price(ref)
            if price is None and machine in samples.rates:
                continue  # the provider did not answer: keep counting at the last known price
            samples.charge(machine, price, now)
        gpu, previous = machines.get("gpu"), samples.gpu_price
        if previous is not None and (gpu is None or previous.instance_id != gpu.instance_id):
            previous = None  # a new GPU starts a new price history
        if gpu is None or "gpu" not in samples.rates:
            samples.gpu_price = previous
            return
        price = samples.rates["gpu"][0]
        samples.gpu_price = GpuPrice(gpu.instance_id, price, previous.first_price if previous else price)

    async def _price(self, ref: HostRef) -> float | None:
        try:
            async with asyncio.timeout(self.ctx.config.health.probe_timeout_seconds * 4):
                instance = await self.ctx.instance(ref)
        except (DumontError, TimeoutError) as exc:
            log.debug("no price for %s: %s", ref.alias, exc)
            return None
        return instance.price_per_hour

    async def _sample_disk(self, rt: PairRuntime, cpu: HostRef, samples: PairSamples) -> None:
        try:
            async with asyncio.timeout(max(5.0, self.ctx.config.health.probe_timeout_seconds * 2)):
                free, total = await self.ctx.hosts.disk(cpu)
        except (DumontError, TimeoutError) as exc:
            log.debug("%s: no disk sample from %s: %s", rt.name, cpu.alias, exc)
            return
        samples.disk = DiskSample(cpu.instance_id, free, total, self.ctx.clock())

    def _judge_disk(self, rt: PairRuntime, samples: PairSamples) -> None:
        limit = self.ctx.config.replication.standby_disk_alert_fraction
        disk = samples.disk
        if disk is None:
            return
        if disk.used_ratio > limit:
            self._raise(rt.name, samples, "standby_disk",
                        f"the standby's disk is {disk.used_ratio:.0%} full (alert above {limit:.0%}; "
                        f"{disk.free_bytes / 2**30:.1f} GiB free); old snapshots are pruned first, then add disk")
        else:
            self._clear(rt.name, samples, "standby_disk", f"the standby's disk is {disk.used_ratio:.0%} full again")

    def _judge_price(self, rt: PairRuntime, samples: PairSamples) -> None:
        price, limit = samples.gpu_price, self.ctx.config.gpu_max_price
        if price is None:
            self._clear(rt.name, samples, "gpu_price", "no GPU serves the pair now")
            return
        if price.price > limit:
            self._raise(rt.name, samples, "gpu_price", f"the GPU {price.instance_id} costs ${price.price:.3f}/h, above "
                                                      f"gpu_max_price ${limit:.3f}/h")
        elif price.price >= price.first_price * PRICE_JUMP:
            self._raise(rt.name, samples, "gpu_price", f"the GPU {price.instance_id} price jumped from "
                                                      f"${price.first_price:.3f}/h to ${price.price:.3f}/h")
        else:
            self._clear(rt.name, samples, "gpu_price", f"the GPU price is back to ${price.price:.3f}/h")

    def _raise(self, pair: str, samples: PairSamples, kind: str, message: str) -> None:
        if kind not in samples.alerts:
            samples.alerts.add(kind)
            self.ctx.event(pair, "alert", message, {"alert": kind})

    def _clear(self, pair: str, samples: PairSamples, kind: str, message: str) -> None:
        if kind in samples.alerts:
            samples.alerts.discard(kind)
            log.info("%s: alert %s cleared: %s", pair, kind, message)
