"""``dumont chaos``: a seeded campaign of combined faults against a pair on the local cloud, then the checker.

The local cloud runs in this process (so faults reach its hosts, links and emulators directly); the controller
runs as its own process (so it can be SIGKILLed and started again, mid-failover and mid-recovery too); a writer
appends acknowledged, numbered records through the pair's endpoint the whole time. An observer samples the
pair's status, the controller's events and the instances the emulators hold, and that history goes through
:mod:`dumont.chaos.checker` at the end.

Faults a campaign can inject today: every kind of :data:`SUPPORTED`; a full standby disk is not injected yet (its
hosts share this machine's one filesystem) and is refused by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dumont.chaos.checker import Bounds, FaultOutcome, Violation, check, ended_unprotected, outcomes
from dumont.chaos.history import FAULT_KINDS, Failover, Fault, PairHistory, Protection, Record, Rental
from dumont.chaos.process import ControllerProcess
from dumont.chaos.schedule import PlannedFault, plan
from dumont.config import Config
from dumont.drill.profiles import FAST, fit_to_link
from dumont.drill.stack import Stack, add_pairs, build_stack
from dumont.drill.writer import Writer
from dumont.endpoint.launch import stop_endpoint_daemon
from dumont.errors import DumontError, UsageError
from dumont.localcloud.emulators.gcp import GcpEmulator
from dumont.localcloud.emulators.vast import VastEmulator
from dumont.localcloud.link import PROFILES as LINKS
from dumont.localcloud.link import LinkSpec
from dumont.localcloud.ready import controller_dir

SUPPORTED = FAULT_KINDS - {"standby_disk_full"}
SAMPLE_SECONDS = 0.5
FRESH_PASS_SECONDS = 30.0  # a protected pair's last pass is younger than this (passes come every few seconds)
FIRST_PAIR = "main"  # the ready config's pair; more pairs are named pair-2, pair-3, ...


def pair_names(count: int) -> list[str]:
    """The names of a campaign's ``count`` pairs."""
    return [FIRST_PAIR, *(f"pair-{n}" for n in range(2, count + 1))]


@dataclass(frozen=True)
class ChaosOptions:
    """What to run: the seed, how long, how often a fault comes, which kinds."""

    seed: int
    minutes: float
    pairs: int = 1
    mean_gap: float = 30.0
    kinds: frozenset[str] = SUPPORTED
    say: Callable[[str], None] = print


@dataclass
class ChaosResult:
    """The plan, what was seen, and what the checker found."""

    seed: int
    plan: list[PlannedFault]
    histories: dict[str, PairHistory]
    bounds: Bounds
    violations: list[Violation] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No violation."""
        return not self.violations

    def outcomes(self) -> list[FaultOutcome]:
        """Faults by kind with what followed them, over every pair."""
        merged: dict[str, FaultOutcome] = {}
        for history in self.histories.values():
            for o in outcomes(history, self.bounds):
                into = merged.setdefault(o.kind, FaultOutcome(o.kind))
                into.count, into.failovers = into.count + o.count, into.failovers + o.failovers
                into.back_in += o.back_in
        return sorted(merged.values(), key=lambda o: o.kind)

    def table(self) -> str:
        """Faults by kind: how many, failovers they led to, time until protected again (median, max)."""
        lines = [f"{'fault':<18}{'count':>7}{'failovers':>11}{'protected again (median / max)':>34}"]
        for o in self.outcomes():
            back = (f"{statistics.median(o.back_in):.1f} s / {max(o.back_in):.1f} s" if o.back_in else "n/a")
            lines.append(f"{o.kind:<18}{o.count:>7}{o.failovers:>11}{back:>34}")
        hs = self.histories.values()
        lost = [age for h in hs if not ended_unprotected(h) for age in _lost_ages(h)]  # as the checker counts
        worst = f", the oldest {max(lost):.1f} s before its failover" if lost else ""
        lines += [f"acknowledged records lost at failovers (within the RPO bound of {self.bounds.rpo:g} s): "
                  f"{len(lost)}{worst}"]
        lines += [f"pairs: {len(self.histories)}; faults injected: {sum(len(h.faults) for h in hs)}; "
                  f"skipped: {len(self.skipped)}; failovers: {sum(len(h.failovers) for h in hs)}; "
                  f"records acknowledged: {sum(len(h.records) for h in hs)}; record files checked whole in the "
                  f"final workspaces and retained snapshots: {sum(h.records_checked for h in hs)}; "
                  f"violations: {len(self.violations)}; "
                  f"seed {self.seed}; {self.seconds:.0f} s"]
        return "\n".join(lines)


def _lost_ages(history: PairHistory) -> list[float]:
    """For each acknowledged record missing at the end: how long before the next failover it was acknowledged."""
    failovers = sorted(f.at for f in history.failovers)
    ages = []
    for record in history.records:
        if record.number not in history.final_records:
            after = next((at for at in failovers if at >= record.acked), None)
            if after is not None:
                ages.append(after - record.acked)
    return ages


class Observer:
    """Samples every pair (status, events, instances held) every SAMPLE_SECONDS into its PairHistory."""

    def __init__(self, stack: Stack, controller: ControllerProcess, histories: dict[str, PairHistory],
                 origin: float) -> None:
        self.stack, self.controller, self.histories, self.origin = stack, controller, histories, origin
        self.status: dict[str, dict[str, Any]] = {}
        self._after_event = 0
        self._live: dict[str, Rental] = {}
        self._recovery: dict[str, int | None] = {}

    def now(self) -> float:
        """Seconds since the campaign began."""
        return time.time() - self.origin

    async def run(self) -> None:
        """Sample until cancelled; a controller that is down (being restarted) is simply not sampled."""
        while True:
            with contextlib.suppress(DumontError, OSError, ValueError, KeyError, httpx.HTTPError):
                await self.sample()
            await asyncio.sleep(SAMPLE_SECONDS)  # the sampling period itself, not a synchronisation

    async def sample(self) -> None:
        """One look at everything."""
        self._instances()
        if not self.controller.running:
            return
        pairs = (await self.controller.get("/api/status"))["pairs"]
        now = self.now()
        for pair in pairs:
            name = pair["name"]
            self.status[name] = pair
            operation = pair.get("operation") or {}
            recovering = operation.get("kind") == "recovery" and not operation.get("finished")
            self._recovery[name] = int(operation["started_at"] * 1000) if recovering else None
            self.histories[name].protection.append(Protection(name, now, _protected(pair)))
        page = await self.controller.get("/api/events", after=self._after_event)
        for event in page["events"]:
            self._after_event = max(self._after_event, int(event["id"]))
            if event["kind"] == "failover" and event["pair"] in self.histories:
                self.histories[event["pair"]].failovers.append(
                    Failover(event["pair"], event["at"] - self.origin, event["reason"]))

    def _instances(self) -> None:
        """Instances the emulators hold, each given to the pair its label names (an unlabelled one to the first)."""
        emulators = {e.name: e for e in self.stack.cloud.emulators}
        live: dict[str, str] = {}
        vast, gcp = emulators["vast"], emulators["gcp"]
        assert isinstance(vast, VastEmulator) and isinstance(gcp, GcpEmulator)
        for number, instance in vast.instances.items():
            live[str(number)] = (instance.label or "").removeprefix("dumont-")
        for vm in gcp.vms.values():
            if not vm.deleted:
                live[vm.name] = str((vm.body.get("labels") or {}).get("dumont-pair", ""))
        now, first = self.now(), next(iter(self.histories))
        for instance_id in live.keys() - self._live.keys():
            pair = live[instance_id] if live[instance_id] in self.histories else first
            recovery = self._recovery.get(pair) if instance_id.isdigit() else None
            self._live[instance_id] = Rental(pair, instance_id, now, None, recovery)
        for instance_id in self._live.keys() - live.keys():
            rental = self._live.pop(instance_id)
            self.histories[rental.pair].rentals.append(
                Rental(rental.pair, instance_id, rental.created, now, rental.recovery))

    def finish(self) -> None:
        """Instances still held at the end go into the histories as never destroyed."""
        self._instances()
        for rental in self._live.values():
            self.histories[rental.pair].rentals.append(rental)


async def run_chaos(root: Path, options: ChaosOptions) -> ChaosResult:
    """Run the campaign in ``root`` (the local cloud's files) and check it."""
    unknown = sorted(options.kinds - SUPPORTED)
    if unknown:
        raise UsageError(f"fault kind(s) {', '.join(unknown)} cannot be injected yet",
                         hint=f"choose among {', '.join(sorted(SUPPORTED))}")
    names = pair_names(options.pairs)
    seconds = options.minutes * 60
    faults = plan(options.seed, seconds=seconds, pairs=names, mean_gap=options.mean_gap, kinds=options.kinds)
    stack = await _campaign_stack(root, names, options.kinds)
    cfg = stack.config
    bounds = _bounds(cfg)
    result = ChaosResult(options.seed, faults, {name: PairHistory(name) for name in names}, bounds)
    controller = ControllerProcess(stack.config_path, cfg.state_dir, cfg.controller.api_listen,
                                   stack.root / "controller.log")
    writers = {name: Writer(controller_dir(stack.root) / "ssh" / name / "config", f"dumont-{name}")
               for name in names}
    started = time.time()
    async with contextlib.AsyncExitStack() as teardown:  # every step runs, even when one before it fails
        teardown.push_async_callback(stack.cloud.pool.shutdown)
        teardown.push_async_callback(stack.cloud.stop_emulators)
        teardown.push_async_callback(stop_endpoint_daemon,
                                     cfg.controller.endpoint_dir or controller_dir(stack.root) / "endpoint")
        teardown.push_async_callback(controller.stop)
        for writer in writers.values():
            teardown.push_async_callback(writer.stop)
        await controller.start()
        observer = Observer(stack, controller, result.histories, started)
        watching = asyncio.create_task(observer.run(), name="chaos-observer")
        try:
            await _wait(observer, _protected, 300, "every pair's first protection")
            for writer in writers.values():
                writer.start()
            await _run_plan(Injector(stack, controller, observer, random.Random(options.seed), options.say),  # noqa: S311 - repeatable
                            result, seconds)
            # A pair never protected again is a violation for the checker to name, not a reason to stop here.
            protected = await _wait(observer, _protected, bounds.recovery, "every pair protected again at the end",
                                    must=False)
            for writer in writers.values():
                await writer.stop()
            stopped = time.time()
            if protected:
                await _wait(observer, lambda s: _protected(s) and _synced_after(s, stopped), 120, "a last pass")
            await observer.sample()
            for name in names:
                _final_state(stack, observer.status[name], result.histories[name])
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        observer.finish()
    for name, writer in writers.items():
        result.histories[name].records = [Record(name, r.seq, r.at - started) for r in writer.records]
    result.violations = [v for history in result.histories.values() for v in check(history, bounds)]
    result.seconds = time.time() - started
    return result


async def _campaign_stack(root: Path, names: list[str], kinds: frozenset[str]) -> Stack:
    """The local cloud with every pair's GPU rented and a config protecting them all (the controller not started)."""
    # The checks are fitted to the worst link the campaign degrades to, as a user on that link would set them:
    # a probe that can never finish across it would make every degradation a (false) failover by design.
    profile = fit_to_link(FAST, LINKS["bad"]) if "link_degrade" in kinds else FAST
    stack = await build_stack(root, {"auto_recovery": True, "controller": {"max_recoveries_per_day": 100000}},
                              profile, link=LinkSpec())
    try:
        await add_pairs(stack, names[1:])
    except BaseException:
        await stack.cloud.stop_emulators()
        await stack.cloud.pool.shutdown()
        raise
    return stack


def _bounds(cfg: Config) -> Bounds:
    """How long each promise may take under this config: a controller killed when a fault lands adds its
    restart (20 s) to the RPO and detection bounds; a recovery gets the SSH wait and three minutes."""
    detection = cfg.health_check_interval * cfg.failover_threshold + 3 * cfg.health.probe_timeout_seconds + 2
    restart = 20.0
    return Bounds(rpo=2 * cfg.sync_interval_seconds + 5 + restart, detection=detection + restart,
                  recovery=cfg.ssh_wait_timeout + 180)


async def _run_plan(injector: Injector, result: ChaosResult, seconds: float) -> None:
    """Inject every planned fault at its time; a lasting fault runs on while the next ones come (they combine)."""
    observer, running = injector.observer, []

    async def apply(planned: PlannedFault) -> None:
        fault = await injector.inject(planned)
        if fault is None:
            result.skipped.append(planned.describe())
        else:
            result.histories[fault.pair].faults.append(fault)

    for planned in result.plan:
        await asyncio.sleep(max(0.0, planned.at - observer.now()))  # the plan's own clock, not a synchronisation
        running.append(asyncio.create_task(apply(planned), name=f"chaos-{planned.kind}"))
    await asyncio.sleep(max(0.0, seconds - observer.now()))
    await asyncio.gather(*running)


def _protected(status: dict[str, Any]) -> bool:
    """Serving from a GPU with a standby that replicates it: the pair says so, and its last pass is recent (a
    pair whose GPU and standby are both lost may still read "syncing")."""
    last = status.get("last_sync") or {}
    fresh = time.time() - float(last.get("time") or 0) <= FRESH_PASS_SECONDS
    return fresh and status["state"] == "syncing" and status["standby"] is not None and \
        status["primary"]["role"] == "gpu"


def _synced_after(status: dict[str, Any], since: float) -> bool:
    return bool(status.get("last_sync")) and status["last_sync"]["time"] > since


async def _wait(observer: Observer, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str, *,
                must: bool = True) -> bool:
    """Wait until every pair's latest status satisfies ``predicate``; False on timeout unless ``must`` (raise)."""
    deadline = time.monotonic() + timeout
    while len(observer.status) < len(observer.histories) or not all(map(predicate, observer.status.values())):
        if time.monotonic() > deadline:
            if not must:
                return False
            raise DumontError(f"chaos: timed out after {timeout:g} s waiting for {what}",
                              hint=f"the pairs' last status: {observer.status}")
        await asyncio.sleep(SAMPLE_SECONDS)  # the observer refreshes the status at this period
    return True


def _final_state(stack: Stack, status: dict[str, Any], history: PairHistory) -> None:
    """What the pair holds at the end, the record numbers in its primary's workspace, and every record in every
    snapshot its standby retains checked whole."""
    history.held_at_end = {str(status[role]["instance_id"]) for role in ("primary", "standby") if status.get(role)}
    for path in (stack.host(str(status["primary"]["instance_id"])).workspace / "writer").glob("*.rec"):
        number = _whole_record(path)
        history.records_checked += 1
        if number is None:
            history.snapshot_problems.append(f"the final workspace: writer/{path.name} is torn")
        else:
            history.final_records.add(number)
    if not status.get("standby"):
        return
    standby = stack.host(str(status["standby"]["instance_id"]))
    for tree in sorted((standby.data_dir / "snapshots").glob("*/tree")):
        for path in (tree / "writer").glob("*.rec"):
            history.records_checked += 1
            if _whole_record(path) is None:
                history.snapshot_problems.append(f"the standby's snapshot {tree.parent.name}: writer/{path.name} "
                                                 "is torn")


def _whole_record(path: Path) -> int | None:
    """The record's number when the file is one whole record (``seq time host``, its number in its name)."""
    fields = path.read_text(errors="replace").split()
    try:
        number, _ = int(fields[0]), float(fields[1])
    except (IndexError, ValueError):
        return None
    return number if len(fields) == 3 and path.stem.isdigit() and int(path.stem) == number else None


class Injector:
    """Applies one planned fault to the local cloud and says when it began and ended (None: nothing to hit)."""

    def __init__(self, stack: Stack, controller: ControllerProcess, observer: Observer, rng: random.Random,
                 say: Callable[[str], None]) -> None:
        self.stack, self.controller, self.observer, self.rng, self.say = stack, controller, observer, rng, say
        self.emulators = {e.name: e for e in stack.cloud.emulators}
        self._bursts = 0
        self._restarting = asyncio.Lock()

    def _host(self, pair: str, role: str) -> Any:
        """The GPU serving the pair (``gpu``), or its CPU VM (``cpu``: the standby, or the primary while failed
        over: a spot VM can be preempted while it serves too)."""
        status = self.observer.status.get(pair, {})
        refs = (status.get("primary"), status.get("standby")) if role == "cpu" else (status.get("primary"),)
        ref = next((r for r in refs if r and r["role"] == role), None)
        return self.stack.host(str(ref["instance_id"])) if ref else None

    async def inject(self, planned: PlannedFault) -> Fault | None:
        """Apply ``planned``; return the fault as it happened (None: nothing to hit, it is skipped)."""
        kind = planned.kind
        target = self._host(planned.pair, "cpu" if kind.startswith("standby") else "gpu")
        if kind in ("gpu_kill", "gpu_outbid", "gpu_blackhole", "standby_preempt", "link_degrade",
                    "host_key_change") and target is None:
            return None
        try:
            return await self._apply(planned, target)
        except DumontError as exc:  # the status was half a second old: the target was already gone or changed
            self.say(f"chaos: skipped {planned.describe()}: {exc}")
            return None

    async def _apply(self, planned: PlannedFault, target: Any) -> Fault | None:
        kind = planned.kind
        self.say(f"chaos: {planned.describe()}")
        began = self.observer.now()
        if kind == "gpu_kill":
            await self.stack.cloud.pool.kill(target.name)
        elif kind == "gpu_outbid":
            await self.emulators["vast"].fault("outbid", target)
        elif kind == "host_key_change":
            await self.stack.cloud.pool.change_host_key(target.name)
        elif kind == "standby_preempt":
            await self.emulators["gcp"].fault("preempt", target)
        elif kind in ("gpu_blackhole", "link_degrade"):
            spec = LinkSpec(blackhole=True) if kind == "gpu_blackhole" else LINKS["bad"]
            self.stack.cloud.pool.set_link(target.name, spec)
            await asyncio.sleep(planned.duration)  # how long the fault lasts (the plan's figure)
            with contextlib.suppress(DumontError):  # the host may be gone by now (fenced, destroyed)
                self.stack.cloud.pool.set_link(target.name, LinkSpec())
        elif kind == "api_errors":
            vast = self.emulators["vast"]
            assert isinstance(vast, VastEmulator)
            faults = vast.faults
            faults.throttle_status = self.rng.choice((429, 500, 502, 503))
            faults.retry_after = None  # Vast sends no Retry-After (docs: rate-limits-and-errors)
            faults.throttle_left, self._bursts = 1000, self._bursts + 1
            try:
                await asyncio.sleep(planned.duration)  # how long the burst lasts (the plan's figure)
            finally:
                self._bursts -= 1
                if not self._bursts:  # bursts that overlap end with the last one
                    faults.throttle_left = 0
        elif kind == "controller_kill":
            if not await self._reach_moment(planned):
                return None
            async with self._restarting:  # kills that overlap wait for the previous restart
                began = self.observer.now()
                await self.controller.kill()
                await self.controller.start()
        return Fault(kind, planned.pair, began, self.observer.now(),
                     getattr(target, "name", "") or planned.during or "")

    async def _reach_moment(self, planned: PlannedFault) -> bool:
        """Wait (at most 30 s) for the pair's failover or recovery when the kill must land in one."""
        if planned.during is None:
            return True
        states = {"failover": ("failed_over",), "recovery": ("recovering",)}[planned.during]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.observer.status.get(planned.pair, {}).get("state") in states:
                return True
            await asyncio.sleep(0.1)  # polling the observer's latest status
        return False
