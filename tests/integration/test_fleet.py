"""A fleet: two `dumont run` processes on one PostgreSQL share five pairs through leases. The one that owns them is
killed (SIGKILL) in the middle of a recovery, or cut off from the database; the other takes the pairs within the
TTL and a tick, resumes the recovery with the GPU already rented, every endpoint keeps serving, and the events
show that no two controllers acted on one pair at any instant. Each controller runs an endpoint process serving
every pair (on 127.0.0.1 and 127.0.0.2), and the users' ssh falls through from a dead controller's to the other's."""

from __future__ import annotations

import inspect
import os
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dumont.chaos.process import ControllerProcess
from dumont.config import to_toml
from dumont.drill.stack import add_pairs
from dumont.endpoint.control import request
from dumont.endpoint.launch import stop_endpoint_daemon
from dumont.localcloud.link import LinkRelay, LinkSpec
from dumont.localcloud.ready import free_port
from dumont.store.postgres import PostgresStore
from dumont.store.rows import EventRow, LeaseRow
from dumont.transport.ssh import quote_remote, run_local
from tests.conftest import eventually
from tests.integration.stack import Stack, build_stack
from tests.integration.test_recovery import live_instances
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.serial]

TTL = 8.0  # a store call held up by the network fails within TTL/6 (a connect in 2 s): well inside
TICK = 1.0  # the fast profile's health_check_interval
PAIRS = ["main", "pair-2", "pair-3", "pair-4", "pair-5"]
ENDPOINT_HOSTS = {"a": "127.0.0.1", "b": "127.0.0.2"}  # each controller's endpoints (loopback: both are this host)
RENEWALS_IN_A_TTL = round(TTL / min(TTL / 4, TICK / 2))  # Leases.every


class Fleet:
    """The local cloud with five pairs, and a config for each of two controllers sharing one store."""

    def __init__(self, stack: Stack, url: str) -> None:
        self.stack, self.url = stack, url
        self.shared = stack.root / "shared"
        self.processes: list[ControllerProcess] = []

    def controller(self, name: str, *, store_url: str | None = None) -> ControllerProcess:
        """A controller of the fleet with a state dir of its own (``store_url``: its way to the database)."""
        data = tomllib.loads(self.stack.config_path.read_text())
        api = f"127.0.0.1:{free_port()}"
        data["state_dir"] = str(self.stack.root / f"controller-{name}")
        data["store"] = {"url": store_url or self.url}
        data["controller"] = {**data["controller"], "api_listen": api, "lease_seconds": TTL,
                              "shared_dir": str(self.shared), "endpoint_hosts": list(ENDPOINT_HOSTS.values()),
                              "endpoint_bind": ENDPOINT_HOSTS[name]}
        path = self.stack.root / f"controller-{name}.toml"
        path.write_text(to_toml(data))
        process = ControllerProcess(path, Path(data["state_dir"]), api, self.stack.root / f"controller-{name}.log")
        self.processes.append(process)
        return process

    def events(self) -> list[EventRow]:
        store = PostgresStore(self.url)
        try:
            return store.events(limit=100_000)
        finally:
            store.close()

    def leases(self) -> dict[str, LeaseRow]:
        store = PostgresStore(self.url)
        try:
            return {row.pair: row for row in store.leases()}
        finally:
            store.close()

    async def login(self, pair: str, *, config: Path | None = None, only: str | None = None) -> str:
        """Run a command through the pair's endpoints as its user would (its snippet, or ``config``; ``only``: through
        that controller's endpoint alone); the host that answered."""
        config = config or self.shared / "ssh" / pair / "config"
        options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if only is not None:
            proxy = self.shared / "ssh" / pair / "fallthrough.py"
            options += ["-o", f"ProxyCommand=python3 {proxy} {ENDPOINT_HOSTS[only]}:{self.port(pair)}"]
        result = await run_local(["ssh", "-F", str(config), *options, f"dumont-{pair}", "--",
                                  quote_remote(["printenv", "DUMONT_HOST"])], timeout=30,
                                 what=f"ssh through the endpoint of {pair}")
        lines = result.stdout.decode(errors="replace").strip().splitlines()
        assert result.returncode == 0 and lines, f"{pair}: {result.stderr.decode(errors='replace')}"
        return lines[-1].strip()

    def port(self, pair: str) -> int:
        listen = next(p.endpoint_listen for p in self.stack.config.pairs if p.name == pair)
        return int(listen.rsplit(":", 1)[1])

    async def endpoint_status(self, name: str) -> dict[str, Any]:
        """What controller ``name``'s endpoint process says of its pairs."""
        socket = self.stack.root / f"controller-{name}" / "endpoint" / "control.sock"
        answer: dict[str, Any] = await request(socket, {"op": "status"}, timeout=10, what=f"endpoint of {name}")
        return answer


@pytest.fixture
async def fleet(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[Callable[[], Awaitable[Fleet]]]:
    made: list[Fleet] = []

    async def make() -> Fleet:
        os.environ["DUMONT_LOCAL_VAST_DELAY_SECONDS"] = "4"  # a new GPU boots slowly: room to kill mid-recovery
        try:
            stack = await build_stack(tmp_path, {"ssh_wait_timeout": 60, "auto_recovery": True})
        finally:
            del os.environ["DUMONT_LOCAL_VAST_DELAY_SECONDS"]
        await add_pairs(stack, PAIRS[1:])
        made.append(Fleet(stack, postgres.new_database()))
        return made[-1]

    yield make
    for fleet in made:
        await _tear_down(fleet)


async def _tear_down(fleet: Fleet) -> None:
    for process in fleet.processes:
        await process.stop()
    for name in ENDPOINT_HOSTS:
        await stop_endpoint_daemon(fleet.stack.root / f"controller-{name}" / "endpoint")
    await fleet.stack.cloud.stop_emulators()
    await fleet.stack.cloud.pool.shutdown()
    assert not fleet.stack.cloud.pool.leftover_processes()


async def statuses(process: ControllerProcess) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in (await process.get("/api/status"))["pairs"]}


async def until(what: str, check: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    """Wait for ``check`` to hold (the suite's one polling loop, ``eventually``, with this module's checks)."""

    async def holds() -> None:
        found = check()
        assert (await found if inspect.isawaitable(found) else found), f"still waiting for {what}"

    await eventually(holds, timeout=timeout, retry_on=(AssertionError,))


def synced(status: dict[str, Any]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


async def all_synced(process: ControllerProcess) -> bool:
    found = await statuses(process)
    return sorted(found) == sorted(PAIRS) and all(map(synced, found.values()))


def one_actor_at_a_time(events: list[EventRow]) -> dict[str, list[str]]:
    """Check each pair's history: every event of a pair is written by the controller whose lease_taken came last
    before it, the previous owner's last event is older than the new owner's claim, and epochs never go back.
    Returns each pair's owners in order."""
    owners: dict[str, list[str]] = {}
    last_at: dict[tuple[str, str], float] = {}
    epochs: dict[str, int] = {}
    for event in events:
        if event.pair is None:
            continue
        pair, by = event.pair, event.controller
        history = owners.setdefault(pair, [])
        if event.kind == "lease_taken":
            if history and history[-1] != by:
                previous = last_at.get((pair, history[-1]), 0.0)
                assert previous < event.data["claimed_at"], (
                    f"{pair}: {history[-1]} wrote at {previous:.3f}, after {by} took the lease at "
                    f"{event.data['claimed_at']:.3f}")
            history.append(by)
        else:
            assert history and history[-1] == by, f"{pair}: event {event.id} ({event.kind}) by {by!r} while " \
                                                   f"{history[-1] if history else 'nobody'} held the lease"
        last_at[(pair, by)] = event.at
        epoch = event.data.get("epoch")
        if isinstance(epoch, int):
            assert epoch >= epochs.get(pair, 0), f"{pair}: epoch {epoch} after {epochs[pair]} ({event.kind})"
            epochs[pair] = epoch
    return owners


async def test_a_controller_killed_mid_recovery_hands_its_pairs_to_the_other(
        fleet: Callable[[], Awaitable[Fleet]]) -> None:
    """Given two controllers on one Postgres and five pairs all owned by the first, when the first is killed
    (SIGKILL) while a recovery waits for the GPU it rented, then the second takes every pair within TTL + one
    tick, resumes that recovery with the same GPU and rents nothing more, and every endpoint serves throughout."""
    f = await fleet()
    first, second = f.controller("a"), f.controller("b")
    await first.start()
    await until("the first controller protecting all five pairs", lambda: all_synced(first), 240)
    await second.start()
    assert await statuses(second) == {}, "the second controller acts on nothing the first holds"

    status = await statuses(first)
    gpus = {name: s["primary"]["instance_id"] for name, s in status.items()}

    async def mirrored() -> bool:
        pairs = (await f.endpoint_status("b"))["pairs"]
        return sorted(pairs) == sorted(PAIRS)

    await until("the second controller's endpoint serving every pair", mirrored, 30)
    for name in PAIRS:  # routed to the primary in the store, not by the controller that holds the pair
        assert await f.login(name, only="b") == f.stack.host(gpus[name]).name
    as_the_first_wrote_it = f.stack.root / "main-config-of-a"
    as_the_first_wrote_it.write_text((f.shared / "ssh" / "main" / "config").read_text())
    await f.stack.cloud.pool.kill(f.stack.host(gpus["main"]).name)

    async def renting() -> bool:
        return ((await statuses(first))["main"].get("operation") or {}).get("step") == "waiting_ssh"

    await until("the recovery of main waiting for its new GPU", renting, 60)
    rented = live_instances(f.stack) - set(gpus.values())
    assert len(rented) == 1, rented
    await first.kill()
    killed_at = time.time()
    for name in PAIRS[1:]:  # the endpoint process outlives the controller: every user keeps their address
        assert await f.login(name) == f.stack.host(gpus[name]).name

    async def second_holds_all() -> bool:
        return sorted(await statuses(second)) == sorted(PAIRS)

    await until("the second controller holding every pair", second_holds_all, TTL + TICK + 30)
    taken = {e.pair: e.data["claimed_at"] for e in f.events() if e.kind == "lease_taken" and
             e.controller == first_id(f, "b")}
    assert sorted(taken) == sorted(PAIRS)
    waits = {pair: round(at - killed_at, 3) for pair, at in taken.items()}
    print(f"taken after the kill: {waits} s")  # the closing note's figure
    assert max(waits.values()) <= TTL + TICK, f"taken {waits} s after the kill (TTL {TTL:g} s, tick {TICK:g} s)"

    async def recovered() -> bool:
        main = (await statuses(second))["main"]
        return synced(main) and main["primary"]["instance_id"] not in gpus.values()

    await until("main recovered by the second controller", recovered, 180)
    main = (await statuses(second))["main"]
    assert {main["primary"]["instance_id"]} == rented, "the second controller used the GPU the first rented"
    await until("the failed GPU destroyed", lambda: live_instances(f.stack) == rented | {
        gpus[n] for n in PAIRS[1:]}, 60)
    for name in PAIRS:
        assert await f.login(name)

    async def first_refuses() -> bool:  # its controller is silent: its routes (main's dead GPU) may be stale
        return bool((await f.endpoint_status("a"))["pairs"]["main"]["stats"]["refusing"])

    await until("the dead controller's endpoint refusing new connections", first_refuses, 30)
    new_gpu = f.stack.host(main["primary"]["instance_id"]).name
    assert await f.login("main", config=as_the_first_wrote_it) == new_gpu, "fell through to the live endpoint"
    assert (await f.endpoint_status("a"))["pairs"]["main"]["stats"]["refused"] >= 1, "tried the first one first"
    owners = one_actor_at_a_time(f.events())
    assert owners["main"] == [first_id(f, "a"), first_id(f, "b")]


async def test_a_controller_cut_off_from_the_database_stops_before_the_other_takes_over(
        fleet: Callable[[], Awaitable[Fleet]]) -> None:
    """Given two controllers, the owner reaching Postgres through a link, when the link is blackholed, then the
    owner stops acting on its pairs before its leases can run out, the other takes them, and no pair ever has
    two controllers acting on it; the pairs stay protected."""
    f = await fleet()
    relay = LinkRelay()
    try:
        host, port = f.url.split("@", 1)[1].split("/", 1)[0].split(":")
        through = relay.add(host, int(port), LinkSpec())
        first = f.controller("a", store_url=f.url.replace(f":{port}/", f":{through}/"))
        second = f.controller("b")
        await first.start()
        await until("the first controller protecting all five pairs", lambda: all_synced(first), 240)
        await second.start()
        relay.set(through, LinkSpec(blackhole=True))

        async def second_holds_all() -> bool:
            return sorted(await statuses(second)) == sorted(PAIRS)

        await until("the second controller holding every pair", second_holds_all, TTL + TICK + 30)
        await until("every pair protected by the second", lambda: all_synced(second), 60)
        relay.set(through, LinkSpec())  # healed: the first says when it stopped, and stays off the pairs

        def stopped() -> dict[str, float]:
            return {e.data["pair"]: e.data["stopped_at"] for e in f.events()
                    if e.kind == "lease_lost" and e.controller == first_id(f, "a")}

        await until("the first controller saying when it let each pair go",
                    lambda: sorted(stopped()) == sorted(PAIRS), 60)
        taken = {e.pair: e.data["claimed_at"] for e in f.events()
                 if e.kind == "lease_taken" and e.controller == first_id(f, "b")}
        margins = {name: round(taken[name] - stopped()[name], 3) for name in PAIRS}
        print(f"the cut-off controller stopped this long before the other took over: {margins} s")
        assert min(margins.values()) > 0, f"a pair had two controllers acting on it: {margins}"
        # Back in touch, the first must stay off the pairs while the second renews them for a whole TTL.
        seen = {pair: row.version for pair, row in f.leases().items()}

        def renewed_for_a_ttl() -> bool:
            now = f.leases()
            if any(row.owner != first_id(f, "b") for row in now.values()):
                pytest.fail(f"a lease changed hands after the heal: {now}")
            return all(now[pair].version >= seen[pair] + RENEWALS_IN_A_TTL for pair in PAIRS)

        await until("the second controller renewing every lease for a TTL", renewed_for_a_ttl, 4 * TTL)
        assert await statuses(first) == {}, "the controller that was cut off took a pair back"
        owners = one_actor_at_a_time(f.events())
        assert all(owners[name] == [first_id(f, "a"), first_id(f, "b")] for name in PAIRS), owners
    finally:
        relay.close()


def first_id(f: Fleet, name: str) -> str:
    return (f.stack.root / f"controller-{name}" / "controller_id").read_text().strip()
