"""Given two real sshd hosts that present certificates of their own keys from one pair host CA, the stable endpoint
follows the primary with no host-key warning: a user's ``ssh dumont-<pair>`` reaches the GPU, then the CPU after the
switch; a revoked former primary is refused whatever certificate it holds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dumont.endpoint import EndpointRelay, host_alias, render_ssh_config, write_ssh_config
from dumont.errors import HostKeyMismatch, HostUnreachable
from dumont.localcloud.hosts import LocalHost
from dumont.transport.hostcert import authority_line, revoked_line, sign_host_key
from dumont.transport.keys import generate_keypair, write_private
from dumont.transport.ssh import CommandResult, classify_ssh_failure, run_local
from tests.conftest import Cloud, eventually

PAIR = "train"


@dataclass
class Endpoint:
    """Two hosts presenting the pair key, a relay in front of them, and the user's ssh_config for it."""

    cloud: Cloud
    gpu: LocalHost
    cpu: LocalHost
    relay: EndpointRelay
    config: Path

    def address(self, host: LocalHost) -> tuple[str, int]:
        return "127.0.0.1", host.port

    def ssh_argv(self, *remote: str, config: Path | None = None) -> list[str]:
        """The user's command line: their ssh_config (strict host keys), batch mode, the pair's alias."""
        return user_ssh_argv(config or self.config, *remote)

    async def ssh(self, *remote: str, config: Path | None = None) -> CommandResult:
        """Run ``remote`` through the endpoint exactly as a user would."""
        return await run_local(self.ssh_argv(*remote, config=config), timeout=20, what=f"ssh {host_alias(PAIR)}")


def write_user_config(cloud: Cloud, name: str, host: str, port: int, user: str) -> Path:
    path = cloud.root / "user ssh" / name
    text = render_ssh_config(PAIR, host, port, user, cloud.user_key, cloud.root / "user ssh" / "known_hosts")
    write_ssh_config(path, text)
    return path


async def hosts_with_pair_key(cloud: Cloud) -> tuple[LocalHost, LocalHost]:
    """gpu-1 and cpu-1, both presenting a certificate from the pair's host CA, which the user trusts under the
    pair's alias only."""
    gpu, cpu = await cloud.host("gpu-1"), await cloud.host("cpu-1")
    ca = cloud.root / "pair_host_ca"
    public = generate_keypair(ca, "dumont-pair-host-ca")
    for host in (gpu, cpu):
        agent = cloud.agent(host)
        cert = await sign_host_key(ca, host.host_public_key, identity=host.name, principal=host_alias(PAIR))
        try:
            await agent.install_host_certificate(cert)
        finally:
            await agent.close()
    # The user trusts the pair's CA under its alias and nothing else: no host's own key, no address.
    write_private(cloud.root / "user ssh" / "known_hosts", authority_line(host_alias(PAIR), public) + "\n",
                  mode=0o644)
    for machine in (gpu, cpu):
        await wait_for_pair_key(cloud, machine)
    return gpu, cpu


@pytest.fixture
async def endpoint(cloud: Cloud) -> AsyncIterator[Endpoint]:
    gpu, cpu = await hosts_with_pair_key(cloud)
    relay = EndpointRelay(PAIR, ("127.0.0.1", 0))
    await relay.start()
    try:
        listen_host, listen_port = relay.address
        config = write_user_config(cloud, "config", listen_host, listen_port, gpu.user)
        yield Endpoint(cloud, gpu, cpu, relay, config)
    finally:
        await relay.stop()


def user_ssh_argv(config: Path, *remote: str) -> list[str]:
    """The user's command line: their ssh_config (strict host keys), batch mode, the pair's alias."""
    return ["ssh", "-F", str(config), "-o", "BatchMode=yes", host_alias(PAIR), "--", *remote]


async def wait_for_pair_key(cloud: Cloud, host: LocalHost) -> None:
    """Wait until ``host``'s sshd, re-executed by SIGHUP, presents the pair key (checked directly, not relayed)."""
    direct = write_user_config(cloud, f"direct-{host.name}", "127.0.0.1", host.port, host.user)

    async def presents_pair_key() -> None:
        result = await run_local(user_ssh_argv(direct, "true"), timeout=20, what=f"ssh {host.name}")
        if result.returncode != 0:
            raise classify_ssh_failure(host.name, result.stderr.decode(errors="replace"))

    await eventually(presents_pair_key, timeout=15, retry_on=(HostKeyMismatch, HostUnreachable))


def assert_clean(result: CommandResult, host: str) -> None:
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"ssh through the endpoint failed: {stderr}"
    assert result.text == f"{host}\n"
    assert "host key" not in stderr.lower() and "warning" not in stderr.lower(), stderr


async def test_the_endpoint_follows_the_primary_with_no_host_key_warning(endpoint: Endpoint) -> None:
    """Given the endpoint on the GPU, when it is switched to the CPU, then the same ssh command reaches the CPU
    within 5 s of the switch, with strict host-key checking and no warning."""
    endpoint.relay.point_to(endpoint.address(endpoint.gpu), reason="gpu-1 is primary")
    assert_clean(await endpoint.ssh("printenv", "DUMONT_HOST"), "gpu-1")

    endpoint.relay.point_to(endpoint.address(endpoint.cpu), reason="failover: gpu-1 unreachable")
    result = await endpoint.ssh("printenv", "DUMONT_HOST")
    switched_at = endpoint.relay.switched_at
    assert switched_at is not None
    elapsed = time.monotonic() - switched_at

    assert_clean(result, "cpu-1")
    assert elapsed < 5, f"the first session after the switch took {elapsed:.2f} s"
    known = (endpoint.cloud.root / "user ssh" / "known_hosts").read_text().splitlines()
    assert [line.split(" ")[:2] for line in known] == [["@cert-authority", host_alias(PAIR)]], \
        "ssh must not have learnt another key"
    stats = await endpoint.relay.wait_for_state(lambda s: s.active == 0, timeout=5)  # both sessions ended
    assert (stats.accepted, stats.failed_connects, stats.bytes_in > 0) == (2, 0, True)


async def test_an_old_session_stays_until_closed_and_then_new_ones_reach_the_new_primary(endpoint: Endpoint) -> None:
    """Given an interactive session on the GPU, when the endpoint switches, then that session still talks to the
    GPU; close_existing ends it, and the next session lands on the CPU."""
    endpoint.relay.point_to(endpoint.address(endpoint.gpu), reason="gpu-1 is primary")
    session = await asyncio.create_subprocess_exec(
        *endpoint.ssh_argv('echo "$DUMONT_HOST"; exec cat'),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert session.stdin is not None and session.stdout is not None
        assert await asyncio.wait_for(session.stdout.readline(), 20) == b"gpu-1\n"

        endpoint.relay.point_to(endpoint.address(endpoint.cpu), reason="failover: gpu-1 unreachable")
        session.stdin.write(b"still on the old primary\n")
        await session.stdin.drain()
        assert await asyncio.wait_for(session.stdout.readline(), 20) == b"still on the old primary\n"

        assert endpoint.relay.close_existing(reason="gpu-1 is fenced") == 1
        assert await asyncio.wait_for(session.wait(), 20) == 255  # ssh's own "connection closed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            session.kill()
        await asyncio.wait_for(session.communicate(), 20)

    assert_clean(await endpoint.ssh("printenv", "DUMONT_HOST"), "cpu-1")


async def test_a_revoked_former_primary_is_refused_though_its_certificate_is_valid(endpoint: Endpoint) -> None:
    """hostile-review.md #11: no private key is shared, and a host dropped at a failover cannot pose as the
    endpoint later: its key is listed @revoked beside the CA."""
    endpoint.relay.point_to(endpoint.address(endpoint.gpu), reason="start")
    assert_clean(await endpoint.ssh("printenv", "DUMONT_HOST"), "gpu-1")
    known = endpoint.cloud.root / "user ssh" / "known_hosts"
    write_private(known, known.read_text() + revoked_line(endpoint.gpu.host_public_key) + "\n", mode=0o644)
    refused = await endpoint.ssh("true")
    assert refused.returncode != 0 and "revoked" in refused.stderr.decode(errors="replace").lower()
    endpoint.relay.point_to(endpoint.address(endpoint.cpu), reason="failover")
    assert_clean(await endpoint.ssh("printenv", "DUMONT_HOST"), "cpu-1")
