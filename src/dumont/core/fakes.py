"""In-memory fakes of the core's ports, for unit tests of the effectors and the loop on virtual time.

A :class:`FakeWorld` is a small cloud in memory: machines with a workspace (path -> bytes), snapshots and an
epoch (:class:`FakeHosts`), a GPU market of offers and rented instances (:class:`FakeMarket`), a standby cloud of
VMs (:class:`FakeCloud`), all sharing one :class:`VirtualClock` whose ``sleep`` moves time instead of waiting.
Faults are plain attributes a test sets: a machine that never answers, an operation that raises, an offer whose
instance never boots. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dumont.core.bootstrap import HostReadiness
from dumont.core.context import alias_for
from dumont.core.model import Health, HostRef, ProbeResult
from dumont.errors import (
    CommandTimeout,
    DumontError,
    HostNotReady,
    HostUnreachable,
    IntegrityError,
    StaleEpochRefused,
)
from dumont.providers.base import (
    Instance,
    InstanceNotFound,
    InstanceState,
    LaunchRequest,
    Offer,
    OfferQuery,
    OfferUnavailable,
    RentPolicy,
    StandbySpec,
)
from dumont.replication.engine import PassReport, ReplicationPolicy
from dumont.replication.manifest import Entry, Manifest


@dataclass
class VirtualClock:
    """Time that moves only when something sleeps or the test advances it."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Move time on by ``seconds`` and let other tasks run once."""
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass
class FakeMachine:
    """One machine: its workspace, its snapshots (newest last), its epoch, and its faults."""

    alias: str
    workspace: dict[str, bytes] = field(default_factory=dict)
    special: tuple[str, ...] = ()  # FIFOs and sockets in the workspace: a pass skips them
    corrupt: list[dict[str, Any]] = field(default_factory=list)  # what its next scrub reports
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set: its workspace changed (for watch)
    watch_mode: str = "inotify"
    snapshots: list[dict[str, bytes]] = field(default_factory=list)
    epoch: int = 0
    reachable: bool = True
    certified: bool = False  # presents a certificate of its key from the pair's host CA
    paired_for: int | None = None  # the epoch a pair key lets it push into
    retired: bool = False
    fail: dict[str, DumontError | BaseException] = field(default_factory=dict)  # operation -> raised, every time
    hold: dict[str, asyncio.Event] = field(default_factory=dict)  # operation -> waits until the test sets it

    def check(self, operation: str) -> None:
        """Raise what the test armed for ``operation``, or HostUnreachable when the machine does not answer."""
        if not self.reachable:
            raise HostUnreachable(f"{self.alias} does not answer", hint="it is down in this test")
        if operation in self.fail:
            raise self.fail[operation]

    async def held(self, operation: str) -> None:
        """Wait while the test holds ``operation`` open."""
        if operation in self.hold:
            await self.hold[operation].wait()


def manifest_of(files: dict[str, bytes]) -> Manifest:
    """The manifest of a file map (content hashes stand in for the agent's)."""
    return Manifest.of(Entry(path, "file", 0o644, len(data), 0, hashlib.blake2b(data, digest_size=16).hexdigest())
                       for path, data in files.items())


class FakeHosts:
    """:class:`~dumont.core.ports.HostAccess` over in-memory machines (created on first use, reachable)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.machines: dict[str, FakeMachine] = {}
        self.calls: list[tuple[str, str]] = []  # (operation, alias), in order
        self._seq = itertools.count(1)

    def machine(self, ref: HostRef | str) -> FakeMachine:
        """The machine behind ``ref`` (by alias), created empty on first use."""
        alias = ref if isinstance(ref, str) else ref.alias
        return self.machines.setdefault(alias, FakeMachine(alias))

    def _use(self, operation: str, ref: HostRef) -> FakeMachine:
        self.calls.append((operation, ref.alias))
        machine = self.machine(ref)
        machine.check(operation)
        return machine

    async def reach(self, ref: HostRef, *, deadline: float) -> None:
        """Answer at once, or wait out the deadline (virtually) and fail like the real one."""
        self.calls.append(("reach", ref.alias))
        machine = self.machine(ref)
        if not machine.reachable or "reach" in machine.fail:
            await self.clock.sleep(max(0.0, deadline - self.clock()))
            raise HostUnreachable(f"{ref.alias} did not accept SSH before the deadline: connection timed out",
                                  hint="the instance will be destroyed and the next offer tried")

    async def ready(self, ref: HostRef) -> HostReadiness:
        machine = self._use("ready", ref)
        fresh = ("readied", ref.alias) not in self.calls
        self.calls.append(("readied", ref.alias))
        del machine
        return HostReadiness("/usr/bin/python3", "3.11.2", "/usr/bin/rsync", (), ref.ssh_user, fresh=fresh)

    def host_key(self, ref: HostRef) -> str | None:
        return "ssh-ed25519 AAAAFAKE" + "".join(c for c in ref.alias if c.isalnum())

    async def certify_host(self, ref: HostRef, pair: str) -> None:
        self._use("certify_host", ref).certified = True

    async def probe(self, ref: HostRef, *, timeout: float, command: str | None) -> tuple[ProbeResult, ...]:
        self.calls.append(("probe", ref.alias))
        machine = self.machine(ref)
        await machine.held("probe")
        if "probe" in machine.fail:
            raise machine.fail["probe"]
        health = Health.OK if machine.reachable else Health.FAIL
        detail = "" if machine.reachable else "connection timed out"
        return ProbeResult("tcp", health, detail), ProbeResult("ssh", health, detail)

    async def pair(self, pair: str, epoch: int, source: HostRef, target: HostRef) -> None:
        self._use("pair", source)
        standby = self._use("pair", target)
        self.machine(source).epoch = max(self.machine(source).epoch, epoch)
        self._accept_epoch(standby, epoch)
        standby.paired_for = epoch

    async def run_pass(self, pair: str, source: HostRef, target: HostRef, policy: ReplicationPolicy,
                       progress: Callable[[int, int], None] | None = None) -> PassReport:
        primary, standby = self._use("run_pass", source), self._use("run_pass", target)
        started = self.clock()
        await primary.held("run_pass")
        if primary.epoch < standby.epoch:
            raise StaleEpochRefused(f"source epoch {primary.epoch} is older than {target.alias}'s {standby.epoch}")
        previous = standby.snapshots[-1] if standby.snapshots else {}
        changed = [p for p, d in primary.workspace.items() if previous.get(p) != d]
        deleted = [p for p in previous if p not in primary.workspace]
        standby.snapshots = [*standby.snapshots, dict(primary.workspace)][-policy.keep_snapshots:]
        sent = sum(len(primary.workspace[p]) for p in changed)
        if progress is not None and sent:
            progress(sent // 2, sent)
        await self.clock.sleep(0.1)  # a pass takes a little time
        if progress is not None and sent:
            progress(sent, sent)
        return PassReport(pair, next(self._seq), primary.epoch, len(standby.snapshots), policy.mode, started,
                          self.clock(), len(primary.workspace), sum(len(d) for d in primary.workspace.values()),
                          len(changed), len(deleted), sent, (), bool(changed or deleted), primary.special)

    async def take_over(self, pair: str, standby: HostRef, new_epoch: int) -> dict[str, Any]:
        machine = self._use("take_over", standby)
        await machine.held("take_over")
        if new_epoch < machine.epoch:
            raise StaleEpochRefused(f"epoch {new_epoch} is older than {standby.alias}'s {machine.epoch}")
        machine.paired_for = None
        if not machine.snapshots:
            raise IntegrityError(f"{standby.alias} holds no snapshot to promote")  # the epoch stays where it was
        machine.workspace = dict(machine.snapshots[-1])
        machine.epoch = new_epoch
        return {"seq": len(machine.snapshots), "files": len(machine.workspace), "removed": 1, "killed": 0}

    async def promote(self, ref: HostRef, *, epoch: int, mode: str) -> dict[str, Any]:
        machine = self._use(f"promote:{mode}", ref)
        if not machine.snapshots:
            raise IntegrityError(f"{ref.alias} holds no snapshot to promote")
        machine.workspace = dict(machine.snapshots[-1])
        self._accept_epoch(machine, epoch)
        return {"seq": len(machine.snapshots), "files": len(machine.workspace)}

    async def snapshot_manifest(self, ref: HostRef, seq: int) -> Manifest:
        machine = self._use("snapshot_manifest", ref)
        return manifest_of(machine.snapshots[-1] if machine.snapshots else {})

    async def verify_promoted(self, ref: HostRef, manifest: Manifest) -> bool:
        return manifest_of(self._use("verify_promoted", ref).workspace) == manifest

    async def set_epoch(self, ref: HostRef, epoch: int) -> int:
        machine = self._use("set_epoch", ref)
        self._accept_epoch(machine, epoch)
        return machine.epoch

    async def salvage_signature(self, ref: HostRef, folder: str) -> tuple[int, int, int]:
        machine = self._use("salvage_signature", ref)
        files = [d for p, d in machine.workspace.items() if p.startswith(folder + "/")]
        return len(files), sum(map(len, files)), 1

    async def salvage_sort(self, ref: HostRef, folder: str) -> list[dict[str, Any]]:
        machine = self._use("salvage_sort", ref)
        kept = []
        for path in sorted(p for p in machine.workspace if p.startswith(folder + "/")):
            rel = path[len(folder) + 1:]
            if machine.workspace.get(rel) == machine.workspace[path]:
                del machine.workspace[path]
            else:
                kept.append({"path": rel, "size": len(machine.workspace[path]), "mtime": 0.0})
        return kept

    async def watch(self, ref: HostRef, *, timeout: float) -> dict[str, Any]:
        # Blocks until the test says the workspace changed: a virtual timeout would spin time forward.
        machine = self._use("watch", ref)
        await machine.changed.wait()
        machine.changed.clear()
        return {"changed": True, "mode": machine.watch_mode, "reason": "" if machine.watch_mode == "inotify"
                else "the inotify watch limit is reached (fs.inotify.max_user_watches)"}

    async def scrub(self, ref: HostRef, *, budget_bytes: int) -> dict[str, Any]:
        machine = self._use("scrub", ref)
        found, machine.corrupt = machine.corrupt, []
        return {"checked_bytes": min(budget_bytes, 1), "corrupt": found, "round_complete": True}

    async def epoch(self, ref: HostRef) -> int:
        return self._use("epoch", ref).epoch

    async def retire_workspace(self, ref: HostRef, *, epoch: int) -> None:
        self._use("retire_workspace", ref).retired = True

    async def disk(self, ref: HostRef) -> tuple[int, int]:
        self._use("disk", ref)
        return 60 * 2**30, 100 * 2**30

    async def forget(self, ref: HostRef, *, still_ready: bool = False) -> None:
        self.calls.append(("forget", ref.alias))

    async def close(self) -> None:
        self.calls.append(("close", "*"))

    @staticmethod
    def _accept_epoch(machine: FakeMachine, epoch: int) -> None:
        if epoch < machine.epoch:
            raise StaleEpochRefused(f"epoch {epoch} is older than {machine.alias}'s {machine.epoch}")
        machine.epoch = epoch


@dataclass
class FakeInstance:
    """A rented or created machine as its provider keeps it."""

    instance_id: str
    provider: str
    ready_at: float  # virtual time it runs from
    machine_id: str = ""
    label: str | None = None
    image: str = ""
    state: InstanceState = InstanceState.RUNNING
    port: int = 22
    address: str = "127.0.0.1"
    user: str = "root"
    price: float | None = None
    keys: list[str] = field(default_factory=list)


class _Provider:
    """What both fakes share: instances whose state is derived from the clock, and a host for each."""

    name = "fake"
    role = "gpu"

    def __init__(self, clock: VirtualClock, hosts: FakeHosts, *, boot_seconds: float = 5.0) -> None:
        self.clock, self.hosts, self.boot_seconds = clock, hosts, boot_seconds
        self.instances: dict[str, FakeInstance] = {}
        self.destroyed: list[str] = []
        self.fail: dict[str, BaseException] = {}  # method name -> raised, every time
        self.unreachable_next = 0  # the next N machines run but never answer SSH
        self.calls: collections.Counter[str] = collections.Counter()  # API calls made, by method

    def _check(self, method: str) -> None:
        self.calls[method] += 1
        if method in self.fail:
            raise self.fail[method]

    def _new(self, instance_id: str, **fields: Any) -> FakeInstance:
        instance = FakeInstance(instance_id, self.name, self.clock() + self.boot_seconds, **fields)
        self.instances[instance_id] = instance
        machine = self.hosts.machine(alias_for(self.name, instance_id))
        if self.unreachable_next > 0:
            self.unreachable_next -= 1
            machine.reachable = False
        return instance

    def record(self, instance_id: str) -> Instance:
        """The provider's answer for one instance now (TERMINATED once destroyed)."""
        instance = self.instances.get(instance_id)
        if instance is None:
            return Instance(self.name, instance_id, InstanceState.TERMINATED, "not found")
        state = instance.state
        if state == InstanceState.RUNNING and self.clock() < instance.ready_at:
            state = InstanceState.PENDING
        running = state == InstanceState.RUNNING
        return Instance(self.name, instance_id, state, str(state), ssh_host=instance.address if running else None,
                        ssh_port=instance.port if running else None, ssh_user=instance.user, label=instance.label,
                        price_per_hour=instance.price, machine_id=instance.machine_id,
                        status_message=f"image {instance.image}" if instance.image else None)

    async def get(self, instance_id: str) -> Instance:
        self._check("get")
        return self.record(instance_id)

    async def stop(self, instance_id: str) -> None:
        self._check("stop")
        if instance_id in self.instances:
            self.instances[instance_id].state = InstanceState.STOPPED

    async def start(self, instance_id: str) -> None:
        self._check("start")
        instance = self.instances[instance_id]
        instance.state, instance.ready_at = InstanceState.RUNNING, self.clock() + self.boot_seconds
        instance.port += 1  # a restart may bring it back elsewhere
        self.hosts.machine(alias_for(self.name, instance_id)).reachable = True

    async def _destroy(self, instance_id: str) -> None:
        self._check("destroy")
        if self.instances.pop(instance_id, None) is not None:
            self.destroyed.append(instance_id)


class FakeMarket(_Provider):
    """:class:`~dumont.providers.base.GpuMarket` with a list of offers; each rent makes an instance."""

    def __init__(self, clock: VirtualClock, hosts: FakeHosts, offers: Sequence[Offer] = (), *,
                 name: str = "vast", boot_seconds: float = 5.0, policy: RentPolicy | None = None,
                 first_id: int = 30_000_001) -> None:
        super().__init__(clock, hosts, boot_seconds=boot_seconds)
        self.name = name
        self.policy = policy or RentPolicy(backoff_initial_seconds=1, backoff_max_seconds=4,
                                           launch_timeout_seconds=60)
        self.offers = list(offers)
        self.gone: set[str] = set()  # offer ids already taken by someone else
        self.failing_images: set[str] = set()  # images whose pull fails: the instance never runs
        self._ids = itertools.count(first_id)

    def bid_for(self, offer: Offer) -> float | None:
        """The minimum bid plus a fifth, for an interruptible offer."""
        return round(offer.min_bid * 1.2, 4) if offer.interruptible and offer.min_bid else None

    async def close(self) -> None:
        """Nothing to close."""

    async def search_offers(self, query: OfferQuery) -> list[Offer]:
        self._check("search_offers")
        return [o for o in self.offers if o.price_per_hour <= query.max_price_per_hour
                and o.gpu_ram_gb >= query.min_gpu_ram_gb and o.machine_id not in query.exclude_machine_ids]

    async def create(self, request: LaunchRequest) -> Instance:
        self._check("create")
        if request.offer.offer_id in self.gone:
            raise OfferUnavailable(f"offer {request.offer.offer_id} is gone", hint="try the next offer")
        instance_id = next(str(n) for n in self._ids if str(n) not in self.instances and str(n) not in self.destroyed)
        instance = self._new(instance_id, machine_id=request.offer.machine_id, label=request.label,
                             image=request.image, price=request.offer.price_per_hour,
                             keys=list(request.ssh_public_keys))
        if request.image in self.failing_images:
            instance.state = InstanceState.FAILED
        return self.record(instance.instance_id)

    async def list(self, label: str | None = None) -> list[Instance]:
        self._check("list")
        return [self.record(i) for i, inst in self.instances.items() if label is None or inst.label == label]

    async def attach_keys(self, instance_id: str, public_keys: Sequence[str]) -> None:
        self._check("attach_keys")
        keys = self.instances[instance_id].keys
        keys += [k for k in public_keys if k not in keys]

    async def copy_between(self, src_id: str, dst_id: str, src_path: str, dst_path: str) -> None:
        """Vast's copy: a paused source is fine; the files land under ``dst_path`` at once."""
        self._check("copy_between")
        if src_id not in self.instances or dst_id not in self.instances:
            raise InstanceNotFound(f"instance {src_id if src_id not in self.instances else dst_id} not found")
        source = self.hosts.machine(alias_for(self.name, src_id)).workspace
        target = self.hosts.machine(alias_for(self.name, dst_id)).workspace
        folder = dst_path.removeprefix("/workspace/").rstrip("/")
        for path, data in list(source.items()):
            target[f"{folder}/{path}"] = data

    async def destroy(self, instance_id: str) -> None:
        await self._destroy(instance_id)


class FakeCloud(_Provider):
    """:class:`~dumont.providers.base.StandbyCloud` whose VMs are named by the caller."""

    name = "gcp"
    role = "cpu"

    async def create_standby(self, spec: StandbySpec) -> Instance:
        self._check("create_standby")
        instance = self._new(spec.name, user=spec.ssh_user, keys=list(spec.ssh_public_keys),
                             label=",".join(f"{k}={v}" for k, v in sorted(spec.labels.items())) or None)
        return self.record(instance.instance_id)

    async def delete(self, instance_id: str) -> None:
        await self._destroy(instance_id)

    async def list(self) -> list[Instance]:
        self._check("list")
        return [self.record(i) for i in self.instances]

    async def close(self) -> None:
        """Nothing to close."""

    async def set_ssh_keys(self, instance_id: str, user: str, public_keys: Sequence[str]) -> None:
        self._check("set_ssh_keys")
        keys = self.instances[instance_id].keys
        keys += [k for k in public_keys if k not in keys]

    async def preempt(self, instance_id: str) -> None:
        """What GCE does to a spot VM: stopped (it answers nothing), disk kept, reported PREEMPTED."""
        self.instances[instance_id].state = InstanceState.PREEMPTED
        self.hosts.machine(alias_for(self.name, instance_id)).reachable = False


def offer(offer_id: str, *, machine: str | None = None, price: float = 0.3, country: str = "TH",
          provider: str = "vast", region_rank: int = 0) -> Offer:
    """A rentable GPU offer."""
    return Offer(provider, offer_id, machine or f"m{offer_id}", "RTX 4090", 1, 24.0, price, 0.99, country, True,
                 min_bid=price * 0.8, region_rank=region_rank)


def timed_out(what: str) -> CommandTimeout:
    """The error a channel gives when the host stops answering mid-call."""
    return CommandTimeout(f"{what} did not answer in time", hint="retry; the channel was reset")


def not_ready(alias: str) -> HostNotReady:
    """The error readying gives when rsync cannot be installed."""
    return HostNotReady(f"{alias}: rsync is missing and could not be set up (no package manager)")
