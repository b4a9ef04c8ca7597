"""Which probes make a fresh SSH login: one in ``fresh_login_every``, and every one after a failure until a login
succeeds (so a host that refuses logins gathers its strikes in a row); the others use the shared connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dumont.core import probes
from dumont.core.hosts import SshHosts
from dumont.core.layout import ControllerLayout
from dumont.core.model import Health, HostRef, ProbeResult
from dumont.errors import HostKeyMismatch
from dumont.transport.keys import KnownHosts
from dumont.transport.ssh import SshTarget, SshTransport

REF = HostRef("vast", "1", "127.0.0.1", 22, "root", "gpu", "vast-1")


async def test_one_probe_in_n_logs_in_afresh_and_a_failure_keeps_logging_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = iter([True] * 7 + [False, False, True] + [True] * 5)  # the round trip's verdicts, in order
    fresh: list[bool] = []

    async def probe_ssh(ref: HostRef, **kwargs: Any) -> tuple[ProbeResult, ...]:
        fresh.append(kwargs["fresh"])
        ok = next(script)
        return (ProbeResult("tcp", Health.OK, ""), ProbeResult("ssh", Health.OK if ok else Health.FAIL, ""))

    monkeypatch.setattr(probes, "probe_ssh", probe_ssh)
    hosts = SshHosts(None, KnownHosts(tmp_path / "known_hosts"), ControllerLayout(tmp_path),  # type: ignore[arg-type]
                     bootstrap_timeout=1, clock=lambda: 0.0, fresh_login_every=3)
    for _ in range(15):
        await hosts.probe(REF, timeout=1, command=None)
    # 1st fresh, then every 3rd; the 8th (shared) fails, so the 9th (fails) and the 10th (succeeds) log in afresh,
    # and the count starts again from that login.
    assert fresh == [True, False, False, True, False, False, True, False, True, True, False, False, True, False,
                     False]


async def _greeter(lines: list[bytes], done: asyncio.Event) -> tuple[asyncio.Server, int]:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for line in lines:
            writer.write(line)
        await writer.drain()
        await reader.read()  # hold the connection until the probe closes it
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(("lines", "health"), [
    ([b"SSH-2.0-OpenSSH_9.2\r\n"], Health.OK),
    ([b"a notice before the version line\r\n", b"SSH-2.0-OpenSSH_9.2\r\n"], Health.OK),  # RFC 4253 4.2
    ([], Health.FAIL),  # a stopped listener: the kernel accepts, nobody greets
])
async def test_the_banner_probe_wants_an_ssh_greeting(lines: list[bytes], health: Health) -> None:
    done = asyncio.Event()
    server, port = await _greeter(lines, done)
    async with server:
        found, detail = await probes.banner_probe("127.0.0.1", port, 0.5)
        await asyncio.wait_for(done.wait(), 5)  # the server's side of the connection ends too
    assert found is health, detail


async def test_the_banner_probe_fails_on_a_closed_port() -> None:
    server, port = await _greeter([], asyncio.Event())
    server.close()
    await server.wait_closed()
    found, _ = await probes.banner_probe("127.0.0.1", port, 0.5)
    assert found is Health.FAIL


class _Refusing:
    """A transport whose logins fail host key verification, with ``known_hosts`` as given."""

    def __init__(self, known: KnownHosts) -> None:
        self.known_hosts = known

    async def check_reachable(self, target: Any, *, timeout: float) -> None:
        raise HostKeyMismatch(f"{target.alias} presented a host key other than the one pinned for it")


async def test_a_host_key_refused_fails_the_probe_only_once_a_key_is_pinned(tmp_path: Path) -> None:
    """A pair being adopted is probed before its hosts are first reached: no pinned key is no verdict (the
    fleet bench saw four GPUs alerted as failing at adoption); a pinned key refused is a failure."""
    known = KnownHosts(tmp_path / "known_hosts")
    target = SshTarget("vast-1", "127.0.0.1", 22, "root")
    health, detail = await probes.ssh_probe(_Refusing(known), target, 1.0)  # type: ignore[arg-type]
    assert health is Health.UNKNOWN and "not reached yet" in detail
    known.pin("vast-1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
    health, detail = await probes.ssh_probe(_Refusing(known), target, 1.0)  # type: ignore[arg-type]
    assert health is Health.FAIL and "other than the one pinned" in detail


async def test_a_shared_probe_whose_connection_is_still_being_made_fails_instead_of_raising(tmp_path: Path) -> None:
    """A drill saw 7 s of a partitioned GPU with no strike: the deadline passed while another call was opening the
    shared connection, SshTransport.run let a bare TimeoutError out, and each probe counted as no verdict."""
    transport = SshTransport(identity=tmp_path / "id", known_hosts=KnownHosts(tmp_path / "known_hosts"))

    async def still_opening(target: SshTarget, *, timeout: float) -> None:
        await asyncio.Event().wait()  # another call holds the connection's lock while it opens it

    transport.prepare = still_opening  # type: ignore[method-assign]
    server, port = await _greeter([b"SSH-2.0-OpenSSH_9.2\r\n"], asyncio.Event())
    try:
        async with server:
            health, detail = await probes.shared_probe(transport, SshTarget("vast-1", "127.0.0.1", port, "root"),
                                                       0.5)
    finally:
        await transport.close()
    assert health is Health.FAIL and "did not answer within 0.5 s" in detail
