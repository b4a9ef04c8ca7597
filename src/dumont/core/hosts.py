"""The controller's machines over OpenSSH and the host agent: the product's :class:`~dumont.core.ports.HostAccess`.

One agent channel per host, kept open; host keys pinned per alias in the controller's own known_hosts (trust on
first use only for a machine just created, through ``ssh-keyscan``); every host readied once (``bootstrap``) and
its agent started with the Python found there; each host's own key certified by the pair's host CA, so the
endpoint's identity never changes and no private key of the pair leaves the controller (``transport/hostcert``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dumont.core import probes
from dumont.core.bootstrap import HostReadiness, ready_host
from dumont.core.lag import LoopLag, discount
from dumont.core.layout import ControllerLayout
from dumont.core.model import Health, HostRef, ProbeResult
from dumont.core.ports import Clock, Sleep
from dumont.endpoint.sshconfig import host_alias
from dumont.errors import DumontError, HostUnreachable
from dumont.replication.engine import PassReport, ReplicationPolicy, Replicator
from dumont.replication.hostagent import HostAgent
from dumont.replication.manifest import Manifest
from dumont.replication.pairing import pair_hosts
from dumont.transport.hostcert import VALID_SECONDS, certificate_body, sign_host_key
from dumont.transport.keys import KnownHosts
from dumont.transport.ssh import SshTarget, SshTransport, run_local

log = logging.getLogger("dumont.controller")

def target_of(ref: HostRef) -> SshTarget:
    """How to reach ``ref`` over SSH."""
    return SshTarget(ref.alias, ref.ssh_host, ref.ssh_port, ref.ssh_user)


class SshHosts:
    """Every host of the controller, reached over one shared SSH transport."""

    def __init__(self, transport: SshTransport, known_hosts: KnownHosts, layout: ControllerLayout, *,
                 bootstrap_timeout: float, clock: Clock, sleep: Sleep = asyncio.sleep,
                 fresh_login_every: int = 1, lag: LoopLag | None = None) -> None:
        self.transport = transport
        self.lag = lag or LoopLag()  # a probe timed out while this process stalled is no verdict (core/lag.py)
        self.fresh_login_every = fresh_login_every
        self._since_fresh: dict[str, int] = {}  # alias -> good probes over the shared connection since a login
        self.known_hosts = known_hosts
        self.layout = layout
        self.bootstrap_timeout = bootstrap_timeout
        self.clock, self.sleep = clock, sleep
        self._agents: dict[str, HostAgent] = {}
        self._readiness: dict[str, HostReadiness] = {}
        self._certified: dict[str, tuple[float, str]] = {}  # alias -> (when its certificate was issued, pair)
        self._watchers: dict[str, HostAgent] = {}  # a second agent channel per host, for blocking watches
        # A third, for liveness: a ping over it starts no process on either end, where a probe over the shared
        # connection starts an ssh client here and a shell there (100 hosts a second in a fleet).
        self._pingers: dict[str, HostAgent] = {}
        self._opening: dict[str, asyncio.Task[None]] = {}
        # One replicator per pair and direction, kept across passes: it holds the standby's newest manifest and
        # the last diff, so an unchanged pass fetches and compares nothing (a million entries cost seconds).
        self._replicators: dict[tuple[str, str, str], Replicator] = {}

    # ------------------------------------------------------------------ channels

    def agent(self, ref: HostRef) -> HostAgent:
        """The agent of ``ref`` (one channel per host, kept open), run by the Python the host was readied with."""
        agent = self._agents.get(ref.alias)
        ready = self._readiness.get(ref.alias)
        python = ready.python if ready is not None else "python3"
        if agent is None or agent.target != target_of(ref) or agent.python != python:
            agent = HostAgent(self.transport, target_of(ref), python=python)
            self._agents[ref.alias] = agent
        return agent

    async def forget(self, ref: HostRef, *, still_ready: bool = False) -> None:
        """Close the agent channel and shared connection of a host (``still_ready`` keeps what readying found)."""
        if not still_ready:
            self._readiness.pop(ref.alias, None)
        for channels in (self._agents, self._watchers, self._pingers):
            agent = channels.pop(ref.alias, None)
            if agent is not None:
                await agent.close()
        self._replicators = {k: r for k, r in self._replicators.items() if ref.alias not in k[1:]}
        await self.transport.forget_connection(target_of(ref))

    async def close(self) -> None:
        """Close every agent channel."""
        for task in self._opening.values():
            task.cancel()
        await asyncio.gather(*self._opening.values(), return_exceptions=True)
        self._opening.clear()
        for agent in [*self._agents.values(), *self._watchers.values(), *self._pingers.values()]:
            await agent.close()
        self._agents.clear()
        self._watchers.clear()
        self._pingers.clear()
        self._replicators.clear()
        await self.lag.stop()

    # ------------------------------------------------------------------ reaching and readying

    async def reach(self, ref: HostRef, *, deadline: float) -> None:
        """Wait until the host accepts our key over SSH, pinning its host key on first contact."""
        last = "no attempt"
        while self.clock() < deadline:
            try:
                left = max(1.0, deadline - self.clock())
                if not self.known_hosts.keys_for(ref.alias):
                    self.known_hosts.pin(ref.alias, await scan_host_key(ref.ssh_host, ref.ssh_port, min(10.0, left)))
                await self.transport.check_reachable(target_of(ref), timeout=min(15.0, left))
                return
            except DumontError as exc:
                last = exc.message
            await self.sleep(min(1.0, max(0.0, deadline - self.clock())))  # the host is booting; poll, bounded
        raise HostUnreachable(f"{ref.alias} did not accept SSH before the deadline: {last}",
                              hint="the instance will be destroyed and the next offer tried")

    async def ready(self, ref: HostRef) -> HostReadiness:
        """Ready a host for the agent once (find Python, install rsync...); later calls answer from memory."""
        ready = self._readiness.get(ref.alias)
        if ready is not None:
            return dataclasses.replace(ready, fresh=False)
        ready = await ready_host(self.transport, target_of(ref), timeout=self.bootstrap_timeout)
        self._readiness[ref.alias] = ready
        return ready

    def host_key(self, ref: HostRef) -> str | None:
        """The host's own key, as pinned at first contact."""
        keys = self.known_hosts.keys_for(ref.alias)
        return keys[0] if keys else None

    async def certify_host(self, ref: HostRef, pair: str) -> None:
        """Make the host present a certificate of its own key for the pair's endpoint (renewed at half-life)."""
        issued = self._certified.get(ref.alias)
        if issued is not None and issued[1] == pair and self.clock() - issued[0] < VALID_SECONDS / 2:
            return
        own = self.host_key(ref)
        if own is None:
            raise DumontError(f"{ref.alias} has no pinned host key to certify", hint="reach the host first")
        cert = await sign_host_key(self.layout.pair_host_ca(pair), own, identity=f"{ref.alias} for {pair}",
                                   principal=host_alias(pair))
        await self.agent(ref).install_host_certificate(cert)
        deadline = self.clock() + 20
        while certificate_body(cert) not in await scan_host_certificates(ref.ssh_host, ref.ssh_port, 10):
            if self.clock() > deadline:
                raise DumontError(f"{ref.alias} does not present its new host certificate after 20 s",
                                  hint="check that its sshd reads HostCertificate from its config (sshd -T)")
            await self.sleep(0.1)  # sshd re-executes itself on SIGHUP; bounded by the deadline above
        self._certified[ref.alias] = (self.clock(), pair)

    async def probe(self, ref: HostRef, *, timeout: float, command: str | None) -> tuple[ProbeResult, ...]:
        """TCP, an SSH round trip and the optional command, concurrently; never raises.

        The round trip is a fresh login every ``fresh_login_every`` probes of a host, and after any failure until
        a login succeeds again (so a host that refuses logins, or presents another key, gathers its strikes in a
        row); in between it runs over the host's shared connection, without a handshake: a fleet's controller
        does not pay a login for every host every tick."""
        since = self._since_fresh.get(ref.alias)
        fresh = since is None or since + 1 >= self.fresh_login_every
        self.lag.start()
        started = self.lag.clock()
        ping = None if fresh else self._ping_of(ref)
        results = await probes.probe_ssh(ref, transport=self.transport, timeout=timeout, command=command,
                                         fresh=fresh, ping=ping)
        results = discount(results, self.lag.worst_since(started), timeout)
        if any(r.health != Health.OK for r in results if r.name in ("tcp", "ssh")):
            self._since_fresh.pop(ref.alias, None)
        else:
            self._since_fresh[ref.alias] = 0 if fresh else (since or 0) + 1
        return results

    def _ping_of(self, ref: HostRef) -> Callable[[float], Awaitable[None]] | None:
        """The host's liveness channel's ping when that channel is up; else None (the probe runs over the shared
        connection this time) and the channel is opened in the background."""
        pinger = self._pingers.get(ref.alias)
        ready = self._readiness.get(ref.alias)
        python = ready.python if ready is not None else "python3"
        if pinger is None or pinger.target != target_of(ref) or pinger.python != python:
            pinger = self._pingers[ref.alias] = HostAgent(self.transport, target_of(ref), python=python)
        if pinger.is_open:
            return lambda timeout: pinger.ping(timeout=timeout)
        opening = self._opening.get(ref.alias)
        if opening is None or opening.done():
            self._opening[ref.alias] = asyncio.get_running_loop().create_task(self._open(pinger))
        return None

    async def _open(self, pinger: HostAgent) -> None:
        try:
            await pinger.ping(timeout=pinger.start_timeout)
        except DumontError as exc:
            log.debug("%s: the liveness channel did not open (%s); probes go over the shared connection",
                      pinger.name, exc)
        except Exception:  # a bug here must not surface as a lost task's traceback: probes go on without it
            log.exception("%s: opening the liveness channel failed unexpectedly", pinger.name)

    # ------------------------------------------------------------------ replication

    async def pair(self, pair: str, epoch: int, source: HostRef, target: HostRef) -> None:
        """Direct mode for ``source`` -> ``target`` at ``epoch``."""
        await self.agent(source).set_epoch(epoch)
        await pair_hosts(pair=pair, epoch=epoch, primary=self.agent(source), standby=self.agent(target),
                         standby_address=SshTarget("dumont-standby", target.ssh_host, target.ssh_port,
                                                   target.ssh_user),
                         standby_host_key=self.known_hosts.keys_for(target.alias)[0],
                         pair_key=self.layout.pair_key(pair))

    async def run_pass(self, pair: str, source: HostRef, target: HostRef, policy: ReplicationPolicy,
                       progress: Callable[[int, int], None] | None = None) -> PassReport:
        """One replication pass with the pair's settings."""
        key = (pair, source.alias, target.alias)
        primary, standby = self.agent(source), self.agent(target)
        replicator = self._replicators.get(key)
        if replicator is None or replicator.primary is not primary or replicator.standby is not standby:
            replicator = Replicator(pair, primary, standby, policy, transport=self.transport,
                                    relay_dir=self.layout.relay_dir(pair), clock=self.clock)
            self._replicators[key] = replicator
        replicator.policy, replicator.on_progress = policy, progress
        return await replicator.run_pass()

    async def take_over(self, pair: str, standby: HostRef, new_epoch: int) -> dict[str, Any]:
        """Fence the former primary and promote the standby in one agent call; the epoch moves last."""
        return await self.agent(standby).take_over(pair=pair, epoch=new_epoch)

    async def promote(self, ref: HostRef, *, epoch: int, mode: str) -> dict[str, Any]:
        """Make the newest snapshot the live workspace."""
        return await self.agent(ref).promote(epoch=epoch, mode=mode)

    async def snapshot_manifest(self, ref: HostRef, seq: int) -> Manifest:
        """The manifest of snapshot ``seq``."""
        return await self.agent(ref).manifest(seq)

    async def verify_promoted(self, ref: HostRef, manifest: Manifest) -> bool:
        """Whether the promoted workspace matches ``manifest``."""
        return await self.agent(ref).verify_promoted(manifest)

    async def set_epoch(self, ref: HostRef, epoch: int) -> int:
        """Raise the host's epoch."""
        return await self.agent(ref).set_epoch(epoch)

    async def salvage_signature(self, ref: HostRef, folder: str) -> tuple[int, int, int]:
        """How much a salvage folder holds, and its newest change."""
        return await self.agent(ref).salvage_signature(folder)

    async def salvage_sort(self, ref: HostRef, folder: str) -> list[dict[str, Any]]:
        """Keep only the news in a salvage folder."""
        return await self.agent(ref).salvage_sort(folder)

    async def watch(self, ref: HostRef, *, timeout: float) -> dict[str, Any]:
        """Wait for a change in the host's workspace, on a channel of its own (passes never wait behind it)."""
        agent = self._watchers.get(ref.alias)
        ready = self._readiness.get(ref.alias)
        python = ready.python if ready is not None else "python3"
        if agent is None or agent.target != target_of(ref) or agent.python != python:
            if agent is not None:
                await agent.close()
            agent = self._watchers[ref.alias] = HostAgent(self.transport, target_of(ref), python=python)
        return await agent.watch(timeout=timeout)

    async def scrub(self, ref: HostRef, *, budget_bytes: int) -> dict[str, Any]:
        """Scrub the host's stored copies, a budget of bytes at a time."""
        return await self.agent(ref).scrub(budget_bytes=budget_bytes)

    async def epoch(self, ref: HostRef) -> int:
        """The host's epoch."""
        return (await self.agent(ref).info()).epoch

    async def retire_workspace(self, ref: HostRef, *, epoch: int) -> None:
        """Move a former primary's workspace aside."""
        await self.agent(ref).retire_workspace(epoch=epoch)

    async def disk(self, ref: HostRef) -> tuple[int, int]:
        """Free and total bytes of the host's data disk."""
        info = await self.agent(ref).info()
        return info.free_bytes, info.total_bytes


async def scan_host_certificates(host: str, port: int, timeout: float) -> set[str]:
    """The host certificates (``"<type> <base64>"``) a host's sshd presents; empty when it presents none."""
    result = await run_local(["ssh-keyscan", "-c", "-T", str(max(1, int(timeout))), "-p", str(port), host],
                             timeout=timeout + 5, what=f"ssh-keyscan -c {host}:{port}")
    return {certificate_body(line) for line in result.text.splitlines() if "-cert-v01@openssh.com " in line}


async def scan_host_key(host: str, port: int, timeout: float) -> str:
    """The ed25519 host key a host presents (trust on first use, for a machine we just created)."""
    result = await run_local(["ssh-keyscan", "-T", str(max(1, int(timeout))), "-t", "ed25519", "-p", str(port), host],
                             timeout=timeout + 5, what=f"ssh-keyscan {host}:{port}")
    for line in result.text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "ssh-ed25519":
            return f"{parts[1]} {parts[2]}"
    raise HostUnreachable(f"{host}:{port} did not present an ed25519 host key", hint="is sshd running there?")
