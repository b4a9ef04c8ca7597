"""The link relay's own life cycle (what it does to bytes is measured against real hosts in test_links.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from dumont.localcloud.link import LinkRelay, LinkSpec


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on loopback, in a thread."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(timeout=5)
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def test_closing_the_relays_ends_their_open_connections_first(echo_port: int) -> None:
    """Given a connection open through a relay, when the relays are closed, then no task of that connection is
    left pending on the closed loop (one left cancelling was destroyed pending, and logged, after every drill)."""
    relay = LinkRelay()
    port = relay.add("127.0.0.1", echo_port, LinkSpec(rtt=0.01))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        relay.close()
        assert asyncio.all_tasks(relay._loop) == set()
        assert client.recv(4) == b""  # the relay closed its end
