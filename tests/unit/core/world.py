"""A whole controller on in-memory fakes and a virtual clock: the stage for the effectors' unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumont.config import Config, parse_config
from dumont.core.context import ControllerContext, alias_for
from dumont.core.controller import Controller
from dumont.core.fakes import FakeCloud, FakeHosts, FakeMachine, FakeMarket, VirtualClock, offer
from dumont.core.model import HostRef, PairState
from dumont.core.pair import PairRuntime
from dumont.core.startup import prepare_state
from dumont.endpoint.local import LocalEndpoint
from dumont.store.sqlite import PairRow, Store

FAST = {"health_check_interval": 1, "failover_threshold": 3, "sync_interval_seconds": 2, "ssh_wait_timeout": 30,
        "health": {"probe_timeout_seconds": 0.5},
        "vast": {"backoff_initial_seconds": 1, "backoff_max_seconds": 4, "launch_timeout_seconds": 60}}


@dataclass
class World:
    """The fakes, the context over them, and the controller's events as they happen."""

    clock: VirtualClock
    hosts: FakeHosts
    market: FakeMarket
    cloud: FakeCloud
    ctx: ControllerContext
    events: list[tuple[str | None, str, str, dict[str, Any]]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        """Event kinds, in order."""
        return [kind for _, kind, _, _ in self.events]

    def reasons(self, kind: str) -> list[str]:
        """The reason sentences of one kind of event."""
        return [reason for _, k, reason, _ in self.events if k == kind]

    def machine(self, ref: HostRef | None) -> FakeMachine:
        """The in-memory machine behind a host of the pair."""
        assert ref is not None
        return self.hosts.machine(ref)


def make_world(tmp_path: Path, overrides: dict[str, Any] | None = None) -> World:
    """A controller context for one pair ``main`` on fakes (keys and the store are real, in ``tmp_path``)."""
    data: dict[str, Any] = {**FAST, "state_dir": str(tmp_path / "state"), "gcp": {"project": "test"},
                            "pairs": [{"name": "main", "endpoint_listen": "127.0.0.1:2222",
                                       "primary": {"provider": "vast", "instance_id": "30000001"},
                                       "standby": {"provider": "gcp"}}]}
    for key, value in (overrides or {}).items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    config: Config = parse_config(data, source="test", base_dir=tmp_path)
    layout = prepare_state(config)
    clock = VirtualClock()
    hosts = FakeHosts(clock)
    market = FakeMarket(clock, hosts, [offer(str(n), price=0.2 + n / 100) for n in range(1, 9)])
    cloud = FakeCloud(clock, hosts)
    async def network_up() -> bool:
        return True

    ctx = ControllerContext(config, layout, Store(Path(":memory:")), hosts, {"vast": market}, {"gcp": cloud},
                            clock=clock, sleep=clock.sleep, network=network_up)
    world = World(clock, hosts, market, cloud, ctx)
    ctx.listeners.append(lambda pair, kind, reason, data: world.events.append((pair, kind, reason, data)))
    return world


def gpu_ref(world: World, instance_id: str) -> HostRef:
    """A HostRef for a rented fake instance."""
    record = world.market.record(instance_id)
    return HostRef("vast", instance_id, record.ssh_host or "127.0.0.1", record.ssh_port or 22, "root", "gpu",
                   alias_for("vast", instance_id))


async def synced_pair(world: World, files: dict[str, bytes] | None = None) -> AsyncIterator[PairRuntime]:
    """A pair as the loop leaves it after its first pass: GPU primary at epoch 1, CPU standby with a snapshot."""
    rt = await bring_up(world, 0, "30000001", files or {"model.pt": b"weights", "data.csv": b"a,b\n1,2\n"})
    try:
        yield rt
    finally:
        await rt.endpoint.stop()


async def bring_up(world: World, index: int, instance_id: str, files: dict[str, bytes]) -> PairRuntime:
    """The configured pair ``index`` synced: its GPU rented (``instance_id``) and holding ``files``, its CPU standby
    with one snapshot of them, both at epoch 1 and certified, its endpoint serving the GPU (the caller stops it)."""
    config = world.ctx.config.pairs[index]
    name = config.name
    gpu_instance = world.market._new(instance_id, machine_id=f"m{index}", label=f"dumont-{name}", price=0.25)
    world.cloud._new(f"dumont-{name}-standby-0", user="dumont")
    world.clock.now = max(gpu_instance.ready_at, world.clock.now) + 1
    gpu = gpu_ref(world, instance_id)
    cpu = HostRef("gcp", f"dumont-{name}-standby-0", "127.0.0.1", 22, "dumont", "cpu",
                  alias_for("gcp", f"dumont-{name}-standby-0"))
    world.machine(gpu).workspace = dict(files)
    world.machine(gpu).epoch = world.machine(cpu).epoch = 1
    world.machine(cpu).snapshots = [dict(files)]
    world.machine(cpu).certified = world.machine(gpu).certified = True
    endpoint = LocalEndpoint(name)
    await endpoint.start(("127.0.0.1", 0), 30)
    await endpoint.point_to((gpu.ssh_host, gpu.ssh_port), reason="serving the GPU", epoch=1)
    world.ctx.store.save_pair(PairRow(name, "syncing", 1, gpu.as_dict(), cpu.as_dict(), 0))
    for ref in (gpu, cpu):
        world.ctx.store.record_host(ref.provider, ref.instance_id, name, ref.role, "test")
    return PairRuntime(config, PairState.SYNCING, 1, gpu, cpu, endpoint)


def controller_of(world: World, rt: PairRuntime) -> Controller:
    """The real loop over the world's fakes."""
    return Controller(world.ctx, [rt])


def two_pair_world(tmp_path: Path, overrides: dict[str, Any] | None = None) -> World:
    """A world configured with the pairs ``main`` and ``second``."""
    pairs = [{"name": name, "endpoint_listen": f"127.0.0.1:{port}", "standby": {"provider": "gcp"},
              "primary": {"provider": "vast", "instance_id": instance_id}}
             for name, port, instance_id in (("main", 2222, "30000001"), ("second", 2223, "30000009"))]
    return make_world(tmp_path, {**(overrides or {}), "pairs": pairs})


async def second_pair(world: World) -> PairRuntime:
    """The second pair of :func:`two_pair_world`, synced beside the first with its own GPU, standby and endpoint."""
    return await bring_up(world, 1, "30000009", {"notes.txt": b"second"})
