"""Health probes: provider status, TCP connect, an SSH round trip, an optional command; each with a deadline.

A probe never raises: whatever happens becomes data (OK, FAIL, or UNKNOWN with a detail), so one stuck host can
never stall the loop. All probes of a host run concurrently and finish within the probe timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlparse

from dumont.config import Config, split_host_port
from dumont.core.model import Health, HostHealth, HostRef, ProbeResult
from dumont.core.ports import HostAccess
from dumont.errors import CommandTimeout, DumontError, HostKeyMismatch
from dumont.providers.base import Instance, InstanceState
from dumont.transport.ssh import SshTarget, SshTransport

GetInstance = Callable[[HostRef], Awaitable[Instance]]
BANNER_LINES = 20  # lines an SSH server may send before its version line, read at most
log = logging.getLogger("dumont.controller")


async def probe_host(
    ref: HostRef,
    *,
    get_instance: GetInstance,
    hosts: HostAccess,
    timeout: float,
    command: str | None = None,
) -> HostHealth:
    """Probe one host every way at once (its provider, and its machine through ``hosts``); return what each found."""
    provider_task = asyncio.ensure_future(_provider_state(get_instance, ref, timeout))
    try:
        results = await hosts.probe(ref, timeout=timeout, command=command)
    except Exception as exc:  # a bug in the probes is no verdict on the host
        log.exception("%s: the machine probes failed unexpectedly", ref.alias)
        results = (ProbeResult("ssh", Health.UNKNOWN, f"probes failed unexpectedly: {type(exc).__name__}: {exc}"),)
    state, detail, address = await provider_task
    moved = address if address is not None and address != (ref.ssh_host, ref.ssh_port) else None
    return HostHealth(state, detail, tuple(results), moved)


async def probe_ssh(ref: HostRef, *, transport: SshTransport, timeout: float, command: str | None = None,
                    fresh: bool = True, ping: Callable[[float], Awaitable[None]] | None = None,
                    ) -> tuple[ProbeResult, ...]:
    """TCP connect, an SSH round trip and the optional command against the machine, concurrently. The round trip
    is a fresh login (``fresh``), else a ping of the host's agent over a channel kept for it (``ping``), else a
    command over the host's open shared connection: the last two cost no handshake, the ping no process."""
    target = SshTarget(ref.alias, ref.ssh_host, ref.ssh_port, ref.ssh_user)
    if fresh:
        round_trip = ssh_probe(transport, target, timeout)
    elif ping is not None:
        round_trip = agent_probe(ping, ref.alias, timeout)
    else:
        round_trip = shared_probe(transport, target, timeout)
    probes: list[Awaitable[ProbeResult]] = [
        _timed("tcp", tcp_probe(ref.ssh_host, ref.ssh_port, timeout)),
        _timed("ssh", round_trip),
    ]
    if command:
        probes.append(_timed("command", command_probe(transport, target, command, timeout)))
    return tuple(await asyncio.gather(*probes))


async def _timed(name: str, probe: Awaitable[tuple[Health, str]]) -> ProbeResult:
    started = time.monotonic()
    try:
        health, detail = await probe
    except Exception as exc:  # a bug in a probe is no verdict on the host
        log.exception("the %s probe failed unexpectedly", name)
        health, detail = Health.UNKNOWN, f"probe failed unexpectedly: {type(exc).__name__}: {exc}"
    return ProbeResult(name, health, detail, time.monotonic() - started)


async def _provider_state(get_instance: GetInstance, ref: HostRef,
                          timeout: float) -> tuple[InstanceState | None, str, tuple[str, int] | None]:
    """What the provider says of the host, and where it reports its SSH address while it runs."""
    try:
        async with asyncio.timeout(timeout):
            instance = await get_instance(ref)
    except TimeoutError:
        return None, f"provider did not answer within {timeout:g} s", None
    except DumontError as exc:
        return None, f"provider error: {exc.message}", None
    except Exception as exc:  # a bug in a provider plug-in: the host is not judged by it, the loop goes on
        log.exception("%s: the provider probe failed unexpectedly", ref.alias)
        return None, f"provider probe failed unexpectedly: {type(exc).__name__}: {exc}", None
    address = None
    if instance.state == InstanceState.RUNNING and instance.ssh_host and instance.ssh_port:
        address = (instance.ssh_host, int(instance.ssh_port))
    return instance.state, instance.raw_state, address


async def tcp_probe(host: str, port: int, timeout: float) -> tuple[Health, str]:
    """Can a TCP connection to the SSH port be opened?"""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return Health.FAIL, f"tcp connect timed out after {timeout:g} s"
    except OSError as exc:
        return Health.FAIL, exc.strerror or str(exc)
    writer.close()
    return Health.OK, ""


async def ssh_probe(transport: SshTransport, target: SshTarget, timeout: float) -> tuple[Health, str]:
    """Does a fresh SSH login with the pinned host key complete in time?"""
    try:
        await transport.check_reachable(target, timeout=timeout)
    except CommandTimeout:
        return Health.FAIL, f"ssh did not answer within {timeout:g} s"
    except HostKeyMismatch as exc:
        if not transport.known_hosts.keys_for(target.alias):
            # Not reached yet (a pair being adopted, many at once): no key to compare with is no verdict, and no
            # reason to alert that the GPU is failing.
            return Health.UNKNOWN, f"{target.alias} is not reached yet: no host key is pinned for it"
        return Health.FAIL, exc.message
    except DumontError as exc:
        return Health.FAIL, exc.message
    return Health.OK, ""


async def shared_probe(transport: SshTransport, target: SshTarget, timeout: float) -> tuple[Health, str]:
    """A login's worth of evidence without a login's handshake: ``true`` runs over the host's shared connection
    (a host that died closes it, one cut off leaves it silent), and its sshd greets a new connection with its
    banner (a listener stopped or gone does not, though sessions already open go on)."""
    greeted, ran = await asyncio.gather(banner_probe(target.host, target.port, timeout),
                                        _over_shared(transport, target, timeout))
    return greeted if greeted[0] != Health.OK else ran


async def _over_shared(transport: SshTransport, target: SshTarget, timeout: float) -> tuple[Health, str]:
    try:
        await transport.run(target, ["true"], timeout=timeout)
    except CommandTimeout:
        return Health.FAIL, f"ssh (over the open connection) did not answer within {timeout:g} s"
    except DumontError as exc:
        return Health.FAIL, exc.message
    return Health.OK, ""


async def agent_probe(ping: Callable[[float], Awaitable[None]], alias: str, timeout: float) -> tuple[Health, str]:
    """Does the host's agent answer a ping over its liveness channel in time?"""
    try:
        await ping(timeout)
    except CommandTimeout:
        return Health.FAIL, f"the agent on {alias} did not answer a ping within {timeout:g} s"
    except DumontError as exc:
        return Health.FAIL, exc.message
    return Health.OK, ""


async def banner_probe(host: str, port: int, timeout: float) -> tuple[Health, str]:
    """Does the SSH port greet a new connection with ``SSH-...`` in time (RFC 4253 lets a server send other lines
    first)? The key exchange and the login are left to the fresh-login probes."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                for _ in range(BANNER_LINES):
                    line = await reader.readline()
                    if not line:
                        return Health.FAIL, "the SSH port closed the connection without a greeting"
                    if line.startswith(b"SSH-"):
                        return Health.OK, ""
            finally:
                writer.close()
    except TimeoutError:
        return Health.FAIL, f"the SSH port sent no greeting within {timeout:g} s"
    except OSError as exc:
        return Health.FAIL, exc.strerror or str(exc)
    return Health.FAIL, f"the SSH port sent {BANNER_LINES} lines and no SSH greeting"


async def command_probe(transport: SshTransport, target: SshTarget, command: str, timeout: float) -> tuple[Health, str]:
    """Does the configured check command (e.g. ``nvidia-smi``) succeed on the host?"""
    try:
        result = await transport.run(target, ["sh", "-c", command], timeout=timeout, check=False)
    except CommandTimeout:
        return Health.FAIL, f"{command!r} did not finish within {timeout:g} s"
    except DumontError as exc:
        return Health.UNKNOWN, exc.message  # the ssh probe already judges reachability
    if result.returncode != 0:
        return Health.FAIL, f"{command!r} exited {result.returncode}"
    return Health.OK, ""


async def network_ok(targets: Sequence[tuple[str, int]], timeout: float) -> bool | None:
    """Is the controller's own network up? True if any target answers, False if none does, None if no targets."""
    if not targets:
        return None
    results = await asyncio.gather(*(tcp_probe(host, port, timeout) for host, port in targets))
    return any(health == Health.OK for health, _ in results)


def network_targets(config: Config) -> list[tuple[str, int]]:
    """Where the controller checks its own network: configured targets, else the provider APIs."""
    if config.health.network_check_targets:
        return [split_host_port(t) for t in config.health.network_check_targets]
    targets = []
    for url in (config.vast.api_url, config.gcp.api_endpoint):
        if url:
            parsed = urlparse(url)
            if parsed.hostname:
                targets.append((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)))
    return targets
