"""Leases on virtual time, over a real SQLite store shared by several controllers: who may act on a pair, when a
dead owner's pair is taken, and that no two controllers ever hold one pair at the same instant."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from dumont.core.leases import Leases
from dumont.errors import StoreUnavailable
from dumont.store.sqlite import Store

TTL, TICK = 12.0, 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ReachableStore:
    """One controller's way to the shared store; ``down`` cuts it off (every call fails, as a partition would)."""

    def __init__(self, store: Store) -> None:
        self._store, self.down = store, False

    def __getattr__(self, name: str) -> Any:
        if self.down:
            def unreachable(*_: Any, **__: Any) -> Any:
                raise StoreUnavailable("the state database does not answer")
            return unreachable
        return getattr(self._store, name)


@pytest.fixture
def shared(tmp_path: Path) -> Store:
    return Store(tmp_path / "fleet.db")


def controllers(shared: Store, clock: Clock, count: int = 2) -> list[tuple[Leases, ReachableStore]]:
    found = []
    for n in range(count):
        link = ReachableStore(shared)
        found.append((Leases(link, f"c{n}", TTL, tick=TICK, clock=clock), link))  # type: ignore[arg-type]
    return found


def test_a_free_pair_is_taken_once_and_kept_while_renewed(shared: Store) -> None:
    clock = Clock()
    (a, _), (b, _) = controllers(shared, clock)
    assert a.round(["main"]).taken == ("main",)
    for _ in range(40):  # 40 rounds is many TTLs
        clock.now += a.every
        assert a.round(["main"]).lost == ()
        assert b.round(["main"]).taken == ()
        assert a.held("main") and not b.held("main")
    lease = shared.lease("main")
    assert lease is not None and lease.owner == "c0" and lease.version == 41


def test_a_dead_owners_pair_is_taken_within_ttl_and_a_tick_after_its_last_renewal(shared: Store) -> None:
    clock = Clock()
    (a, _), (b, _) = controllers(shared, clock)
    a.round(["main"])
    b.round(["main"])  # b sees a's lease
    clock.now += a.every
    a.round(["main"])
    last_renewal = clock.now  # a dies here
    while not b.round(["main"]).taken:
        clock.now += b.every
        assert clock.now - last_renewal <= TTL + TICK, "the pair was not taken within TTL + one tick"
    assert clock.now - last_renewal >= TTL, "taken before the lease could have run out"
    assert b.held("main") and not a.held("main")
    assert a.round(["main"]).lost == (("main", "controller c1 holds its lease now"),) or not a.held("main")


def test_an_owner_cut_off_from_the_store_stops_acting_before_anyone_may_take_over(shared: Store) -> None:
    clock = Clock()
    (a, link), (b, _) = controllers(shared, clock)
    a.round(["main"])
    b.round(["main"])
    link.down = True
    stopped_at = taken_at = None
    for _ in range(200):
        clock.now += 0.25
        if stopped_at is None and a.round(["main"]).lost:
            stopped_at = clock.now
        if taken_at is None and b.round(["main"]).taken:
            taken_at = clock.now
        assert not (a.held("main") and b.held("main")), f"both act at {clock.now}"
    assert stopped_at is not None and taken_at is not None and stopped_at < taken_at
    assert taken_at - stopped_at >= TTL / 2 - 0.25  # the margin the owner leaves


def test_a_released_pair_is_taken_at_the_next_round(shared: Store) -> None:
    clock = Clock()
    (a, _), (b, _) = controllers(shared, clock)
    a.round(["main", "second"])
    assert a.release_all() == ["main", "second"] and not a.held("main")
    assert b.round(["main", "second"]).taken == ("main", "second")


def test_a_restarted_controller_takes_its_own_leases_back_at_once(shared: Store) -> None:
    clock = Clock()
    (a, _), (b, _) = controllers(shared, clock)
    a.round(["main"])
    b.round(["main"])
    again = Leases(shared, "c0", TTL, tick=TICK, clock=clock)  # the same state dir: its lock says c0 is dead
    assert again.round(["main"]).taken == ("main",)
    clock.now += TTL / 2
    assert b.round(["main"]).taken == ()


def test_two_controllers_racing_for_a_free_pair_get_one_owner(shared: Store) -> None:
    [(a, _)] = controllers(shared, Clock(), 1)
    a.round(["main"])
    a.release_all()
    version = shared.lease("main").version  # type: ignore[union-attr]
    assert shared.claim_lease("main", "c1", version) == version + 1
    assert shared.claim_lease("main", "c0", version) is None, "the second compare-and-set on one version fails"


@pytest.mark.parametrize("seed", range(20))
def test_no_two_controllers_ever_hold_one_pair_at_once(shared: Store, seed: int) -> None:
    """Three controllers, each cut off from the store or paused at random for random spans, rounds at random
    moments: at every instant each pair has at most one holder, and a pair nobody holds is taken again."""
    rng, clock = random.Random(seed), Clock()
    fleet = controllers(shared, clock, 3)
    names = ["a", "b", "c", "d"]
    paused_until = [0.0] * len(fleet)
    for _ in range(3000):
        clock.now += rng.uniform(0.05, 0.6)
        for n, (leases, link) in enumerate(fleet):
            if rng.random() < 0.01:
                link.down = not link.down
            if rng.random() < 0.005:
                paused_until[n] = clock.now + rng.uniform(0, 2 * TTL)  # a stopped process runs nothing
            if clock.now >= paused_until[n] and rng.random() < 0.5:
                leases.round(names)
        for pair in names:
            holders = [leases.owner for leases, _ in fleet if leases.held(pair)]
            assert len(holders) <= 1, f"seed {seed}, t={clock.now:.2f}: {pair} held by {holders}"
    for _, link in fleet:
        link.down = False
    for _ in range(int(3 * TTL)):
        clock.now += 1
        for leases, _ in fleet:
            leases.round(names)
    assert all(any(leases.held(pair) for leases, _ in fleet) for pair in names)
