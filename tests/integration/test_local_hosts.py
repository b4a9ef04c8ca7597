"""Given the local host pool, its machines behave like real ones: SSH with pinned keys, faults that are real."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from dumont.core.hosts import SshHosts, scan_host_certificates
from dumont.core.layout import ControllerLayout
from dumont.core.model import Health, HostRef
from dumont.errors import AuthRefused, CommandTimeout, HostKeyMismatch, HostUnreachable
from dumont.localcloud import procs
from dumont.localcloud.hosts import HostState
from dumont.transport.hostcert import certificate_body, sign_host_key
from dumont.transport.keys import generate_keypair
from tests.conftest import Cloud, eventually


async def test_a_session_sees_its_own_workspace_and_home(cloud: Cloud) -> None:
    """Given a host, when a command runs over SSH, then it sees that host's workspace and home, not ours."""
    host = await cloud.host("gpu-1")
    result = await cloud.transport.run(host.target(), ["sh", "-c", 'printf "%s|%s" "$DUMONT_WORKSPACE" "$HOME"'],
                                       timeout=20)
    workspace, home = result.text.split("|")
    assert workspace == str(host.workspace)
    assert home == str(host.base / "home")


async def test_kill_ends_every_process_of_the_host_at_once(cloud: Cloud) -> None:
    """Given a host running a daemonized job, when it is killed, then sshd and the job are gone, files stay."""
    host = await cloud.host("gpu-1")
    (host.workspace / "keep.txt").write_text("survives")
    await cloud.transport.run(
        host.target(), ["sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo started"], timeout=20
    )
    before = host.processes()
    assert any(b"sleep" in _cmdline(p) for p in before), "the daemonized job should belong to the host"

    await cloud.pool.kill("gpu-1")

    assert host.processes() == set()
    assert not any(procs.is_alive(p) for p in before)
    assert cloud.pool.get("gpu-1").state == HostState.KILLED
    with pytest.raises(HostUnreachable):
        await cloud.transport.check_reachable(host.target(), timeout=10)
    await cloud.pool.start("gpu-1")
    assert (host.workspace / "keep.txt").read_text() == "survives"
    await cloud.transport.check_reachable(host.target(), timeout=10)


async def test_partition_hangs_connections_and_heal_restores_them(cloud: Cloud) -> None:
    """Given a host, when it is partitioned, then SSH times out without the host dying; heal makes it answer."""
    host = await cloud.host("gpu-1")
    await cloud.pool.partition("gpu-1")
    frozen = host.processes()
    assert frozen and all(procs.is_stopped(p) for p in frozen)

    with pytest.raises(CommandTimeout):
        await cloud.transport.check_reachable(host.target(), timeout=2)

    await cloud.pool.heal("gpu-1")
    assert not any(procs.is_stopped(p) for p in host.processes())
    await cloud.transport.check_reachable(host.target(), timeout=10)


async def test_a_command_over_the_shared_connection_of_a_frozen_host_gives_up_at_its_deadline(cloud: Cloud) -> None:
    """A probe's ``true`` over the open shared connection of a host that froze returns at its deadline, not when
    the master gives the session up: the killed client's pipes belong to the master by then."""
    host = await cloud.host("gpu-1")
    await cloud.transport.run(host.target(), ["true"], timeout=20)  # the shared connection is open
    await cloud.pool.partition("gpu-1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CommandTimeout):
        await cloud.transport.run(host.target(), ["true"], timeout=0.5)
    waited = loop.time() - started
    assert waited < 3.0, f"the call returned {waited:.1f} s after it started, its deadline was 0.5 s"
    await cloud.pool.heal("gpu-1")
    await cloud.transport.run(host.target(), ["true"], timeout=20)


async def test_stop_and_start_keep_the_files(cloud: Cloud) -> None:
    """Given a host with data, when it is stopped and started, then its files are as they were."""
    host = await cloud.host("cpu-1")
    (host.workspace / "data.bin").write_bytes(b"\x00\x01")
    await cloud.pool.stop("cpu-1")
    assert host.processes() == set()
    await cloud.pool.start("cpu-1")
    result = await cloud.transport.run(host.target(), ["cat", str(host.workspace / "data.bin")], timeout=20)
    assert result.stdout == b"\x00\x01"


async def test_a_host_presenting_another_key_is_refused(cloud: Cloud) -> None:
    """Given a pinned host key, when the host presents a different one, then we refuse to talk to it."""
    host = await cloud.host("gpu-1")
    impostor = generate_keypair(cloud.root / "impostor", "impostor")
    cloud.known_hosts.pin("gpu-1", impostor)
    with pytest.raises(HostKeyMismatch, match="gpu-1 presented a host key other than"):
        await cloud.transport.check_reachable(host.target(), timeout=10)


async def test_a_host_re_keyed_while_running_is_refused_and_its_open_session_goes_on(cloud: Cloud) -> None:
    """Given a running host with a session open, when it starts presenting a new host key (a reinstall or a man
    in the middle), then a new login is refused by the pinned key and the open session still answers."""
    host = await cloud.host("gpu-1")
    session = await cloud.transport.start(host.target(), ["cat"])
    assert session.stdin is not None and session.stdout is not None
    session.stdin.write(b"before\n")
    assert await asyncio.wait_for(session.stdout.readline(), 15) == b"before\n"
    old_key = host.host_public_key
    rekeyed = await cloud.pool.change_host_key("gpu-1")
    assert rekeyed.host_public_key != old_key
    with pytest.raises(HostKeyMismatch, match="gpu-1 presented a host key other than"):
        await cloud.transport.check_reachable(host.target(), timeout=10)
    session.stdin.write(b"after\n")
    assert await asyncio.wait_for(session.stdout.readline(), 15) == b"after\n"
    session.stdin.close()
    assert await asyncio.wait_for(session.wait(), 15) == 0


async def test_a_key_the_host_does_not_accept_is_refused(cloud: Cloud) -> None:
    """Given a host that never received our key, then login fails with a clear authentication error."""
    host = await cloud.pool.create("lonely", authorized_keys=[])
    cloud.known_hosts.pin("lonely", host.host_public_key)
    with pytest.raises(AuthRefused, match="lonely refused our SSH key"):
        await cloud.transport.check_reachable(host.target(), timeout=10)


async def test_a_host_presents_the_certificate_it_is_given_beside_its_own_key(cloud: Cloud) -> None:
    """Given a certificate of its own key, the host presents it after one reload, and keeps its own key."""
    host = await cloud.host("gpu-1")
    ca = cloud.root / "pair_host_ca"
    generate_keypair(ca, "dumont-pair-host-ca")
    cert = await sign_host_key(ca, host.host_public_key, identity="gpu-1", principal="dumont-train")
    agent = cloud.agent(host)
    try:
        await agent.install_host_certificate(cert)
    finally:
        await agent.close()

    async def presents_it() -> None:  # sshd re-executes itself on SIGHUP: nothing announces when it is back
        assert certificate_body(cert) in await scan_host_certificates("127.0.0.1", host.port, 5)

    await eventually(presents_it, timeout=15, retry_on=(AssertionError,))
    await cloud.transport.check_reachable(host.target(), timeout=10)  # its own key, still pinned, still works


async def test_shutdown_leaves_no_process_behind(cloud: Cloud) -> None:
    """Given several hosts with background jobs, when the pool shuts down, then no process of it remains."""
    for name in ("gpu-1", "cpu-1", "cpu-2"):
        host = await cloud.host(name)
        await cloud.transport.run(host.target(), ["sh", "-c", "nohup sleep 600 >/dev/null 2>&1 &"], timeout=20)
    await cloud.pool.partition("cpu-2")
    assert len(cloud.pool.leftover_processes()) >= 6
    await cloud.transport.close()
    await cloud.pool.shutdown()
    assert cloud.pool.leftover_processes() == set()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def test_processes_are_found_by_mark_even_when_reparented() -> None:
    """The mark in the environment finds a process whatever its parent is (pure /proc reading, our own pid)."""
    os.environ[procs.MARK] = "unit-test/self"
    try:
        assert os.getpid() not in procs.host_processes("unit-test/self"), "the caller never kills itself"
    finally:
        del os.environ[procs.MARK]


async def test_closing_the_transport_ends_its_shared_connections_at_once(cloud: Cloud) -> None:
    """hostile-review.md #19: ControlMasters lingered ~30 s after the controller stopped (they ran in "ask" mode,
    which refuses `ssh -O exit`)."""
    hosts = [await cloud.host(name) for name in ("gpu-1", "cpu-1")]
    for host in hosts:
        await cloud.transport.run(host.target(), ["true"], timeout=20)
    config = str(cloud.transport.config_path).encode()

    def masters() -> list[int]:
        return [int(pid) for pid in filter(str.isdigit, os.listdir("/proc"))
                if _cmdline(int(pid)).startswith(b"ssh\0") and config in _cmdline(int(pid))]

    assert len(masters()) == 2
    await cloud.transport.close()
    assert masters() == [], "no master outlives close()"


async def test_a_probe_between_fresh_logins_pings_the_agent_and_a_frozen_host_fails_it_at_its_deadline(
        cloud: Cloud, tmp_path: Path) -> None:
    """``fresh_login_every`` > 1: once the host's liveness channel is up, the probes between fresh logins ping its
    agent over it (no ssh client started here, no shell there); a host that froze fails that ping at its
    deadline, and the next probe logs in afresh."""
    host = await cloud.host("cpu-1", role="cpu")
    ref = HostRef("local", "cpu-1", "127.0.0.1", host.port, host.user, "cpu", host.target().alias)
    hosts = SshHosts(cloud.transport, cloud.known_hosts, ControllerLayout(tmp_path / "state"), bootstrap_timeout=60,
                     clock=time.time, fresh_login_every=100)
    try:
        [tcp, ssh] = await hosts.probe(ref, timeout=5, command=None)  # a fresh login
        assert (tcp.health, ssh.health) == (Health.OK, Health.OK)
        await hosts.probe(ref, timeout=5, command=None)  # over the shared connection; opens the channel
        pinger = hosts._pingers[ref.alias]
        async def channel_open() -> None:
            assert pinger.is_open

        await eventually(channel_open, timeout=30, retry_on=(AssertionError,))
        pings: list[float] = []
        real = pinger.ping

        async def counted(*, timeout: float) -> None:
            pings.append(timeout)
            await real(timeout=timeout)

        pinger.ping = counted  # type: ignore[method-assign]
        [_, ssh] = await hosts.probe(ref, timeout=5, command=None)
        assert ssh.health == Health.OK and pings == [5]

        await cloud.pool.partition("cpu-1")
        started = time.monotonic()
        [_, ssh] = await hosts.probe(ref, timeout=0.5, command=None)
        assert ssh.health == Health.FAIL and "did not answer a ping within 0.5 s" in ssh.detail
        assert time.monotonic() - started < 3.0
        assert hosts._since_fresh.get(ref.alias) is None, "the next probe is a fresh login"
        await cloud.pool.heal("cpu-1")
    finally:
        await hosts.close()
