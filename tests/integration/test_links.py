"""Links on the local cloud, measured through real OpenSSH and rsync: an SSH round trip within 15% of the set RTT,
an rsync's throughput within 15% of the set rate, a blackhole that holds a session without resetting it (and
lets it go on once healed), and the parsing of what people type."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dumont.cli.common import LINK_PROFILES
from dumont.errors import LocalCloudError, UsageError
from dumont.localcloud.hosts import LocalHost
from dumont.localcloud.link import PROFILES, LinkRelay, LinkSpec, parse_duration, parse_rate, profile
from tests.conftest import Cloud

pytestmark = pytest.mark.serial  # round trips and rates measured against the set link: run alone


@pytest.fixture
def relay() -> Iterator[LinkRelay]:
    links = LinkRelay(seed=7)
    yield links
    links.close()


def ssh_argv(cloud: Cloud, host: LocalHost, port: int) -> list[str]:
    """ssh to the host through the relay on ``port`` (files in a path without spaces: rsync -e splits on them)."""
    plain = cloud.root.parent / "plain"
    plain.mkdir(exist_ok=True)
    key, known = plain / "key", plain / f"known-{port}"
    key.write_bytes(cloud.user_key.read_bytes())
    key.chmod(0o600)
    known.write_text(f"[127.0.0.1]:{port} {host.host_public_key}\n")
    return ["ssh", "-i", str(key), "-p", str(port), "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-T"]


async def echo_session(cloud: Cloud, host: LocalHost, port: int) -> asyncio.subprocess.Process:
    """``cat`` on the host through the relay, already answering."""
    proc = await asyncio.create_subprocess_exec(*ssh_argv(cloud, host, port), f"{host.user}@127.0.0.1", "cat",
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    await round_trip(proc, b"hello\n", timeout=30)
    return proc


async def round_trip(proc: asyncio.subprocess.Process, line: bytes, timeout: float) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    started = time.perf_counter()
    proc.stdin.write(line)
    await proc.stdin.drain()
    assert await asyncio.wait_for(proc.stdout.readline(), timeout) == line
    return time.perf_counter() - started


@pytest.mark.parametrize("rtt", [0.1, 0.18])
async def test_an_ssh_round_trip_takes_the_set_rtt(cloud: Cloud, relay: LinkRelay, rtt: float) -> None:
    host = await cloud.host("gpu-1")
    port = relay.add(host.address, host.port, LinkSpec(rtt=rtt))
    proc = await echo_session(cloud, host, port)
    try:
        times = [await round_trip(proc, f"line {n}\n".encode(), timeout=10) for n in range(9)]
    finally:
        proc.kill()
        await proc.wait()
    assert abs(statistics.median(times) - rtt) <= 0.15 * rtt, times


async def test_an_rsync_moves_at_the_set_rate(cloud: Cloud, relay: LinkRelay, tmp_path: Path) -> None:
    host = await cloud.host("cpu-1")
    rate = 40e6 / 8  # 40 Mbit/s
    port = relay.add(host.address, host.port, LinkSpec(rtt=0.02, rate=rate))
    payload, tiny = tmp_path / "payload.bin", tmp_path / "tiny.bin"
    payload.write_bytes(os.urandom(15 * 1024 * 1024))  # random: nothing for ssh or rsync to squeeze
    tiny.write_bytes(b"x")
    ssh = " ".join(ssh_argv(cloud, host, port))

    async def copy(path: Path) -> float:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "rsync", "-a", "--whole-file", "-e", ssh, str(path), f"{host.user}@127.0.0.1:{host.workspace}/",
            stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        return time.perf_counter() - started

    setup = await copy(tiny)  # the handshakes and rsync's start, which a bigger copy pays as well
    seconds = await copy(payload) - setup
    assert (host.workspace / "payload.bin").stat().st_size == payload.stat().st_size
    measured = payload.stat().st_size / seconds
    assert abs(measured - rate) <= 0.15 * rate, f"{measured * 8 / 1e6:.1f} Mbit/s against {rate * 8 / 1e6:.0f}"


async def test_a_blackhole_holds_a_session_without_a_reset_and_heal_lets_it_go_on(
        cloud: Cloud, relay: LinkRelay) -> None:
    host = await cloud.host("gpu-1")
    spec = LinkSpec(rtt=0.01)
    port = relay.add(host.address, host.port, spec)
    proc = await echo_session(cloud, host, port)
    try:
        relay.set(port, LinkSpec(rtt=0.01, blackhole=True))
        with pytest.raises(TimeoutError):
            await round_trip(proc, b"into the void\n", timeout=1.5)
        assert proc.returncode is None, "a blackhole resets nothing: the session is still there"
        relay.set(port, spec)
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"into the void\n"
        assert await round_trip(proc, b"and on\n", timeout=10) < 1.0
    finally:
        proc.kill()
        await proc.wait()


async def test_a_stall_holds_bytes_for_its_length_then_lets_them_through(cloud: Cloud, relay: LinkRelay) -> None:
    host = await cloud.host("gpu-1")
    port = relay.add(host.address, host.port, LinkSpec(rtt=0.01))
    proc = await echo_session(cloud, host, port)
    try:
        relay.set(port, LinkSpec(rtt=0.01, stall=1.0, stall_every=0.001))  # the next stall begins at once
        slow = await round_trip(proc, b"stalled\n", timeout=10)
        assert 0.8 <= slow <= 3.0, slow
    finally:
        proc.kill()
        await proc.wait()


def test_what_people_type_is_parsed_or_refused_naming_it() -> None:
    assert parse_duration("180ms", "--rtt") == pytest.approx(0.18)
    assert parse_duration("2s", "--stall") == 2.0 and parse_duration("0.5", "--stall") == 0.5
    assert parse_rate("200mbit") == pytest.approx(25e6) and parse_rate("20Mbit/s") == pytest.approx(2.5e6)
    assert parse_rate("5MB") == 5e6
    for bad, parse in (("fast", parse_rate), ("-3ms", lambda t: parse_duration(t, "--rtt")),
                       ("0mbit", parse_rate)):
        with pytest.raises(UsageError, match=repr(bad)):
            parse(bad)
    assert profile("wan") == PROFILES["wan"] and PROFILES["wan"].rtt == 0.18
    assert tuple(PROFILES) == LINK_PROFILES, "the CLI offers every profile there is"
    assert PROFILES["wan"].describe() == "180 ms RTT, 200 Mbit/s"
    assert PROFILES["bad"].describe() == "300 ms RTT, 20 Mbit/s, 2 s stalls every ~30 s"
    with pytest.raises(UsageError, match="lan, wan, bad"):
        profile("moon")


async def test_a_pool_with_links_puts_each_host_behind_one_changed_at_run_time_and_kept_across_restarts(
        cloud: Cloud) -> None:
    cloud.pool.link = PROFILES["lan"]
    host = await cloud.host("gpu-1")
    assert host.link is not None and host.port != host.sshd_port
    proc = await echo_session(cloud, host, host.port)
    try:
        assert await round_trip(proc, b"lan\n", timeout=5) < 0.05
        cloud.pool.set_link("gpu-1", LinkSpec(rtt=0.2))
        times = [await round_trip(proc, b"wan\n", timeout=5) for _ in range(5)]
        assert abs(statistics.median(times) - 0.2) <= 0.03, times  # the open session feels it at once
    finally:
        proc.kill()
        await proc.wait()
    port = host.port
    await cloud.pool.kill("gpu-1")
    with pytest.raises(OSError):
        await asyncio.open_connection(host.address, port)  # the machine is gone, and its link with it
    await cloud.pool.start("gpu-1")
    assert host.port == port
    proc = await echo_session(cloud, host, host.port)
    try:
        assert abs(await round_trip(proc, b"again\n", timeout=5) - 0.2) <= 0.03
    finally:
        proc.kill()
        await proc.wait()
    cloud.pool.link = None
    await cloud.host("cpu-1")
    with pytest.raises(LocalCloudError, match="created without a link"):
        cloud.pool.set_link("cpu-1", PROFILES["wan"])
