"""The ssh ProxyCommand of a fleet's endpoints, run as ssh runs it: a process whose stdin and stdout carry it."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dumont.endpoint import fallthrough
from tests.unit.endpoint.test_relay import TagServer

WAIT = 10.0
SCRIPT = Path(fallthrough.__file__)


def closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Refuser:
    """An endpoint whose controller is silent: it accepts and closes before sending a byte."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return "127.0.0.1", self.server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Refuser, TagServer]]:
    refuser, tag = Refuser(), TagServer("C")
    await refuser.start()
    await tag.start()
    yield refuser, tag
    await tag.close()
    assert refuser.server is not None
    refuser.server.close()


async def run(*addresses: str, stdin: bytes) -> tuple[int, bytes, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), *addresses, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin), WAIT)
    assert process.returncode is not None
    return process.returncode, out, err.decode()


async def test_it_skips_a_refused_port_and_an_endpoint_that_closes_and_replays_what_the_client_sent(
        servers: tuple[Refuser, TagServer]) -> None:
    """Given a dead endpoint, one that closes before a byte, and a serving one, the client's bytes (sent before any
    greeting, as ssh sends its own) reach the serving one whole, and its answer comes back."""
    refuser, tag = servers
    assert refuser.server is not None
    quiet = refuser.server.sockets[0].getsockname()[1]
    code, out, err = await run(f"127.0.0.1:{closed_port()}", f"127.0.0.1:{quiet}", f"{tag.address[0]}:"
                               f"{tag.address[1]}", stdin=b"SSH-2.0-test\r\n" + b"x" * 100_000)
    assert code == 0, err
    assert refuser.accepted == 1 and tag.accepted == 1
    assert out.startswith(b"C\n"), out[:20]
    assert out[2:2 + 14] == b"SSH-2.0-test\r\n" and out.count(b"x") == 100_000, "every byte echoed, in order"


async def test_it_says_why_each_endpoint_failed_when_none_serves(servers: tuple[Refuser, TagServer]) -> None:
    refuser, _ = servers
    assert refuser.server is not None
    quiet = refuser.server.sockets[0].getsockname()[1]
    dead = closed_port()
    code, out, err = await run(f"127.0.0.1:{dead}", f"127.0.0.1:{quiet}", stdin=b"SSH-2.0-test\r\n")
    assert code == 255 and out == b""
    assert f"127.0.0.1:{dead} (Connection refused)" in err
    assert f"127.0.0.1:{quiet} (closed before sending a byte)" in err


async def test_a_bad_address_is_a_usage_error_naming_it() -> None:
    code, _, err = await run("127.0.0.1:22", "nowhere", stdin=b"")
    assert code == 2 and "'nowhere' is not a HOST:PORT endpoint address" in err
