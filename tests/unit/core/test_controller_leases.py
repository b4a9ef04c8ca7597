"""The loop with leases, on fakes and virtual time: a pair whose lease is lost is let go at once and nothing more
is said or done for it; a pair whose lease is taken is brought up and its unfinished operation resumed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dumont.config import PairConfig
from dumont.core.controller import Controller, PairOpener
from dumont.core.leases import Leases
from dumont.core.model import OperationStatus, PairState
from dumont.core.pair import PairRuntime
from dumont.core.ports import StateStore
from dumont.errors import HostUnreachable
from tests.unit.core.world import make_world, second_pair, synced_pair, two_pair_world

TTL = 8.0


async def test_a_pair_whose_lease_another_controller_took_is_let_go_and_said_nothing_more_of(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.ctx.controller_id = "a"
    async for rt in synced_pair(world):
        store, clock = world.ctx.store, world.clock
        mine = Leases(store, "a", TTL, tick=1, clock=clock)
        theirs = Leases(store, "b", TTL, tick=1, clock=clock)
        assert mine.round(["main"]).taken == ("main",)
        controller = Controller(world.ctx, [rt], leases=mine)
        await controller.tick()
        assert controller.acts_on("main")
        theirs.round(["main"])  # b sees a's lease...
        await clock.sleep(TTL)  # ...unchanged for a whole TTL: a stopped renewing (paused, or cut off)
        assert not controller.acts_on("main"), "a's deadline passed half a TTL after its last renewal"
        assert theirs.round(["main"]).taken == ("main",)
        await controller.tick()  # a tick before the lease round: it decides and does nothing for the pair
        said_before = len(store.events(pair="main", limit=10_000))
        world.ctx.event("main", "note", "late work of a")  # work winding down: not recorded
        assert len(store.events(pair="main", limit=10_000)) == said_before
        await controller.lease_round()
        assert "main" not in controller.pairs
        [lost] = [e for e in store.events(limit=10_000) if e.kind == "lease_lost"]
        assert lost.pair is None and lost.controller == "a" and lost.data["pair"] == "main"
        assert lost.data["stopped_at"] == clock.now
        assert rt.sync_task is None or rt.sync_task.done()


async def test_a_freed_pair_is_taken_brought_up_and_its_open_operation_resumed(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.ctx.controller_id = "b"
    async for rt in synced_pair(world):
        store = world.ctx.store
        gone = Leases(store, "a", TTL, tick=1, clock=world.clock)
        gone.round(["main"])
        op_id = store.start_operation("main", "replace_standby", "creating", {"only_restart": False})
        gone.release_all()  # a stopped cleanly (SIGTERM) in the middle of replacing the standby
        opened: list[str] = []
        controller = Controller(world.ctx, [], leases=Leases(store, "b", TTL, tick=1, clock=world.clock),
                                open_pair=resuming(rt, store, opened))
        await controller.lease_round()
        assert opened == ["main"] and controller.pairs == {"main": rt}
        kinds = [(e.kind, e.controller) for e in store.events(pair="main", limit=10_000)]
        assert kinds[:2] == [("lease_taken", "b"), ("replace_standby_resumed", "b")], kinds
        assert rt.op_task is not None and rt.operation_id == op_id
        rt.op_task.cancel()


def resuming(rt: PairRuntime, store: StateStore, opened: list[str]) -> PairOpener:
    """Brings ``rt`` up as startup.load_pair would: with the operation the store holds open for it."""

    async def open_pair(config: PairConfig) -> PairRuntime:
        opened.append(config.name)
        row = store.open_operation(config.name)
        assert row is not None
        rt.operation, rt.operation_id = OperationStatus(row.kind, row.step, row.started_at), row.id
        return rt

    return open_pair


async def test_a_pair_that_cannot_be_brought_up_is_given_back_and_left_to_the_others(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.ctx.controller_id = "b"
    store, clock = world.ctx.store, world.clock

    async def broken(config: PairConfig) -> PairRuntime:
        raise HostUnreachable(f"the GPU of {config.name} does not answer", hint="later")

    controller = Controller(world.ctx, [], leases=Leases(store, "b", TTL, tick=1, clock=clock), open_pair=broken)
    await controller.lease_round()
    assert controller.pairs == {} and not controller.acts_on("main")
    [unused] = [e for e in store.events(limit=100) if e.kind == "lease_unused"]
    assert "does not answer" in unused.reason
    other = Leases(store, "c", TTL, tick=1, clock=clock)
    assert other.round(["main"]).taken == ("main",), "given back: another controller takes it at once"
    other.release_all()
    await clock.sleep(1)
    await controller.lease_round()
    assert store.lease("main").owner == "", "not taken again before a TTL has passed"  # type: ignore[union-attr]


async def test_the_limit_on_recoveries_is_the_fleets_counting_those_other_controllers_run(tmp_path: Path) -> None:
    """``max_recoveries_in_flight`` holds across the fleet: a pair of this controller waits on its CPU while a pair
    of another controller recovers, or failed over before it and waits too, and takes its turn once that one is
    done."""
    world = two_pair_world(tmp_path, {"controller": {"max_recoveries_in_flight": 1}})
    world.ctx.controller_id = "a"
    async for rt in synced_pair(world):
        other = await second_pair(world)
        try:
            store = world.ctx.store
            mine = Leases(store, "a", TTL, tick=1, clock=world.clock)
            assert mine.round(["main"]).taken == ("main",)
            Leases(store, "b", TTL, tick=1, clock=world.clock).round(["second"])
            controller = Controller(world.ctx, [rt], leases=mine)
            rt.state, rt.timings["decided_at"] = PairState.FAILED_OVER, world.clock.now
            turns = []
            for theirs in ("recovering", "failed_over", "syncing"):
                store.save_pair(dataclasses.replace(other.row(), state=theirs))
                turns.append(controller._recovery_turns())
            assert turns == [(frozenset(), 1), (frozenset(), 0), (frozenset({"main"}), 0)]
            store.save_pair(dataclasses.replace(other.row(), state="failed_over"))
            controller.pairs["second"] = other  # held here too: its turn is counted from memory, not the store
            other.state, other.timings["decided_at"] = PairState.FAILED_OVER, world.clock.now + 1
            assert controller._recovery_turns() == (frozenset({"main"}), 0)
        finally:
            await other.endpoint.stop()
