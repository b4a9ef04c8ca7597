"""The endpoint relay against small TCP servers on 127.0.0.1 that answer with their own name."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from dumont.endpoint import EndpointRelay, RelayStats
from dumont.errors import DumontError, UsageError

WAIT = 5.0  # every wait in these tests is bounded by this (they pass in milliseconds)


class TagServer:
    """A target that greets with its name, echoes every byte, and after the client's EOF sends a trailer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.accepted = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return "127.0.0.1", self._server.sockets[0].getsockname()[1]

    async def wait_for_idle(self) -> None:
        """Wait until every connection this server accepted has ended (its socket closed)."""
        if self.handlers:
            await asyncio.wait_for(asyncio.gather(*self.handlers), WAIT)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self.handlers.add(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest, size = hashlib.sha256(), 0
        try:
            writer.write(f"{self.name}\n".encode())
            while chunk := await reader.read(65536):
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.write(f"\n{self.name} {size} {digest.hexdigest()}\n".encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@dataclass
class Client:
    """One TCP client of the relay."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def greeting(self) -> str:
        return (await asyncio.wait_for(self.reader.readline(), WAIT)).decode().strip()

    async def finish(self, data: bytes = b"") -> bytes:
        """Send ``data`` and end of stream, then read everything until the other side closes."""
        self.writer.write(data)
        self.writer.write_eof()
        return await asyncio.wait_for(self.reader.read(), WAIT)

    async def wait_for_end(self) -> None:
        """Wait until the relay has closed this connection (FIN or RST)."""
        with contextlib.suppress(ConnectionError):
            rest = await asyncio.wait_for(self.reader.read(), WAIT)
            assert rest == b"" or rest.endswith(b"\n")


@dataclass
class World:
    """Two targets, a relay factory and every client opened, all closed after the test."""

    a: TagServer
    b: TagServer
    events: list[tuple[str, str]] = field(default_factory=list)
    relays: list[EndpointRelay] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    async def relay(self, **options: float) -> EndpointRelay:
        relay = EndpointRelay("test", ("127.0.0.1", 0), on_event=lambda k, d: self.events.append((k, d)), **options)
        await relay.start()
        self.relays.append(relay)
        return relay

    async def connect(self, relay: EndpointRelay) -> Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*relay.address), WAIT)
        client = Client(reader, writer)
        self.clients.append(client)
        return client

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    a, b = TagServer("A"), TagServer("B")
    await a.start()
    await b.start()
    world = World(a, b)
    try:
        yield world
    finally:
        for client in world.clients:
            client.writer.close()
            with contextlib.suppress(ConnectionError):
                await client.writer.wait_closed()
        for relay in world.relays:
            await relay.stop()
        await a.close()
        await b.close()


def parked(count: int) -> Callable[[RelayStats], bool]:
    return lambda stats: stats.parked == count


def sockets_of_relay(relay_port: int, target_port: int) -> int:
    """How many of this process's TCP sockets are the relay's: its listener, client sides and upstream sides."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor is gone by now
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                ours.add(link[len("socket:[") : -1])
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local_port, remote_port = (int(fields[i].rsplit(":", 1)[1], 16) for i in (1, 2))
            if fields[9] in ours and (local_port == relay_port or remote_port == target_port):
                count += 1
    return count


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_new_connections_follow_the_target_while_existing_ones_stay(world: World) -> None:
    """Given a connection relayed to A, when the relay switches to B, then new ones reach B and the old one A."""
    relay = await world.relay()
    relay.point_to(world.a.address, reason="A is primary")
    first = await world.connect(relay)
    assert await first.greeting() == "A"

    relay.point_to(world.b.address, reason="failover to B")
    second = await world.connect(relay)
    assert await second.greeting() == "B"

    assert (await first.finish(b"still here")).startswith(b"still here\nA 10 ")
    assert (await second.finish()).startswith(b"\nB 0 ")
    assert [s.target for s in relay.history] == [world.a.address, world.b.address]
    assert relay.switched_at == relay.history[-1].at
    assert relay.stats().switch_reason == "failover to B"
    assert world.kinds() == ["switch", "switch"]
    assert "failover to B" in world.events[-1][1]


async def test_a_held_connection_waits_and_then_reaches_the_target_current_at_release(world: World) -> None:
    """Given a hold, when a client connects, then it is parked, and on release it goes to the then-current target."""
    relay = await world.relay()
    relay.point_to(world.a.address, reason="A is primary")
    relay.hold(reason="final catch-up")
    client = await world.connect(relay)
    stats = await relay.wait_for_state(parked(1), timeout=WAIT)
    assert stats.held and stats.active == 0

    relay.point_to(world.b.address, reason="failback to B")
    assert world.a.accepted == world.b.accepted == 0, "a parked connection must not reach any target"
    relay.release(reason="caught up")

    assert await client.greeting() == "B"
    assert world.a.accepted == 0
    assert relay.stats().parked == 0 and not relay.stats().held
    assert world.kinds() == ["switch", "hold", "switch", "release"]
    assert "1 parked connection(s) go to 127.0.0.1:" in world.events[-1][1]


async def test_without_a_target_connections_are_parked_until_there_is_one(world: World) -> None:
    """Given a relay that has no primary, when a client connects, then it waits and reaches the first target set."""
    relay = await world.relay()
    client = await world.connect(relay)
    await relay.wait_for_state(parked(1), timeout=WAIT)
    relay.point_to(world.a.address, reason="A is up")
    assert await client.greeting() == "A"


async def test_a_parked_connection_is_closed_after_the_hold_timeout(world: World) -> None:
    """Given a hold that is never released, then a parked connection is closed after hold_timeout."""
    relay = await world.relay(hold_timeout=0.2)
    relay.point_to(world.a.address, reason="A is primary")
    relay.hold()
    client = await world.connect(relay)
    assert await asyncio.wait_for(client.reader.read(), WAIT) == b""
    stats = await relay.wait_for_state(parked(0), timeout=WAIT)
    assert stats.timed_out == 1 and stats.accepted == 1
    assert world.a.accepted == 0


async def test_a_target_that_refuses_closes_the_client_and_is_counted_and_logged_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a dead target, then each client is closed at once, every failure counted, the streak logged once."""
    caplog.set_level(logging.INFO, logger="dumont.endpoint")
    relay = await world.relay(connect_timeout=2)
    dead = ("127.0.0.1", closed_port())
    relay.point_to(dead, reason="primary is gone")
    for _ in range(2):
        client = await world.connect(relay)
        assert await asyncio.wait_for(client.reader.read(), WAIT) == b""
    await relay.wait_for_state(lambda s: s.failed_connects == 2 and s.active == 0, timeout=WAIT)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"cannot reach 127.0.0.1:{dead[1]}" in warnings[0].getMessage()
    assert world.kinds() == ["switch", "connect_failed"]

    relay.point_to(world.a.address, reason="A is primary")
    assert await (await world.connect(relay)).greeting() == "A"


async def test_close_existing_closes_relayed_connections_but_not_new_ones(world: World) -> None:
    """Given two relayed connections, when close_existing runs, then both end on both sides; new ones still work."""
    relay = await world.relay()
    relay.point_to(world.a.address, reason="A is primary")
    clients = [await world.connect(relay) for _ in range(2)]
    for client in clients:
        assert await client.greeting() == "A"

    assert relay.close_existing(reason="A is fenced") == 2
    for client in clients:
        await client.wait_for_end()
    await world.a.wait_for_idle()  # the upstream sides are closed too
    assert relay.stats().active == 0
    assert world.kinds() == ["switch", "close_existing"]

    assert await (await world.connect(relay)).greeting() == "A"
    assert relay.close_existing(reason="again") == 1


async def test_stop_closes_every_connection_and_leaves_no_socket_or_task(world: World) -> None:
    """Given a relayed and a parked connection, when the relay stops, then no socket or task of it remains."""
    relay = await world.relay()
    address = relay.address
    relay.point_to(world.a.address, reason="A is primary")
    relayed = await world.connect(relay)
    assert await relayed.greeting() == "A"
    relay.hold()
    parked_client = await world.connect(relay)
    await relay.wait_for_state(parked(1), timeout=WAIT)

    assert sockets_of_relay(address[1], world.a.address[1]) == 4  # listener, two client sides, one upstream
    await relay.stop()
    assert sockets_of_relay(address[1], world.a.address[1]) == 0, "stop() returned with a socket still open"

    for client in (relayed, parked_client):
        await client.wait_for_end()
        client.writer.close()
        with contextlib.suppress(ConnectionError):
            await client.writer.wait_closed()
    await world.a.wait_for_idle()
    assert relay.stats().active == relay.stats().parked == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("endpoint test")]
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*address)


async def test_end_of_stream_passes_through_and_the_reply_still_arrives(world: World) -> None:
    """Given a client that sends data then EOF, then the target sees the EOF and the client still gets the reply."""
    relay = await world.relay()
    relay.point_to(world.a.address, reason="A is primary")
    client = await world.connect(relay)
    reply = await client.finish(b"hello")
    assert reply == b"A\nhello\nA 5 " + hashlib.sha256(b"hello").hexdigest().encode() + b"\n"


async def test_ten_megabytes_pass_both_ways_intact(world: World) -> None:
    """Given 10 MB sent through the relay, then the target and the echo both see exactly the bytes sent."""
    relay = await world.relay()
    relay.point_to(world.a.address, reason="A is primary")
    client = await world.connect(relay)
    assert await client.greeting() == "A"
    payload = os.urandom(10 * 1024 * 1024)

    async def send() -> None:
        for start in range(0, len(payload), 256 * 1024):
            client.writer.write(payload[start : start + 256 * 1024])
            await client.writer.drain()
        client.writer.write_eof()

    sender = asyncio.create_task(send())
    received = await asyncio.wait_for(client.reader.read(), 60)
    await asyncio.wait_for(sender, WAIT)
    digest = hashlib.sha256(payload).hexdigest()
    echoed, trailer = received[: len(payload)], received[len(payload) :]
    assert hashlib.sha256(echoed).hexdigest() == digest
    assert trailer == f"\nA {len(payload)} {digest}\n".encode()
    assert relay.stats().bytes_in == len(payload)
    assert relay.stats().bytes_out == len(b"A\n") + len(received)


async def test_a_failing_event_callback_does_not_stop_a_switch(world: World) -> None:
    """Given an event sink that raises, when the relay switches, then the switch still takes effect."""

    def broken(kind: str, detail: str) -> None:
        raise RuntimeError("event log is down")

    relay = EndpointRelay("test", ("127.0.0.1", 0), on_event=broken)
    async with relay:
        relay.point_to(world.a.address, reason="A is primary")
        assert relay.stats().target == world.a.address
        assert await (await world.connect(relay)).greeting() == "A"


async def test_misuse_is_refused_with_a_clear_message(world: World) -> None:
    """Given wrong calls (bad port, double start, a taken port), then each is refused with what to do."""
    relay = await world.relay()
    with pytest.raises(UsageError, match="target port 0 is out of range"):
        relay.point_to(("127.0.0.1", 0), reason="typo")
    with pytest.raises(UsageError, match="already listening"):
        await relay.start()
    with pytest.raises(DumontError, match=f"cannot listen on 127.0.0.1:{relay.address[1]}"):
        await EndpointRelay("other", relay.address).start()
    with pytest.raises(UsageError, match="not listening"):
        _ = EndpointRelay("idle", ("127.0.0.1", 0)).address
    with pytest.raises(TimeoutError):
        await relay.wait_for_state(parked(1), timeout=0.05)
