"""A fleet's endpoints of the pairs another controller holds: routed to the primary in the store, on real relays."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dumont.core.endpoint import fleet_endpoints, listen_address
from dumont.core.mirrors import Mirrors
from dumont.endpoint.local import LocalEndpoint
from dumont.errors import StoreUnavailable
from dumont.store.rows import PairRow
from tests.unit.core.world import World, make_world
from tests.unit.endpoint.test_relay import TagServer

WAIT = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def fleet_world(tmp_path: Path) -> World:
    """Two pairs; this controller's endpoints on 127.0.0.1, the fleet's other controller's on 127.0.0.2."""
    pairs = [{"name": name, "endpoint_listen": f"127.0.0.1:{free_port()}", "standby": {"provider": "gcp"},
              "primary": {"provider": "vast", "instance_id": instance_id}}
             for name, instance_id in (("main", "30000001"), ("second", "30000009"))]
    return make_world(tmp_path, {"pairs": pairs, "controller": {"endpoint_hosts": ["127.0.0.2", "127.0.0.1"],
                                                                "endpoint_bind": "127.0.0.1"}})


def row(name: str, epoch: int, target: TagServer) -> PairRow:
    host, port = target.address
    primary = {"provider": "vast", "instance_id": f"i-{epoch}", "ssh_host": host, "ssh_port": port,
               "ssh_user": "root", "role": "gpu", "alias": f"vast-i-{epoch}"}
    return PairRow(name, "syncing", epoch, primary, None, 0.0)


@pytest.fixture
async def targets() -> AsyncIterator[tuple[TagServer, TagServer]]:
    a, b = TagServer("A"), TagServer("B")
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def greeting(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
    return reader, writer, (await asyncio.wait_for(reader.readline(), WAIT)).strip()


async def test_a_pair_held_elsewhere_is_served_here_routed_as_the_store_says(
        tmp_path: Path, targets: tuple[TagServer, TagServer]) -> None:
    """Given the fleet's other controller holding ``second``, this controller's endpoint of it reaches the store's
    primary; when the store moves it to a new epoch on another host, new sessions go there and the sessions relayed
    to the former primary are closed; once this controller holds the pair, its runtime routes it instead."""
    a, b = targets
    world = fleet_world(tmp_path)
    second = world.ctx.config.pairs[1]
    made: list[LocalEndpoint] = []

    def make(pair: object) -> LocalEndpoint:
        made.append(LocalEndpoint(second.name))
        return made[-1]

    mirrors = Mirrors(world.ctx, make)
    try:
        world.ctx.store.save_pair(row("second", 1, a))
        await mirrors.follow({"main"})
        [endpoint] = made
        assert endpoint.address == listen_address(world.ctx, second)
        reader, writer, said = await greeting(endpoint.address)
        assert said == b"A"

        await mirrors.follow({"main"})  # nothing changed: nothing is closed
        writer.write(b"still here\n")
        assert await asyncio.wait_for(reader.readline(), WAIT) == b"still here\n"

        world.ctx.store.save_pair(row("second", 2, b))
        await mirrors.follow({"main"})
        assert await asyncio.wait_for(reader.read(), WAIT) == b"", "the session on the former primary is closed"
        writer.close()
        _, later, said = await greeting(endpoint.address)
        assert said == b"B" and endpoint.epoch == 2
        later.close()

        world.ctx.store.pairs = _failing  # type: ignore[method-assign]
        await mirrors.follow({"main"})
        _, kept, said = await greeting(endpoint.address)
        assert said == b"B", "a store that does not answer leaves the routes as they were"
        kept.close()

        await mirrors.follow({"main", "second"})
        assert mirrors.endpoints == {} and endpoint.address, "held now: routed by its runtime, still serving"
    finally:
        for endpoint in made:
            await endpoint.stop()


def test_the_snippet_names_this_controller_s_endpoint_first_then_the_others_in_order(tmp_path: Path) -> None:
    world = fleet_world(tmp_path)
    pair = world.ctx.config.pairs[0]
    port = listen_address(world.ctx, pair)[1]
    assert fleet_endpoints(world.ctx, pair) == [("127.0.0.1", port), ("127.0.0.2", port)]


def _failing() -> list[PairRow]:
    raise StoreUnavailable("the database does not answer", hint="in this test")
