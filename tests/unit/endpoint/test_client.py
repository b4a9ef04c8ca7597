"""Both implementations of the controller's :class:`Endpoint`: the client of the endpoint process (its server run
in the test's event loop) and the in-process relay. The same story holds for each."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dumont.endpoint import Endpoint, EndpointClient, LocalEndpoint
from dumont.endpoint.control import request
from dumont.endpoint.server import EndpointServer
from dumont.errors import EndpointUnavailable, StaleRouteRefused, UsageError
from tests.unit.endpoint.test_relay import TagServer

WAIT = 5.0
LISTEN = ("127.0.0.1", 0)


@pytest.fixture
async def targets() -> AsyncIterator[tuple[TagServer, TagServer]]:
    a, b = TagServer("A"), TagServer("B")
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture(params=["process", "local"])
async def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Endpoint]:
    if request.param == "local":
        local = LocalEndpoint("train")
        try:
            yield local
        finally:
            await local.stop()
        return
    server = EndpointServer(tmp_path / "endpoint")
    await server.start()
    try:
        yield EndpointClient(tmp_path / "endpoint", "train", start_daemon=False, timeout=WAIT)
    finally:
        await server.stop()


async def greeting(address: tuple[str, int]) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
    try:
        return (await asyncio.wait_for(reader.readline(), WAIT)).decode().strip()
    finally:
        writer.close()


async def test_it_follows_the_primary_and_reports_what_it_did(
    endpoint: Endpoint, targets: tuple[TagServer, TagServer]
) -> None:
    """Given a started endpoint, when it is pointed at A then B, then new connections follow, and the readers
    report the target, the switches and the counters after a refresh."""
    a, b = targets
    with pytest.raises(UsageError, match="endpoint train is not started"):
        _ = endpoint.address
    address = await endpoint.start(LISTEN, hold_timeout=WAIT)
    assert await endpoint.start(LISTEN, hold_timeout=WAIT) == address == endpoint.address

    await endpoint.point_to(a.address, reason="gpu-1 is primary", epoch=1)
    assert await greeting(address) == "A"
    before = time.monotonic()
    await endpoint.point_to(b.address, reason="failover: gpu-1 unreachable", epoch=2)
    assert await greeting(address) == "B"

    await endpoint.refresh()
    stats = endpoint.stats()
    assert (stats.target, stats.held, stats.switch_reason) == (b.address, False, "failover: gpu-1 unreachable")
    assert stats.accepted == 2
    assert [(s.target, s.reason) for s in endpoint.history] == [
        (a.address, "gpu-1 is primary"), (b.address, "failover: gpu-1 unreachable")]
    assert endpoint.switched_at is not None and before <= endpoint.switched_at <= time.monotonic()


async def test_a_hold_parks_users_until_release_and_close_existing_counts(
    endpoint: Endpoint, targets: tuple[TagServer, TagServer]
) -> None:
    a, _ = targets
    address = await endpoint.start(LISTEN, hold_timeout=WAIT)
    await endpoint.point_to(a.address, reason="gpu-1 is primary", epoch=1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), WAIT)
    try:
        assert await asyncio.wait_for(reader.readline(), WAIT) == b"A\n"
        await endpoint.hold(reason="final catch-up")
        assert endpoint.stats().held is True
        assert await endpoint.close_existing(reason="failing back") == 1
        await endpoint.release(reason="caught up")
        assert endpoint.stats().held is False
    finally:
        writer.close()


async def test_a_route_from_an_older_epoch_is_refused(endpoint: Endpoint, targets: tuple[TagServer, TagServer]) -> None:
    a, b = targets
    address = await endpoint.start(LISTEN, hold_timeout=WAIT)
    await endpoint.point_to(b.address, reason="failover", epoch=3)
    with pytest.raises(StaleRouteRefused, match="epoch 2 was refused; it serves epoch 3"):
        await endpoint.point_to(a.address, reason="an old controller", epoch=2)
    assert await greeting(address) == "B"


async def test_stop_ends_serving_the_pair(endpoint: Endpoint, targets: tuple[TagServer, TagServer]) -> None:
    address = await endpoint.start(LISTEN, hold_timeout=WAIT)
    await endpoint.point_to(targets[0].address, reason="gpu-1 is primary", epoch=1)
    await endpoint.stop()
    with pytest.raises(ConnectionRefusedError):
        await greeting(address)


async def test_the_client_sends_a_heartbeat_with_every_request_and_detach_leaves_the_route(tmp_path: Path) -> None:
    server = EndpointServer(tmp_path / "endpoint")
    await server.start()
    try:
        client = EndpointClient(tmp_path / "endpoint", "train", start_daemon=False, expect_within=7)
        await client.start(LISTEN, hold_timeout=WAIT)
        assert client.summary.startswith(f"controller {os.getpid()} heard")
        assert client.daemon_pid == os.getpid() and client.epoch == 0
        await client.detach()
        status = await request(tmp_path / "endpoint" / "control.sock", {"op": "status"}, what="test")
        assert status["controller"] == os.getpid() and status["controller_expect_within"] == 7
        assert status["pairs"]["train"]["listening"] is True
    finally:
        await server.stop()


async def test_a_missing_endpoint_process_is_reported_with_the_pair_the_socket_and_the_fix(tmp_path: Path) -> None:
    client = EndpointClient(tmp_path / "endpoint", "train", start_daemon=False, timeout=WAIT)
    with pytest.raises(EndpointUnavailable) as caught:
        await client.point_to(("127.0.0.1", 22), reason="gpu-1 is primary", epoch=1)
    assert caught.value.message.startswith(f"endpoint train: no endpoint process answers on {tmp_path}/endpoint/")
    assert caught.value.hint == f"start one with: dumont endpoint serve --dir {tmp_path / 'endpoint'}"


async def test_an_endpoint_process_that_does_not_answer_is_reported_within_the_deadline(tmp_path: Path) -> None:
    """Given a socket whose owner accepts and never answers, a request fails after its deadline, not later."""
    root = tmp_path / "endpoint"
    root.mkdir()
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_unix_server(lambda _r, w: accepted.append(w), path=str(root / "control.sock"))
    try:
        client = EndpointClient(root, "train", start_daemon=False, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(EndpointUnavailable, match=r"did not answer 'status' on .*control.sock within 0.2 s"):
            await client.refresh()
        assert time.monotonic() - started < WAIT
    finally:
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()
