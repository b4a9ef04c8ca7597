"""The loop on fakes: every state change is a decision with its reason, and nothing escapes a tick."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dumont.core.controller import Controller
from dumont.core.fakes import FakeMachine
from dumont.core.model import PairState
from dumont.core.pair import PairRuntime
from dumont.providers.base import InstanceState, ProviderUnavailable
from tests.unit.core.world import World, controller_of, gpu_ref, make_world, second_pair, synced_pair, two_pair_world


async def tick_until(world: World, controller: Controller, rt: PairRuntime, done: Callable[[], bool], *,
                     ticks: int = 200) -> None:
    """Tick (one health interval of virtual time each) until ``done()``, letting background work run."""
    for _ in range(ticks):
        await controller.tick()
        await world.clock.sleep(world.ctx.config.health_check_interval)
        if done():
            return
    raise AssertionError(f"the pair stayed {rt.state}; last reason: {rt.last_reason}")


def state_changes(world: World) -> list[tuple[str, str, str]]:
    """(from, to, reason) of every state event in the store, in order."""
    return [(str(e.data["from"]), str(e.data["to"]), e.reason)
            for e in world.ctx.store.events(limit=10_000) if e.kind == "state"]


async def test_a_failover_and_failback_are_each_state_change_once_with_its_reason(tmp_path: Path) -> None:
    """Given a synced pair whose GPU stops answering, the log shows degraded, failed over, recovering and, once the
    new GPU serves, "recovered in N s": each change once, each with the sentence that caused it."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        world.machine(rt.primary).reachable = False
        await tick_until(world, controller, rt, lambda rt=rt: rt.state == PairState.SYNCING and rt.epoch == 3)
        changes = state_changes(world)
        assert [(a, b) for a, b, _ in changes] == [("syncing", "degraded"), ("degraded", "failed_over"),
                                                   ("failed_over", "recovering"), ("recovering", "syncing")]
        reasons = [r for _, _, r in changes]
        assert reasons[1].startswith("failed over to the standby: the GPU failed 3 consecutive health checks")
        assert reasons[3].startswith("recovered in ") and "the new GPU serves the endpoint" in reasons[3]
        assert rt.primary is not None and rt.primary.instance_id == "30000002" and rt.epoch == 3


async def test_an_agent_answering_garbage_is_one_internal_error_and_the_loop_ticks_on(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        world.machine(rt.standby).fail["run_pass"] = json.JSONDecodeError("Expecting value", "Welcome!", 0)
        for _ in range(10):
            await controller.tick()
            await world.clock.sleep(world.ctx.config.sync_interval_seconds)
            if rt.sync_task is not None:
                await asyncio.wait({rt.sync_task}, timeout=5)
        assert controller.ticks == 10
        errors = [e for e in world.ctx.store.events() if e.kind == "internal_error"]
        assert len(errors) == 1 and "JSONDecodeError" in errors[0].reason and errors[0].pair == "main"
        assert world.ctx.internal_errors.total >= 5, "every repeat is counted, none reported twice"


async def test_a_provider_raising_the_unexpected_is_reported_once_and_judges_nothing(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        world.market.fail["get"] = KeyError("actual_status")
        for _ in range(6):
            await controller.tick()
            await world.clock.sleep(1)
        assert controller.ticks == 6 and rt.state == PairState.SYNCING, "an unknown is not a failure"
        errors = [e for e in world.ctx.store.events() if e.kind == "internal_error"]
        assert len(errors) == 1 and "KeyError" in errors[0].reason and "vast" in errors[0].reason


async def test_a_listener_that_throws_is_reported_once_and_the_others_still_hear(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    heard: list[str] = []

    def broken(pair: str | None, kind: str, reason: str, data: dict[str, object]) -> None:
        raise RuntimeError("the notifier is down")

    world.ctx.listeners.insert(0, broken)
    world.ctx.listeners.append(lambda pair, kind, reason, data: heard.append(kind))
    for n in range(3):
        world.ctx.event("main", "sync_failed", f"pass {n} failed")
    assert heard == ["sync_failed"] * 3
    errors = [e for e in world.ctx.store.events() if e.kind == "internal_error"]
    assert len(errors) == 1 and "RuntimeError" in errors[0].reason


async def test_a_bug_in_an_action_keeps_the_endpoint_listening(tmp_path: Path) -> None:
    """A KeyError inside a failover (the review's probe) used to end `dumont run` and close the endpoint."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        world.machine(rt.standby).fail["take_over"] = KeyError("epoch")
        world.ctx.store.add_intent("main", "failover")
        for _ in range(3):
            await controller.tick()
        assert controller.ticks == 3 and rt.endpoint.stats().target is not None
        _, writer = await asyncio.open_connection(*rt.endpoint.address)  # still accepting
        writer.close()
        assert [e.kind for e in world.ctx.store.events()].count("internal_error") == 1


async def test_special_files_are_named_once_not_skipped_in_silence(tmp_path: Path) -> None:
    """hostile-review.md #16: a FIFO and a socket in the workspace were skipped with no word."""
    from dumont.core.pair import run_sync

    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        assert rt.primary is not None
        world.machine(rt.primary).special = ("run/app.sock", "pipes/in")
        for n in range(3):
            world.machine(rt.primary).workspace["log.txt"] = f"line {n}\n".encode()
            report = await run_sync(world.ctx, rt)
            assert report is not None and report.as_record()["skipped"] == ["run/app.sock", "pipes/in"]
        [said] = world.reasons("special_files_skipped")
        assert "2 special file(s)" in said and "'run/app.sock', 'pipes/in'" in said
        world.machine(rt.primary).special = ("run/app.sock",)
        await run_sync(world.ctx, rt)
        assert len(world.reasons("special_files_skipped")) == 2, "a new set is named again"


async def test_a_flood_of_woken_ticks_reuses_fresh_probes_and_counts_no_failure_twice(tmp_path: Path) -> None:
    """hostile-review.md #15: each of 2,000 sync intents woke a full tick of fresh SSH probes."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        gpu = rt.primary
        assert gpu is not None

        def probes() -> int:
            return sum(1 for op, _ in world.hosts.calls if op == "probe")

        await controller.tick()
        first, began = probes(), world.clock()
        for _ in range(50):  # woken again and again, each intent a (virtual) 0.1 s pass
            world.ctx.store.add_intent("main", "sync")
            await controller.tick()
        half = world.ctx.config.health_check_interval / 2
        rounds = int((world.clock() - began) // half) + 1
        assert probes() - first <= 2 * rounds < 50, "fresh probes at most once per half interval, not per wake"
        world.machine(gpu).reachable = False
        await world.clock.sleep(world.ctx.config.health_check_interval)
        await controller.tick()
        for _ in range(5):
            await controller.tick()
        assert rt.memory.primary_failures == 1, "one failed check, however many woken ticks saw it"


async def test_the_standby_is_scrubbed_after_a_pass_once_per_interval_and_what_it_found_is_said(
        tmp_path: Path) -> None:
    """hostile-review.md #6: 7 corrupt bytes in a snapshot were never noticed."""
    from dumont.core.pair import run_sync

    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        assert rt.standby is not None
        world.machine(rt.standby).corrupt = [
            {"path": "model.pt", "where": "snapshot 2", "repaired_from": "candidate"},
            {"path": "data.csv", "where": "candidate", "repaired_from": None}]
        await run_sync(world.ctx, rt)
        await run_sync(world.ctx, rt)  # within the interval: no second scrub
        assert sum(1 for op, _ in world.hosts.calls if op == "scrub") == 1
        assert world.reasons("corruption_repaired") == [
            f"'model.pt' in the snapshot 2 on {rt.standby.alias} did not match its manifest; rewritten from the "
            "candidate"]
        [found] = world.reasons("corruption_found")
        assert "'data.csv' in the candidate" in found and "sends it again from the primary" in found
        await world.clock.sleep(world.ctx.config.replication.scrub_interval_seconds)
        await run_sync(world.ctx, rt)
        assert sum(1 for op, _ in world.hosts.calls if op == "scrub") == 2


async def test_a_change_on_the_primary_starts_a_pass_after_the_debounce_not_the_interval(tmp_path: Path) -> None:
    """replication.on_change: the watcher's report wakes the loop; one pass takes every change seen so far."""
    from dumont.core.changes import watch_changes

    world = make_world(tmp_path, {"replication": {"on_change": True, "change_debounce_seconds": 0.2}})
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        assert rt.primary is not None
        woken: list[float] = []
        watcher = asyncio.create_task(watch_changes(world.ctx, rt, lambda w=woken: w.append(world.clock())))
        try:
            await controller.tick()
            if rt.sync_task is not None:
                await rt.sync_task  # whatever the tick started is done: the next pass can only be the change's
            await controller.tick()
            assert rt.sync_task is None or rt.sync_task.done(), "no pass is due for a whole interval"
            gpu = rt.primary.alias

            def passes_now(gpu: str = gpu) -> int:
                return sum(1 for op, alias in world.hosts.calls if op == "run_pass" and alias == gpu)
            passes = passes_now()
            world.machine(rt.primary).changed.set()
            for _ in range(5):
                await asyncio.sleep(0)
            assert rt.changed_at is not None and woken == [rt.changed_at + 0.2]
            await controller.tick()
            assert rt.changed_at is None, "the pass that starts takes every change seen so far"
            assert rt.sync_task is not None
            await rt.sync_task
            assert passes_now() == passes + 1
        finally:
            watcher.cancel()


async def test_a_watcher_that_falls_back_to_polling_says_so_once(tmp_path: Path) -> None:
    from dumont.core.changes import watch_changes

    world = make_world(tmp_path, {"replication": {"on_change": True}})
    async for rt in synced_pair(world):
        assert rt.primary is not None
        world.machine(rt.primary).watch_mode = "poll"
        watcher = asyncio.create_task(watch_changes(world.ctx, rt, lambda: None))
        try:
            for _ in range(3):
                world.machine(rt.primary).changed.set()
                for _ in range(5):
                    await asyncio.sleep(0)
            [said] = world.reasons("watch_degraded")
            assert "by polling, not inotify" in said and "max_user_watches" in said
        finally:
            watcher.cancel()


async def test_a_tick_lists_a_market_once_for_all_its_pairs_instead_of_a_get_for_each(tmp_path: Path) -> None:
    """Vast limits each endpoint's rate per account: two pairs on one market cost one list per tick, not two
    gets; a list that fails falls back to a get per host, and the pairs are judged as before."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        second_gpu = world.market._new("30000009", machine_id="m9", label="dumont-second", price=0.25)
        world.clock.now = max(world.clock.now, second_gpu.ready_at) + 1
        other = PairRuntime(dataclasses.replace(rt.config, name="second"), PairState.SYNCING, 1,
                            gpu_ref(world, "30000009"), None, rt.endpoint)
        controller = Controller(world.ctx, [rt, other])
        world.market.calls.clear()
        await controller.tick()
        assert world.market.calls["list"] == 1 and world.market.calls["get"] == 0
        assert rt.observation is not None and rt.observation.primary is not None
        assert rt.observation.primary.ok and rt.observation.primary.provider_state == InstanceState.RUNNING
        world.market.fail["list"] = ProviderUnavailable("the list endpoint is down")
        world.market.calls.clear()
        await world.clock.sleep(world.ctx.config.health_check_interval)
        await controller.tick()
        assert world.market.calls["get"] == 2, "each pair's GPU asked for on its own"
        assert rt.state == PairState.SYNCING and rt.memory.primary_failures == 0


async def test_a_tick_lists_the_standby_cloud_once_for_all_its_standbys(tmp_path: Path) -> None:
    """Two pairs' standbys on one cloud cost one list per tick, not a get for each, and a preempted one is seen
    in that list as the get would show it."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        world.cloud._new("dumont-second-standby-0", user="dumont")
        second_cpu = dataclasses.replace(rt.standby, instance_id="dumont-second-standby-0",
                                         alias="gcp-dumont-second-standby-0")
        other = PairRuntime(dataclasses.replace(rt.config, name="second"), PairState.SYNCING, 1, None, second_cpu,
                            rt.endpoint)
        controller = Controller(world.ctx, [rt, other])
        await world.cloud.preempt("dumont-second-standby-0")
        world.cloud.calls.clear()
        await controller.tick()
        assert world.cloud.calls["list"] == 1 and world.cloud.calls["get"] == 0
        assert other.observation is not None and other.observation.standby is not None
        assert other.observation.standby.provider_state == InstanceState.PREEMPTED


async def test_gpus_lost_at_once_fail_over_side_by_side_each_waiting_for_nothing_but_its_own_standby(
        tmp_path: Path) -> None:
    """Ten GPUs on one Vast host go at once (bench/fleet.py): each pair's failover runs beside the others', so a
    standby slow to take over keeps only its own pair's user waiting; one after the other, the last pair's user
    waited for every failover before it."""
    world = two_pair_world(tmp_path)
    async for rt in synced_pair(world):
        other = await second_pair(world)
        try:
            controller = Controller(world.ctx, [rt, other])
            slow = world.machine(rt.standby).hold["take_over"] = asyncio.Event()
            seen = announced(world, "second", "failover")
            world.machine(rt.primary).reachable = world.machine(other.primary).reachable = False
            for _ in range(world.ctx.config.failover_threshold - 1):
                await controller.tick()
                await world.clock.sleep(world.ctx.config.health_check_interval)
            deciding = asyncio.create_task(controller.tick())
            await asyncio.wait_for(seen.wait(), timeout=10)  # a bound: the failover is announced, not polled for
            assert not deciding.done() and "failover" not in [k for p, k, _, _ in world.events if p == "main"]
            slow.set()
            await deciding
            assert [p for p, k, _, _ in world.events if k == "failover"] == ["second", "main"]
        finally:
            await other.endpoint.stop()


async def test_a_lost_gpu_fails_over_without_waiting_for_a_slow_probe_of_another_pair(tmp_path: Path) -> None:
    """A healthy pair whose probe is slow (a login on a loaded host) does not hold up another pair's failover:
    each pair decides as soon as its own observation is in."""
    world = two_pair_world(tmp_path)
    async for rt in synced_pair(world):
        other = await second_pair(world)
        try:
            controller = Controller(world.ctx, [rt, other])
            world.machine(rt.primary).reachable = False
            for _ in range(world.ctx.config.failover_threshold - 1):
                await controller.tick()
                await world.clock.sleep(world.ctx.config.health_check_interval)
            seen = announced(world, "main", "failover")
            slow = world.machine(other.primary).hold["probe"] = asyncio.Event()
            deciding = asyncio.create_task(controller.tick())
            await asyncio.wait_for(seen.wait(), timeout=10)
            assert not deciding.done(), "the second pair's probe is still out"
            slow.set()
            await deciding
            assert other.state == PairState.SYNCING
        finally:
            await other.endpoint.stop()


def announced(world: World, pair: str, kind: str) -> asyncio.Event:
    """An event set when the controller records ``kind`` for ``pair``."""
    seen = asyncio.Event()

    def hear(said_pair: str | None, said_kind: str, reason: str, data: dict[str, Any]) -> None:
        if (said_pair, said_kind) == (pair, kind):
            seen.set()

    world.ctx.listeners.append(hear)
    return seen


async def test_a_standby_preempted_again_and_again_is_replaced_each_time_within_the_hour(tmp_path: Path) -> None:
    """The hour's limit counts failed attempts to bring a standby back: four preemptions within an hour, each
    followed by a successful restart, leave the pair protected after the fourth (a chaos campaign found every
    attempt counted, and a pair left without a standby for the rest of the hour)."""
    world = make_world(tmp_path)
    world.clock.now = time.time()  # the store stamps operations with the real clock: the window must hold them
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        began = world.clock()
        for round_no in range(4):
            assert rt.standby is not None
            await world.cloud.preempt(rt.standby.instance_id)
            await tick_until(world, controller, rt, lambda r=rt: r.state == PairState.STANDBY_LOST)
            await tick_until(world, controller, rt, lambda r=rt: r.state == PairState.SYNCING)
            assert world.ctx.store.operations_since("main", "replace_standby", 0) == round_no + 1
        assert world.clock() - began < 3600
        assert not [e for e in world.ctx.store.events(limit=10_000) if e.kind == "alert"
                    and "attempts to create a standby" in e.reason]


async def test_a_gpu_lost_while_its_standby_is_preempted_fails_over_once_the_standby_is_started_again(
        tmp_path: Path) -> None:
    """A chaos finding: the GPU killed while its standby was preempted left the pair waiting for ever ("cannot fail
    over"). The standby's disk holds the snapshot: it is started again (no new VM, nothing copied from the dead
    GPU), and the pair fails over to it."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        gpu, standby = rt.primary, rt.standby
        assert gpu is not None and standby is not None
        kept = dict(world.machine(standby).snapshots[-1])
        await world.cloud.preempt(standby.instance_id)
        world.market.instances[gpu.instance_id].state = InstanceState.OFFLINE
        world.machine(gpu).reachable = False
        await tick_until(world, controller, rt, lambda r=rt: r.primary is not None and r.primary.role == "cpu")
        assert rt.primary is not None and rt.primary.instance_id == standby.instance_id
        assert world.machine(rt.primary).workspace == kept
        assert world.reasons("standby_restarted") and not world.reasons("standby_created")
        assert sorted(world.cloud.instances) == [standby.instance_id]
        assert [b for _, b, _ in state_changes(world)][:2] == ["standby_lost", "syncing"]


async def test_a_cpu_preempted_while_it_serves_is_started_again_before_any_gpu_is_rented(tmp_path: Path) -> None:
    """The CPU holds the only workspace once the GPU is gone: a recovery could restore nothing from a preempted one
    (and rented a GPU for each attempt). It is started again, the endpoint follows it, and then it recovers."""
    world = make_world(tmp_path, {"auto_recovery": False})
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        assert rt.primary is not None
        world.market.instances[rt.primary.instance_id].state = InstanceState.OFFLINE
        await tick_until(world, controller, rt, lambda r=rt: r.state == PairState.FAILED_OVER)
        cpu = rt.primary
        assert cpu is not None and cpu.role == "cpu"
        await world.cloud.preempt(cpu.instance_id)
        moved = cpu.ssh_port
        await tick_until(world, controller, rt, lambda r=rt, m=moved: r.primary is not None and r.primary.ssh_port != m)
        assert world.cloud.calls["start"] == 1 and world.reasons("cpu_started")
        assert rt.endpoint.relay.stats().target == (rt.primary.ssh_host, rt.primary.ssh_port), "the endpoint followed"
        assert sorted(world.market.instances) == ["30000001"], "no GPU rented while the CPU was down"
        world.ctx.store.add_intent("main", "recover")
        await tick_until(world, controller, rt, lambda r=rt: r.state == PairState.SYNCING and r.epoch == 3)
        assert rt.primary is not None and rt.primary.role == "gpu"
        assert world.machine(rt.primary).workspace == world.machine(rt.standby).snapshots[-1]


async def test_a_pair_still_recorded_recovering_after_its_failback_is_protected_again_renting_nothing(
        tmp_path: Path) -> None:
    """Killed between the failback and the state change, the controller restarts with the pair "recovering", no
    open operation, the new GPU serving and the CPU its standby: it must not start another recovery from the GPU."""
    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        rt.state = PairState.RECOVERING
        controller = controller_of(world, rt)
        cpu = rt.standby
        await tick_until(world, controller, rt, lambda r=rt: r.state == PairState.SYNCING)
        assert sorted(world.market.instances) == ["30000001"] and rt.standby == cpu


async def test_the_loop_ticks_when_a_pass_falls_due_and_when_an_overdue_pass_ends(tmp_path: Path) -> None:
    """bench/rpo.py without on_change: a pass waited up to a health-check interval past its due instant, and one
    that ran past the next one's due instant waited as long again, both adding to the RPO."""
    world = make_world(tmp_path, {"health_check_interval": 5})
    async for rt in synced_pair(world):
        assert rt.primary is not None
        controller = controller_of(world, rt)
        await controller.tick()
        assert rt.sync_task is not None
        await rt.sync_task
        assert rt.sync.last_started_at is not None
        assert controller.pass_due_at() == rt.sync.last_started_at + world.ctx.config.sync_interval_seconds
        assert not controller._wake.is_set(), "a pass that ended before the next was due wakes nothing"
        await world.clock.sleep(world.ctx.config.sync_interval_seconds)
        world.machine(rt.primary).hold["run_pass"] = held = asyncio.Event()
        await controller.tick()
        assert controller.pass_due_at() == math.inf, "one pass in flight: the next is not due"
        await world.clock.sleep(world.ctx.config.sync_interval_seconds)  # the held pass runs past the next's
        held.set()
        await rt.sync_task
        await asyncio.sleep(0)
        assert controller._wake.is_set(), "the overdue pass starts as the last one ends, not at the next tick"


async def test_a_slow_tick_says_which_phase_and_pair_took_the_time_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """bench/fleet.py at 50 pairs ran ticks of 5-8 s against 1 s: the warning names the phases and the slowest
    pair's observation, and a run of slow ticks is said once a minute, not every tick."""
    from dumont.core.controller import SLOW_TICK_SAID_EVERY

    world = make_world(tmp_path)
    async for rt in synced_pair(world):
        controller = controller_of(world, rt)
        machine = world.machine(rt.primary)
        with caplog.at_level("WARNING", logger="dumont.controller"):
            await _slow_tick(world, controller, machine)
            await _slow_tick(world, controller, machine)
            [said] = [r.getMessage() for r in caplog.records if "a tick of" in r.getMessage()]
            assert "pairs 3." in said and "the slowest observation: main, 3.00 s" in said
            await world.clock.sleep(SLOW_TICK_SAID_EVERY)
            await _slow_tick(world, controller, machine)
            assert sum("a tick of" in r.getMessage() for r in caplog.records) == 2


async def _slow_tick(world: World, controller: Controller, machine: FakeMachine) -> None:
    """A tick whose probe of ``machine`` takes three health-check intervals (virtual time)."""
    held = machine.hold["probe"] = asyncio.Event()
    ticking = asyncio.create_task(controller.tick())
    for _ in range(5):
        await asyncio.sleep(0)  # the tick is in the probe
    await world.clock.sleep(3 * world.ctx.config.health_check_interval)
    held.set()
    await ticking
