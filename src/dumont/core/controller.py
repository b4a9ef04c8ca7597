"""The controller: observe every pair, decide, act; one tick per health-check interval, or sooner when woken.

Each tick takes one step per pair, all pairs at once: a frozen Observation (probes never raise), the pure
``decide``, and its actions carried out. Syncs, recoveries and standby replacements run as tracked background tasks
so the loop keeps ticking (and keeps reporting progress) while they work; a failover runs inline in its pair's
step, because the user is waiting, and beside the other pairs' steps, so ten GPUs lost at once fail over together.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from dumont.config import Config, PairConfig
from dumont.core import probes
from dumont.core.changes import watch_changes
from dumont.core.context import ControllerContext
from dumont.core.decide import decide, next_pass_at, recovery_turns
from dumont.core.failover import fail_over
from dumont.core.faults import reason_of
from dumont.core.leases import Leases
from dumont.core.mirrors import Mirrors
from dumont.core.model import (
    Action,
    Alert,
    ConsumeIntent,
    Decision,
    FailOver,
    HostHealth,
    HostRef,
    Intent,
    Observation,
    OperationStatus,
    PairState,
    Policy,
    RefreshAddress,
    ReplaceStandby,
    RunSync,
    SetState,
    StartCpu,
    StartRecovery,
)
from dumont.core.pair import PairRuntime, cancel, run_sync, start_background
from dumont.core.recovery import recover
from dumont.core.standby import replace_standby
from dumont.core.startup import make_endpoint
from dumont.errors import DumontError
from dumont.providers.base import GpuMarket, Instance, ProviderUnavailable, StandbyCloud

log = logging.getLogger("dumont.controller")
SLOW_TICK_SAID_EVERY = 60.0  # seconds between two warnings of a slow tick

START_TIMEOUT_SECONDS = 60.0  # asking the cloud to start a VM (the boot itself is observed, not awaited)


def policy_of(config: Config) -> Policy:
    """The decision thresholds of the configuration."""
    return Policy(failover_threshold=config.failover_threshold, standby_threshold=config.failover_threshold,
                  auto_failover=config.auto_failover, auto_recovery=config.auto_recovery,
                  sync_interval=config.sync_interval_seconds,
                  change_debounce=config.replication.change_debounce_seconds,
                  max_recoveries_per_day=config.controller.max_recoveries_per_day,
                  max_standby_attempts_per_hour=config.controller.max_standby_attempts_per_hour)


PairOpener = Callable[[PairConfig], Awaitable[PairRuntime]]
"""Brings a pair up for this controller (resumed from the store or adopted, its endpoint attached, its hosts
being reached): called when the pair's lease is taken."""


class Controller:
    """Protects its pairs until stopped: all of ``pairs``, or, with ``leases``, those whose lease it holds (taken
    and let go as the leases change hands; ``open_pair`` brings a newly taken one up)."""

    def __init__(self, ctx: ControllerContext, pairs: list[PairRuntime], *, leases: Leases | None = None,
                 open_pair: PairOpener | None = None) -> None:
        self.ctx = ctx
        self.pairs = {rt.name: rt for rt in pairs}
        self.leases = leases
        self._open_pair = open_pair
        self._unsaid: list[tuple[str, str, dict[str, Any]]] = []  # fleet events the store did not take yet
        self._winding: set[asyncio.Task[None]] = set()  # pairs let go, their work still ending
        self._retry_at: dict[str, float] = {}  # pairs that could not be brought up: not taken again before
        self._keeping: asyncio.Task[None] | None = None
        if leases is not None:
            ctx.acting = leases.held
        self.policy = policy_of(ctx.config)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.ticks = 0
        self.last_tick_at: float | None = None
        self.last_tick_seconds = 0.0
        self._slowest_observe = (0.0, "")  # this tick's slowest observation of a pair: seconds, pair
        self._slow_said_at = -math.inf  # when a slow tick was last logged
        self.tick_listeners: list[Callable[[int], None]] = []  # told after every tick (tests, drills)
        self._listed: dict[str, dict[str, Instance]] = {}  # this tick's instance lists, by market
        # A fleet's endpoints: this controller's own serve the pairs it does not hold too, routed from the store.
        self.mirrors = (Mirrors(ctx, functools.partial(make_endpoint, ctx)) if ctx.config.controller.endpoint_hosts
                        else None)

    def wake(self) -> None:
        """Tick now (an intent arrived)."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the current tick and return from :meth:`run`."""
        self._stop.set()
        self._wake.set()

    def acts_on(self, pair: str) -> bool:
        """Whether this controller may act on ``pair`` now (always, without leases)."""
        return self.leases is None or self.leases.held(pair)

    def _start_watching(self, rt: PairRuntime) -> None:
        if self.ctx.config.replication.on_change:
            rt.watch_task = start_background(self.ctx, rt, "watch", functools.partial(
                watch_changes, self.ctx, rt, self.wake))

    async def run(self) -> None:
        """Tick until stopped, then stop background work (a restart resumes it). Nothing escapes a tick."""
        interval = self.ctx.config.health_check_interval
        for rt in self.pairs.values():
            self._start_watching(rt)
        self.keep_leases()
        try:
            while not self._stop.is_set():
                started = self.ctx.clock()
                self._wake.clear()  # a wake during the tick (an intent, an effector's outcome) ticks again at once
                try:
                    await self.tick()
                except Exception as exc:
                    self.ctx.internal_errors.report("the controller's tick", exc)
                now, due_at = self.ctx.clock(), self.pass_due_at()
                left = interval - (now - started)
                if due_at > now:  # an overdue pass the tick did not start (a host is failing) waits for a tick
                    left = min(left, due_at - now)
                if left > 0 and not self._wake.is_set():
                    try:
                        async with asyncio.timeout(left):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
        finally:
            await cancel(self._keeping)
            if self._winding:
                await asyncio.wait(set(self._winding), timeout=60)
            for rt in self.pairs.values():
                await cancel(rt.watch_task)
                await cancel(rt.sync_task)
                await cancel(rt.op_task, timeout=30)
                await cancel(rt.reach_task)
            if self.leases is not None:
                released = self.leases.release_all()  # the other controllers take these pairs at once
                if released:
                    self.ctx.event(None, "leases_released", f"gave up the lease on {', '.join(released)} on "
                                                            "stopping", {"pairs": released})

    def pass_due_at(self) -> float:
        """The earliest instant a protected pair's next pass falls due (infinity when none will)."""
        due = (next_pass_at(rt.sync, rt.changed_at, self.policy) for rt in self.pairs.values()
               if rt.state in (PairState.SYNCING, PairState.DEGRADED) and self.acts_on(rt.name))
        return min((at for at in due if at is not None), default=math.inf)

    def _pass_ended(self, rt: PairRuntime) -> None:
        """A pass that ran past the next one's due instant (or while changes came) starts the next at once."""
        due_at = next_pass_at(rt.sync, rt.changed_at, self.policy)
        if due_at is not None and due_at <= self.ctx.clock():
            self.wake()

    def keep_leases(self) -> None:
        """Renew the leases (and take, and let go) from now on, in the background; :meth:`run` does it too."""
        if self.leases is not None and self._keeping is None:
            self._keeping = asyncio.create_task(self._keep_leases(), name="leases")

    async def _keep_leases(self) -> None:
        """Renew this controller's leases, take free or expired ones, let go of lost ones at once."""
        assert self.leases is not None
        leases = self.leases
        while True:
            try:
                await self.lease_round()
            except Exception as exc:  # a bug here must not stop the renewals: the leases would all run out
                self.ctx.internal_errors.report("a round of the leases", exc)
            deadline = leases.next_deadline()
            wait = leases.every if deadline is None else min(leases.every, max(0.0, deadline - leases.clock()))
            await self.ctx.sleep(max(wait, 0.01))

    async def lease_round(self) -> None:
        """One round of the leases: lost pairs let go at once, held ones not yet up brought up."""
        assert self.leases is not None
        self._say_unsaid()
        now = self.ctx.clock()
        # A pair this controller could not bring up is left to the others for a while (a lease it holds without
        # acting on the pair would keep everyone off it).
        names = [pair.name for pair in self.ctx.config.pairs if self._retry_at.get(pair.name, 0.0) <= now]
        changes = self.leases.round(names)
        claimed_at, why = self.ctx.clock(), dict(changes.lost)
        for name in list(self.pairs):  # what is up is what is held, whenever the lease went
            if not self.leases.held(name):
                self._let_go(name, why.get(name, "its lease is no longer held"))
        if self._open_pair is not None:
            for name in self.leases.holding():
                if name not in self.pairs:
                    await self._take(name, claimed_at)

    async def _take(self, name: str, claimed_at: float) -> None:
        """Bring up a pair whose lease this controller holds, and resume what its previous owner left unfinished;
        a pair that cannot be brought up has its lease given back (never held with nobody acting on it)."""
        assert self._open_pair is not None and self.leases is not None
        config = next(pair for pair in self.ctx.config.pairs if pair.name == name)
        try:
            say_taken(self.ctx, name, claimed_at)
            rt = await self._open_pair(config)
        except Exception as exc:
            self.leases.release(name)
            self._retry_at[name] = self.ctx.clock() + self.leases.ttl
            if not isinstance(exc, DumontError):
                self.ctx.internal_errors.report("bringing a taken pair up", exc, name)
            with contextlib.suppress(DumontError):  # the store may be what failed
                self.ctx.event(None, "lease_unused", f"took the lease on {name} but could not bring it up: "
                                                     f"{reason_of(exc)}; the lease was given back", {"pair": name})
            return
        self.pairs[name] = rt
        self._start_watching(rt)
        if rt.operation is not None and not rt.operation.finished:
            self.resume_operation(rt)
        self.wake()

    def _let_go(self, name: str, why: str) -> None:
        """Stop acting on a pair whose lease is lost, at once: its work is cancelled as a pause cancels it (an
        operation stays open in the store, with what it rented, for the new owner to resume), and waited for in
        the background, so that the other pairs' renewals do not wait on it; its endpoint keeps serving."""
        rt, stopped_at = self.pairs.pop(name), self.ctx.clock()
        log.warning("%s: stopped acting on the pair: %s", name, why)
        tasks = [t for t in (rt.watch_task, rt.sync_task, rt.reach_task, rt.op_task) if t is not None]
        for task in tasks:
            task.cancel()
        winding = asyncio.create_task(self._wind_down(rt, tasks), name=f"{name}:let go")
        self._winding.add(winding)
        winding.add_done_callback(self._winding.discard)
        # Said without the pair (its history belongs to the new owner from now on), and when the store takes it:
        # a controller cut off from it says so once it is back, with the time it stopped.
        self._unsaid.append(("lease_lost", f"stopped acting on {name}: {why}",
                             {"pair": name, "stopped_at": stopped_at}))
        self._say_unsaid()

    async def _wind_down(self, rt: PairRuntime, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            await cancel(task, timeout=30)
        with contextlib.suppress(DumontError):  # it keeps serving; the new owner attaches to it
            await rt.endpoint.detach()

    def _say_unsaid(self) -> None:
        while self._unsaid:
            kind, reason, data = self._unsaid[0]
            try:
                self.ctx.event(None, kind, reason, data)
            except DumontError as exc:
                log.debug("%s not recorded yet (%s); said when the store answers", kind, exc)
                return
            self._unsaid.pop(0)

    async def tick(self) -> None:
        """Observe, decide and act once for every pair; a pair whose step fails unexpectedly is reported, the others
        go on."""
        self.ticks += 1
        self.last_tick_at = self.ctx.clock()
        phases = _Phases(self.ctx.clock)
        pairs = list(self.pairs.values())  # leases may change hands while the tick awaits
        await asyncio.gather(*(self._refresh_endpoint(rt) for rt in pairs))
        phases.done("endpoints")
        if self.mirrors is not None:
            try:
                await self.mirrors.follow(self.pairs)
            except Exception as exc:
                self.ctx.internal_errors.report("the fleet's mirrored endpoints", exc)
            phases.done("mirrors")
        network = await self.ctx.network_ok()
        phases.done("network")
        self._listed = await self._list_providers()
        phases.done("lists")
        turns, in_flight = self._recovery_turns()
        self._slowest_observe = (0.0, "")
        # Each pair decides as soon as its own observation is in, and acts beside the others: a dead GPU's failover
        # waits neither for the slowest healthy pair's probe nor for the other pairs' failovers.
        await asyncio.gather(*(self._step(rt, network, rt.name in turns, in_flight) for rt in pairs))
        phases.done("pairs")
        self.last_tick_seconds = phases.total()
        slow = self.last_tick_seconds > 2 * self.ctx.config.health_check_interval
        if slow and self.ctx.clock() - self._slow_said_at >= SLOW_TICK_SAID_EVERY:  # not every tick of a slow run
            self._slow_said_at = self.ctx.clock()
            log.warning("a tick of %d pair(s) took %.2f s, over twice the %g s health-check interval (%s): failures "
                        "are detected that much later", len(pairs), self.last_tick_seconds,
                        self.ctx.config.health_check_interval, phases.summary()
                        + f"; the slowest observation: {self._slowest_observe[1]}, {self._slowest_observe[0]:.2f} s")
        for listener in list(self.tick_listeners):
            try:
                listener(self.ticks)
            except Exception as exc:
                self.ctx.internal_errors.report("a tick listener", exc)

    async def _list_providers(self) -> dict[str, dict[str, Instance]]:
        """One instance list per GPU market or standby cloud holding two or more of the pairs' hosts, instead of
        one get for each (Vast limits each endpoint's rate per account; GCP counts reads against a per-minute
        quota). A provider whose list fails is asked host by host."""
        held = collections.Counter(ref.provider for rt in self.pairs.values() for ref in (rt.primary, rt.standby)
                                   if ref is not None)
        listed: dict[str, dict[str, Instance]] = {}
        for provider, count in held.items():
            source: GpuMarket | StandbyCloud | None = self.ctx.markets.get(provider) or self.ctx.clouds.get(provider)
            if count < 2 or source is None:
                continue
            try:
                listed[provider] = {i.instance_id: i for i in await source.list()}
            except DumontError as exc:
                log.debug("listing %s failed (%s); asking for each host instead", provider, exc)
            except Exception as exc:
                self.ctx.internal_errors.report(f"the {provider} provider's list", exc)
        return listed

    def _recovery_turns(self) -> tuple[frozenset[str], int]:
        """Which failed-over pairs may start a recovery this tick, and how many recoveries run now, across the
        fleet: the pairs other controllers hold are counted from the store, and wait in the same order."""
        running = sum(rt.state == PairState.RECOVERING for rt in self.pairs.values())
        waiting = [(rt.name, rt.timings.get("decided_at", 0.0)) for rt in self.pairs.values()
                   if rt.state == PairState.FAILED_OVER]
        limit = self.ctx.config.controller.max_recoveries_in_flight
        if waiting and limit and len(self.pairs) < len(self.ctx.config.pairs):
            try:  # one read, and only while a pair of this controller waits for its turn
                rows = [row for row in self.ctx.store.pairs() if row.name not in self.pairs]
            except DumontError as exc:
                log.debug("the other controllers' recoveries cannot be counted (%s): none starts now", exc)
                return frozenset(), running
            running += sum(row.state == PairState.RECOVERING for row in rows)
            waiting += [(row.name, row.updated_at) for row in rows if row.state == PairState.FAILED_OVER]
        return frozenset(name for name in recovery_turns(waiting, running, limit) if name in self.pairs), running

    async def _refresh_endpoint(self, rt: PairRuntime) -> None:
        """Tell the endpoint we are alive and read its counters; its loss is said once, and its return."""
        try:
            await rt.endpoint.refresh()
        except DumontError as exc:
            if not rt.endpoint_lost:
                rt.endpoint_lost = True
                self.ctx.event(rt.name, "endpoint_unreachable", f"the pair's endpoint does not answer: {exc}; it "
                                                                 "keeps serving the last primary it was given")
            return
        except Exception as exc:
            self.ctx.internal_errors.report("refreshing the endpoint", exc, rt.name)
            return
        if rt.endpoint_lost:
            rt.endpoint_lost = False
            self.ctx.event(rt.name, "endpoint_reachable", "the pair's endpoint answers again")

    async def _step(self, rt: PairRuntime, network: bool | None, recovery_turn: bool, in_flight: int) -> None:
        """Observe one pair, decide, act."""
        started = self.ctx.clock()
        observed = await self._observe_safely(rt, network)
        self._slowest_observe = max(self._slowest_observe, (self.ctx.clock() - started, rt.name))
        if observed is None or not self.acts_on(rt.name):
            return
        observation = dataclasses.replace(observed, recovery_turn=recovery_turn, recoveries_in_flight=in_flight)
        try:
            decision = decide(observation, rt.memory, self.policy)
        except Exception as exc:
            self.ctx.internal_errors.report("decide", exc, rt.name)
            return
        rt.memory, rt.observation = decision.memory, observation
        if observation.outcome is rt.outcome:
            rt.outcome = None  # decided on once
        await self.act(rt, decision)
        if rt.outcome is not None:
            self.wake()  # an effector reported something: decide on it now, not a whole interval later

    async def _observe_safely(self, rt: PairRuntime, network: bool | None) -> Observation | None:
        try:
            return await self.observe(rt, network)
        except Exception as exc:
            self.ctx.internal_errors.report("observing the pair", exc, rt.name)
            return None

    async def observe(self, rt: PairRuntime, network: bool | None) -> Observation:
        """One frozen snapshot of a pair: probes of both hosts, sync, operation, pending intents."""
        ctx, timeout = self.ctx, self.ctx.config.health.probe_timeout_seconds
        command = ctx.config.health.gpu_check_command

        async def instance(ref: HostRef) -> Instance:
            known = self._listed.get(ref.provider, {}).get(ref.instance_id)
            if known is not None:
                return known  # this tick's list of the market (one call for every pair)
            try:
                return await ctx.instance(ref)
            except DumontError:
                raise
            except Exception as exc:  # a bug in a provider plug-in: reported once, the host is not judged by it
                ctx.internal_errors.report(f"the {ref.provider} provider's get", exc, rt.name)
                raise ProviderUnavailable(f"the {ref.provider} provider failed unexpectedly: "
                                          f"{type(exc).__name__}") from exc

        async def check(ref: HostRef | None) -> HostHealth | None:
            if ref is None or rt.state == PairState.PAUSED:
                return None
            health = await probes.probe_host(ref, get_instance=instance, hosts=ctx.hosts,
                                             timeout=timeout, command=command if ref.role == "gpu" else None)
            rt.last_probes[ref.alias] = (ctx.clock(), health)
            return health

        # A tick woken early (an intent, an outcome) reuses probes younger than half an interval: 2,000 intents
        # must not mean 2,000 rounds of fresh SSH logins (hostile-review.md #15), and count no failure twice.
        fresh_after = ctx.clock() - ctx.config.health_check_interval / 2
        seen = [rt.last_probes.get(ref.alias) if ref is not None else None for ref in (rt.primary, rt.standby)]
        reuse = rt.state != PairState.PAUSED and all(
            ref is None or (s is not None and s[0] > fresh_after)
            for ref, s in zip((rt.primary, rt.standby), seen, strict=True))
        if reuse:
            primary, standby = (s[1] if s is not None else None for s in seen)
        else:
            primary, standby = await asyncio.gather(check(rt.primary), check(rt.standby))
        now = ctx.clock()
        intents = tuple(Intent(i.id, i.kind, i.created_at) for i in ctx.store.pending_intents(rt.name))
        recoveries = ctx.store.operations_since(rt.name, "recovery", now - 86_400)
        if rt.operation is not None and rt.operation.kind == "recovery" and not rt.operation.finished:
            recoveries -= 1  # the one running now is not "another"
        # Only failed attempts count: a standby preempted four times in an hour, replaced each time, is replaced
        # a fifth (counting every attempt left the pair unprotected for the rest of the hour: a chaos finding).
        attempts = ctx.store.operations_since(rt.name, "replace_standby", now - 3600, failed=True)
        return Observation(now=now, state=rt.state, has_standby=rt.standby is not None, primary=primary,
                           standby=standby, network_ok=network, sync=rt.sync, operation=rt.operation,
                           intents=intents, recoveries_today=max(0, recoveries), standby_attempts_last_hour=attempts,
                           outcome=rt.outcome, probed=not reuse, changed_at=rt.changed_at)

    async def act(self, rt: PairRuntime, decision: Decision) -> None:
        """Carry out a decision's actions, in order."""
        # The events these actions record log each transition once (ControllerContext.event); this is the trace.
        log.debug("%s: %s", rt.name, decision.reason)
        rt.last_reason = decision.reason
        failure = None
        for action in decision.actions:
            if not self.acts_on(rt.name):
                log.warning("%s: not doing %s: this controller no longer holds the pair's lease", rt.name,
                            type(action).__name__)
                break
            try:
                await self._do(rt, action, decision.reason)
            except DumontError as exc:
                failure = f"{type(action).__name__} failed: {exc}"
                if failure != rt.last_action_error:  # the same failure every tick is reported once
                    self.ctx.event(rt.name, "action_failed", failure)
            except Exception as exc:  # a bug: reported once, the other actions and pairs go on
                self.ctx.internal_errors.report(f"the {type(action).__name__} action", exc, rt.name)
        rt.last_action_error = failure

    async def _do(self, rt: PairRuntime, action: Action, reason: str) -> None:
        ctx = self.ctx
        if isinstance(action, ConsumeIntent):
            ctx.store.consume_intent(action.intent_id, action.outcome)
        elif isinstance(action, SetState):
            previous, rt.state = rt.state, action.state
            if action.state == PairState.PAUSED:
                await self._pause_work(rt)
            ctx.store.save_pair(rt.row())
            ctx.event(rt.name, "state", reason, {"from": str(previous), "to": str(action.state)})
        elif isinstance(action, Alert):
            ctx.event(rt.name, "alert", action.message, {"alert": action.kind})
        elif isinstance(action, RunSync):
            if rt.sync_task is None or rt.sync_task.done():
                rt.changed_at = None  # this pass takes every change seen so far; later ones start the next
                rt.sync_task = start_background(ctx, rt, "sync", lambda: run_sync(ctx, rt))
                rt.sync_task.add_done_callback(lambda _: self._pass_ended(rt))
        elif isinstance(action, FailOver):
            await fail_over(ctx, rt, action.cause)
        elif isinstance(action, StartRecovery):
            self._start_operation(rt, "recovery", "searching", reason)
        elif isinstance(action, ReplaceStandby):
            self._start_operation(rt, "replace_standby", "creating", reason, {"only_restart": action.only_restart})
        elif isinstance(action, RefreshAddress):
            await self._refresh_address(rt, action)
        elif isinstance(action, StartCpu):
            await self._start_cpu(rt)

    async def _start_cpu(self, rt: PairRuntime) -> None:
        """Ask the cloud to start the CPU serving a failed-over pair again (the next ticks follow it)."""
        cpu = rt.primary
        if cpu is None or cpu.role != "cpu":
            return
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                await self.ctx.cloud(cpu.provider).start(cpu.instance_id)
        except TimeoutError:
            raise DumontError(f"{cpu.provider} did not answer a start of {cpu.instance_id} within "
                              f"{START_TIMEOUT_SECONDS:g} s", hint="the next tick asks again") from None
        self.ctx.event(rt.name, "cpu_started", f"asked {cpu.provider} to start {cpu.instance_id} again; its disk "
                                               "holds the workspace", {"instance_id": cpu.instance_id})

    async def _refresh_address(self, rt: PairRuntime, action: RefreshAddress) -> None:
        """Follow a host to the address its provider reports now; its pinned host key stays as it was."""
        old = rt.primary if action.role == "primary" else rt.standby
        if old is None or (old.ssh_host, old.ssh_port) == (action.ssh_host, action.ssh_port):
            return
        new = dataclasses.replace(old, ssh_host=action.ssh_host, ssh_port=action.ssh_port)
        await self.ctx.hosts.forget(old, still_ready=True)
        if action.role == "primary":
            rt.primary = new
            await rt.endpoint.point_to((new.ssh_host, new.ssh_port), reason=f"{new.alias} moved to a new address",
                                       epoch=rt.epoch)
        else:
            rt.standby = new
        rt.paired_epoch = None  # the primary's way to the standby is set up again
        self.ctx.store.save_pair(rt.row())
        self.ctx.event(rt.name, "address_changed", f"{new.alias} is now at {new.ssh_host}:{new.ssh_port} (was "
                                                   f"{old.ssh_host}:{old.ssh_port}); its host key is unchanged",
                       {"host": new.alias, "from": f"{old.ssh_host}:{old.ssh_port}",
                        "to": f"{new.ssh_host}:{new.ssh_port}"})

    async def _pause_work(self, rt: PairRuntime) -> None:
        """Stop the pair's background work. An interrupted operation stays open in the store (with any instance it
        rented), so resuming the pair picks it up where it stopped instead of starting over."""
        await cancel(rt.sync_task)
        if rt.op_task is not None and not rt.op_task.done():
            await cancel(rt.op_task, timeout=30)
            rt.operation = None

    def resume_operation(self, rt: PairRuntime) -> None:
        """Restart the background task of an operation left unfinished by a previous controller."""
        if rt.operation is not None:
            self._start_operation(rt, rt.operation.kind, rt.operation.step, "resuming after a controller restart")

    def _start_operation(self, rt: PairRuntime, kind: str, step: str, reason: str,
                         data: dict[str, Any] | None = None) -> None:
        if rt.op_task is not None and not rt.op_task.done():
            return
        ctx = self.ctx
        existing = ctx.store.open_operation(rt.name)
        op_id = existing.id if existing is not None and existing.kind == kind else ctx.store.start_operation(
            rt.name, kind, step, data)
        row = ctx.store.operation(op_id)
        assert row is not None
        rt.operation = OperationStatus(kind, row.step, row.started_at)
        rt.operation_id = op_id
        work = recover if kind == "recovery" else replace_standby
        ctx.event(rt.name, f"{kind}_started" if existing is None else f"{kind}_resumed", reason, {"operation": op_id})
        def crashed(error: str) -> None:
            # An unexpected error must end the operation, or the pair would wait for it forever.
            ctx.store.finish_operation(op_id, succeeded=False, error=error)
            rt.operation = OperationStatus(kind, "crashed", row.started_at, True, False, error)

        rt.op_task = start_background(ctx, rt, kind, lambda: work(ctx, rt, op_id), on_crash=crashed)


def say_taken(ctx: ControllerContext, name: str, claimed_at: float) -> None:
    """The first event of a pair's history under a new owner: which controller acts on it from now on."""
    row = ctx.store.get_pair(name)
    ctx.event(name, "lease_taken", f"controller {ctx.controller_id} acts on the pair now",
              {"epoch": row.epoch if row is not None else None, "claimed_at": claimed_at})


async def watch_the_loop(controller: Controller, *, every: float, stalled_after: float) -> None:
    """Say so, once, when the loop stops ticking (a stuck await somewhere), and when it ticks again."""
    ctx, stalled = controller.ctx, False
    while True:
        await asyncio.sleep(every)  # a watchdog samples; nothing announces that something did not happen
        last = controller.last_tick_at
        age = ctx.clock() - last if last is not None else 0.0
        if age > stalled_after and not stalled:
            stalled = True
            ctx.event(None, "loop_stalled", f"the controller's loop has not ticked for {age:.0f} s: no failure is "
                                            "detected meanwhile; the log says what it waits for")
        elif age <= stalled_after and stalled:
            stalled = False
            ctx.event(None, "loop_resumed", "the controller's loop ticks again")


class _Phases:
    """How long each phase of a tick took (for the warning a slow tick gives)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = self._last = clock()
        self.seconds: dict[str, float] = {}

    def done(self, phase: str) -> None:
        now = self.clock()
        self.seconds[phase] = now - self._last
        self._last = now

    def total(self) -> float:
        return self._last - self.started

    def summary(self) -> str:
        return ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self.seconds.items())
