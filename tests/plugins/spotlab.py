"""Spotlab: a small GPU market of the tests' own, a plug-in the way a third provider would be written.

It rents real hosts of a local host pool of its own (Vast's pytorch image: no rsync, python under conda, root),
from a short list of offers, with its ``[spotlab]`` table read by Dumont's own loader. Nothing of Dumont knows it:
it registers itself with :func:`install`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dumont.config import Config, plugin_setting
from dumont.localcloud.hosts import HostState
from dumont.localcloud.pool import HostPool
from dumont.providers.base import Instance, InstanceState, LaunchRequest, Offer, OfferQuery, RentPolicy
from dumont.providers.registry import Plugin, register

NAME = "spotlab"


@dataclass(frozen=True)
class SpotlabConfig:
    """[spotlab]: where its machines live, what an hour costs there."""

    state_dir: str = plugin_setting("", "the path of a directory", lambda raw: isinstance(raw, str) and bool(raw))
    price_per_hour: float = plugin_setting(0.30, "a price in $/h", lambda raw: isinstance(raw, int | float) and raw > 0)


class Spotlab:
    """The market: offers of its own, instances as pool hosts."""

    name = NAME

    def __init__(self, table: SpotlabConfig) -> None:
        self.table = table
        self.pool = HostPool(Path(table.state_dir))
        self.policy = RentPolicy(max_attempts=3, backoff_initial_seconds=0.2, backoff_max_seconds=0.5,
                                 launch_timeout_seconds=60)
        self.labels: dict[str, str | None] = {}
        self.destroyed: list[str] = []
        self._ids = itertools.count(1)

    def bid_for(self, offer: Offer) -> float | None:
        return None  # spotlab rents on demand only

    async def close(self) -> None:
        await self.pool.shutdown()

    async def search_offers(self, query: OfferQuery) -> list[Offer]:
        offers = [Offer(NAME, f"lab{n}", f"lab-machine-{n}", "L4", 1, 24.0, self.table.price_per_hour + n / 100,
                        0.999, "TH", False) for n in range(1, 4)]
        return [o for o in offers if o.price_per_hour <= query.max_price_per_hour
                and o.machine_id not in query.exclude_machine_ids]

    async def create(self, request: LaunchRequest) -> Instance:
        instance_id = f"lab-{next(self._ids)}"
        await self.pool.create(f"spotlab-{instance_id}", authorized_keys=[], image="vast-pytorch", provider=NAME,
                               instance_id=instance_id, login_users={"root": list(request.ssh_public_keys)},
                               boot_script=request.onstart, role="gpu")
        self.labels[instance_id] = request.label
        return await self.get(instance_id)

    async def get(self, instance_id: str) -> Instance:
        host = next((h for h in self.pool.hosts() if h.instance_id == instance_id), None)
        if host is None:
            return Instance(NAME, instance_id, InstanceState.TERMINATED, "gone")
        state = {HostState.RUNNING: InstanceState.RUNNING, HostState.PARTITIONED: InstanceState.RUNNING,
                 HostState.STOPPED: InstanceState.STOPPED, HostState.KILLED: InstanceState.OFFLINE}[host.state]
        running = state == InstanceState.RUNNING
        return Instance(NAME, instance_id, state, str(host.state), ssh_host=host.address if running else None,
                        ssh_port=host.port if running else None, ssh_user="root", label=self.labels.get(instance_id),
                        price_per_hour=self.table.price_per_hour, machine_id=f"lab-machine-of-{instance_id}",
                        gpu_name="L4", country="TH")

    async def list(self, label: str | None = None) -> list[Instance]:
        return [await self.get(i) for i, mine in self.labels.items() if label is None or mine == label]

    async def stop(self, instance_id: str) -> None:
        await self.pool.stop(f"spotlab-{instance_id}")

    async def start(self, instance_id: str) -> None:
        await self.pool.start(f"spotlab-{instance_id}")

    async def destroy(self, instance_id: str) -> None:
        if any(h.instance_id == instance_id for h in self.pool.hosts()):
            await self.pool.destroy(f"spotlab-{instance_id}")
            self.destroyed.append(instance_id)

    async def attach_keys(self, instance_id: str, public_keys: Sequence[str]) -> None:
        for key in public_keys:
            self.pool.authorize(f"spotlab-{instance_id}", key, "root")


OPENED: list[Spotlab] = []  # what the tests look at


async def _open(config: Config, table: Any) -> Spotlab:
    market = Spotlab(table if isinstance(table, SpotlabConfig) else SpotlabConfig())
    OPENED.append(market)
    return market


def install() -> None:
    """Register spotlab, as a package adding a provider would."""
    register(Plugin(NAME, "gpu", _open, table=SpotlabConfig))
