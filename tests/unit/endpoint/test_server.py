"""The endpoint process's server in the test's event loop, spoken to over its real control socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dumont.endpoint.control import request
from dumont.endpoint.server import EndpointServer
from dumont.errors import EndpointError, StaleRouteRefused
from tests.unit.endpoint.test_relay import TagServer

WAIT = 5.0  # every wait here is bounded by this; the tests pass in milliseconds


@dataclass
class Harness:
    """An endpoint directory, the servers started on it, and two targets that greet with their names."""

    root: Path
    a: TagServer
    b: TagServer
    servers: list[EndpointServer] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self, **options: Any) -> EndpointServer:
        server = EndpointServer(self.root, **options)
        await server.start()
        self.servers.append(server)
        return server

    async def send(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request, as the controller's client sends it."""
        return await request(self.root / "control.sock", {"op": op, **fields}, timeout=WAIT, what="test")

    async def serve(self, listen: str = "127.0.0.1:0") -> tuple[str, int]:
        host, port = (await self.send("serve", pair="train", listen=listen, hold_timeout=WAIT))["address"]
        return host, port

    async def route(self, target: TagServer | None, epoch: int, reason: str = "test") -> dict[str, Any]:
        address = list(target.address) if target is not None else None
        return await self.send("route", pair="train", target=address, epoch=epoch, reason=reason)

    async def greeting(self, address: tuple[str, int]) -> str:
        """Connect a user to ``address`` and return the name of the target that answers."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
        self.writers.append(writer)
        return (await asyncio.wait_for(reader.readline(), WAIT)).decode().strip()

    def saved(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.root / "routes.json").read_text())
        return document["pairs"]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    a, b = TagServer("A"), TagServer("B")
    await a.start()
    await b.start()
    harness = Harness(tmp_path / "endpoint", a, b)
    try:
        yield harness
    finally:
        for writer in harness.writers:
            writer.close()
        for server in harness.servers:
            await server.stop()
        await a.close()
        await b.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_serve_answers_the_bound_address_and_a_second_serve_changes_nothing(harness: Harness) -> None:
    """Given a server, when a pair is served twice, then both answers name one address; dir and socket are private."""
    await harness.start()
    first = await harness.serve()
    assert await harness.serve() == first
    assert first[0] == "127.0.0.1" and first[1] > 0
    assert stat.S_IMODE(harness.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((harness.root / "control.sock").stat().st_mode) == 0o600
    status = await harness.send("status")
    assert list(status["pairs"]) == ["train"] and status["pairs"]["train"]["address"] == list(first)


async def test_a_route_sends_new_connections_to_its_target_and_is_saved_before_the_answer(harness: Harness) -> None:
    await harness.start()
    address = await harness.serve()
    answer = await harness.route(harness.a, epoch=1, reason="gpu-1 is primary")

    assert answer["changed"] is True and answer["endpoint"]["target"] == list(harness.a.address)
    assert harness.saved()["train"] == {"listen": "127.0.0.1:0", "address": list(address), "hold_timeout": WAIT,
                                        "target": list(harness.a.address), "epoch": 1, "reason": "gpu-1 is primary",
                                        "fall_through": False}
    assert await harness.greeting(address) == "A"


async def test_a_restarted_server_serves_every_saved_route_at_once_on_the_same_address(harness: Harness) -> None:
    """Given a route to A, when the server stops and a new one starts on the directory, then a new connection to
    the same address reaches A with no request sent."""
    first = await harness.start()
    address = await harness.serve()
    await harness.route(harness.a, epoch=4, reason="failback to gpu-2")
    await first.stop()

    await harness.start()
    assert await harness.greeting(address) == "A"
    pair = (await harness.send("status"))["pairs"]["train"]
    assert (pair["epoch"], pair["held"], pair["listening"]) == (4, False, True)
    assert pair["history"][-1]["reason"] == "restored from routes.json: failback to gpu-2"


async def test_a_route_from_an_older_epoch_is_refused_and_changes_nothing(harness: Harness) -> None:
    await harness.start()
    address = await harness.serve()
    await harness.route(harness.b, epoch=2, reason="failover to B")

    with pytest.raises(StaleRouteRefused, match="epoch 1 was refused; it serves epoch 2"):
        await harness.route(harness.a, epoch=1, reason="a controller that missed the failover")
    assert await harness.greeting(address) == "B"
    assert harness.saved()["train"]["epoch"] == 2


async def test_one_connection_carries_many_requests_and_a_bad_one_is_answered_with_a_sentence(
    harness: Harness,
) -> None:
    await harness.start()
    reader, writer = await asyncio.open_unix_connection(str(harness.root / "control.sock"))
    harness.writers.append(writer)
    answers = []
    for line in (b"not json\n", b'["op"]\n', b'{"op": "teleport"}\n', b'{"op": "route", "pair": "train"}\n',
                 b'{"op": "serve", "pair": "train", "listen": "nowhere"}\n', b'{"op": "ping"}\n'):
        writer.write(line)
        answers.append(json.loads(await asyncio.wait_for(reader.readline(), WAIT)))

    assert [a["ok"] for a in answers] == [False] * 5 + [True]
    assert "not JSON" in answers[0]["error"] and "not a JSON object" in answers[1]["error"]
    assert answers[2]["error"] == "unknown control op 'teleport'" and "serve" in answers[2]["hint"]
    assert answers[3]["error"] == "endpoint train is not served here"
    assert "not a host:port address" in answers[4]["error"] and answers[4]["kind"] == "UsageError"
    assert answers[5]["pid"] == os.getpid()


async def test_a_hold_needs_a_controller_and_lapses_when_the_controller_falls_silent(harness: Harness) -> None:
    """Given no controller, a hold is refused; given one that expects to send within 0.2 s, its hold is released
    once it has been silent that long, so users reach the last primary instead of waiting."""
    server = await harness.start()
    await harness.serve()
    await harness.route(harness.a, epoch=1)
    with pytest.raises(EndpointError, match="no controller is heard, so a hold would never be released"):
        await harness.send("hold", pair="train", reason="catch-up")

    await harness.send("heartbeat", controller=4242, expect_within=0.2)
    answer = await harness.send("hold", pair="train", reason="catch-up", controller=4242)
    assert answer["held"] is True and answer["endpoint"]["held"] is True

    stats = await server.relay("train").wait_for_state(lambda s: not s.held, timeout=WAIT)
    assert stats.target == harness.a.address
    status = await harness.send("status")
    assert status["controller_present"] is False and status["controller"] == 4242
    assert status["summary"].startswith("no controller for 0 s (last: pid 4242)")


async def test_status_says_no_controller_once_the_heartbeat_deadline_has_passed(harness: Harness) -> None:
    now = [1000.0]
    await harness.start(clock=lambda: now[0], wall=lambda: 1.7e9 + now[0])
    await harness.send("heartbeat", controller=4242, expect_within=10)
    now[0] += 3
    status = await harness.send("status")
    assert (status["controller"], status["controller_present"], status["summary"]) == (
        4242, True, "controller 4242 heard 3 s ago")
    assert status["controller_seen_at"] == 1.7e9 + 1000.0

    now[0] += 42
    status = await harness.send("status")
    assert status["controller_present"] is False and status["controller_silent_for"] == 45
    assert status["summary"] == "no controller for 45 s (last: pid 4242); serving the last published routes"


async def test_a_second_server_on_the_same_directory_refuses_and_names_the_first(harness: Harness) -> None:
    await harness.start()
    with pytest.raises(EndpointError, match=rf"another endpoint process \(pid {os.getpid()}\) already serves"):
        await EndpointServer(harness.root).start()
    assert (await harness.send("ping"))["pid"] == os.getpid()  # the first one still answers


async def test_forget_stops_the_pair_and_drops_its_route(harness: Harness) -> None:
    await harness.start()
    address = await harness.serve()
    await harness.route(harness.a, epoch=1)

    assert (await harness.send("forget", pair="train"))["forgotten"] is True
    assert harness.saved() == {}
    with pytest.raises(ConnectionRefusedError):
        await harness.greeting(address)
    assert (await harness.send("forget", pair="train"))["forgotten"] is False


async def test_close_existing_ends_relayed_connections_and_counts_them(harness: Harness) -> None:
    await harness.start()
    address = await harness.serve()
    await harness.route(harness.a, epoch=1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
    harness.writers.append(writer)
    assert await asyncio.wait_for(reader.readline(), WAIT) == b"A\n"

    assert (await harness.send("close_existing", pair="train", reason="gpu-1 is fenced"))["closed"] == 1
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), WAIT) == b""


async def test_a_route_whose_port_is_taken_at_start_is_kept_and_served_when_asked_again(harness: Harness) -> None:
    """Given a saved route on a port another program took, the server starts, reports the pair not listening,
    keeps the route, and serves it when the controller sends serve again once the port is free."""
    port = free_port()
    first = await harness.start()
    await harness.serve(f"127.0.0.1:{port}")
    await harness.route(harness.a, epoch=1)
    await first.stop()

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        await harness.start()
        pair = (await harness.send("status"))["pairs"]["train"]
        assert pair["listening"] is False and f"cannot listen on 127.0.0.1:{port}" in pair["error"]
        assert pair["target"] == list(harness.a.address) and harness.saved()["train"]["epoch"] == 1
        with pytest.raises(EndpointError, match="endpoint train is not listening"):
            await harness.send("close_existing", pair="train", reason="x")

    assert await harness.serve(f"127.0.0.1:{port}") == ("127.0.0.1", port)
    assert await harness.greeting(("127.0.0.1", port)) == "A"


async def test_serve_on_another_address_moves_the_pair_with_its_route(harness: Harness) -> None:
    await harness.start()
    old = await harness.serve()
    await harness.route(harness.b, epoch=1)
    port = free_port()

    assert await harness.serve(f"127.0.0.1:{port}") == ("127.0.0.1", port)
    assert await harness.greeting(("127.0.0.1", port)) == "B"
    with pytest.raises(ConnectionRefusedError):
        await harness.greeting(old)
    assert harness.saved()["train"]["listen"] == f"127.0.0.1:{port}"


async def test_shutdown_is_answered_before_the_server_is_asked_to_stop(harness: Harness) -> None:
    server = await harness.start()
    assert (await harness.send("shutdown"))["pid"] == os.getpid()
    await asyncio.wait_for(server.shutdown_requested.wait(), WAIT)


async def test_a_fleet_route_is_refused_while_its_controller_is_silent_and_served_once_one_is_heard(
        harness: Harness) -> None:
    """controller.endpoint_hosts: once another controller fails the pair over, a silent controller's endpoint
    serves a stale route, so it closes new connections at once (the users' ssh falls through to the next
    endpoint); sessions already relayed go on; a restarted endpoint refuses until a controller is heard."""
    server = await harness.start()
    answer = await harness.send("serve", pair="train", listen="127.0.0.1:0", hold_timeout=WAIT, fall_through=True,
                                controller=4242, expect_within=0.2)
    address = (answer["address"][0], answer["address"][1])
    await harness.route(harness.a, epoch=1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
    harness.writers.append(writer)
    assert (await asyncio.wait_for(reader.readline(), WAIT)).strip() == b"A"

    stats = await server.relay("train").wait_for_state(lambda s: bool(s.refusing), timeout=WAIT)
    assert stats.refusing.startswith("no controller for 0 s; another controller's endpoint serves the pair")
    refused_reader, refused = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
    harness.writers.append(refused)
    assert await asyncio.wait_for(refused_reader.read(), WAIT) == b"", "closed before a byte"
    writer.write(b"still relayed\n")
    assert await asyncio.wait_for(reader.readline(), WAIT) == b"still relayed\n", "the open session goes on"
    status = (await harness.send("status"))["pairs"]["train"]
    assert status["stats"]["refused"] == 1 and status["fall_through"] is True

    await harness.send("heartbeat", controller=4242, expect_within=WAIT)
    assert await harness.greeting(address) == "A"
    await server.stop()
    restarted = await harness.start()
    assert restarted.relay("train").stats().refusing == "no controller heard since the endpoint started"
    await harness.send("heartbeat", controller=4243, expect_within=WAIT)
    assert await harness.greeting(address) == "A"
    await harness.send("serve", pair="train", listen="127.0.0.1:0", hold_timeout=WAIT, controller=4243)
    assert harness.saved()["train"]["fall_through"] is False, "a plain serve makes it an ordinary endpoint again"
