"""What every part of the controller shares: config, store, SSH transport, providers, keys, the event sink."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dumont.config import Config
from dumont.core.bootstrap import HostReadiness, ready_host
from dumont.core.faults import InternalErrors
from dumont.core.layout import ControllerLayout
from dumont.core.model import HostRef
from dumont.errors import DumontError, HostUnreachable
from dumont.providers.base import GpuMarket, Instance, StandbyCloud
from dumont.replication.hostagent import HostAgent
from dumont.store.sqlite import Store
from dumont.transport.keys import KnownHosts, read_public_key
from dumont.transport.ssh import SshTarget, SshTransport, run_local

log = logging.getLogger("dumont.controller")

EventSink = Callable[[str | None, str, str, dict[str, Any]], None]


@dataclass
class ControllerContext:
    """The controller's shared parts; one per process."""

    config: Config
    layout: ControllerLayout
    store: Store
    transport: SshTransport
    known_hosts: KnownHosts
    gpu_market: GpuMarket
    standby_cloud: StandbyCloud
    clock: Callable[[], float] = time.time
    listeners: list[EventSink] = field(default_factory=list)
    _agents: dict[str, HostAgent] = field(default_factory=dict)
    _readiness: dict[str, HostReadiness] = field(default_factory=dict)
    internal_errors: InternalErrors = field(init=False)

    def __post_init__(self) -> None:
        self.internal_errors = InternalErrors(self._record_quietly)

    def event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any] | None = None) -> None:
        """Record an event (the one reason sentence) and tell the listeners (notifier, metrics, logs)."""
        payload = data or {}
        self.store.add_event(pair, kind, reason, payload)
        # The one log line of each transition; a state change names both ends (the reason says why).
        what = f"{kind} {payload['from']} -> {payload['to']}" if kind == "state" and "to" in payload else kind
        log.info("%s%s: %s", f"{pair}: " if pair else "", what, reason, extra={"pair": pair, "event": kind})
        for listener in list(self.listeners):
            try:
                listener(pair, kind, reason, payload)
            except Exception as exc:  # a broken listener (metrics, notifier) must not stop the one who reported
                self.internal_errors.report(f"event listener {getattr(listener, '__qualname__', listener)}", exc,
                                            pair)

    def _record_quietly(self, pair: str | None, kind: str, reason: str, data: dict[str, Any]) -> None:
        """An event for the store and the log only: listeners may be what failed."""
        self.store.add_event(pair, kind, reason, data)
        log.info("%s%s: %s", f"{pair}: " if pair else "", kind, reason, extra={"pair": pair, "event": kind})

    def agent(self, ref: HostRef) -> HostAgent:
        """The agent of ``ref`` (one channel per host, kept open), run by the Python the host was readied with."""
        agent = self._agents.get(ref.alias)
        target = SshTarget(ref.alias, ref.ssh_host, ref.ssh_port, ref.ssh_user)
        ready = self._readiness.get(ref.alias)
        python = ready.python if ready is not None else "python3"
        if agent is None or agent.target != target or agent.python != python:
            agent = HostAgent(self.transport, target, python=python)
            self._agents[ref.alias] = agent
        return agent

    async def ensure_ready(self, ref: HostRef) -> HostReadiness:
        """Ready a host for the agent once (find Python, install rsync...); later calls answer from memory."""
        ready = self._readiness.get(ref.alias)
        if ready is None:
            target = SshTarget(ref.alias, ref.ssh_host, ref.ssh_port, ref.ssh_user)
            ready = await ready_host(self.transport, target, timeout=self.config.controller.bootstrap_timeout_seconds)
            self._readiness[ref.alias] = ready
            installed = f"installed {', '.join(ready.installed)}" if ready.installed else "nothing to install"
            self.event(None, "host_readied", f"{ref.alias} is ready for Dumont ({installed}; Python "
                                             f"{ready.python_version} at {ready.python}, rsync at {ready.rsync})",
                       {"host": ref.alias, "installed": list(ready.installed), "python": ready.python,
                        "rsync": ready.rsync, "user": ready.user})
        return ready

    async def forget(self, ref: HostRef, *, still_ready: bool = False) -> None:
        """Close the agent channel and shared connection of a host we no longer use (or reach anew:
        ``still_ready`` keeps what readying found, for a host whose key or address changed but not its disk)."""
        if not still_ready:
            self._readiness.pop(ref.alias, None)
        agent = self._agents.pop(ref.alias, None)
        if agent is not None:
            await agent.close()
        await self.transport.forget_connection(SshTarget(ref.alias, ref.ssh_host, ref.ssh_port, ref.ssh_user))

    async def close(self) -> None:
        """Close every agent channel."""
        for agent in list(self._agents.values()):
            await agent.close()
        self._agents.clear()

    async def instance(self, ref: HostRef) -> Instance:
        """The provider's record of a host."""
        if ref.role == "gpu":
            return await self.gpu_market.get(ref.instance_id)
        return await self.standby_cloud.get(ref.instance_id)

    def controller_public_key(self) -> str:
        """The controller's public key (given to every host it creates)."""
        return read_public_key(self.layout.controller_key)

    def user_public_keys(self) -> list[str]:
        """The keys people log in with (given to every host so the endpoint works for them)."""
        path = self.config.controller.user_keys_file
        if path is None or not path.exists():
            return []
        return [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("ssh-")]


def alias_for(provider: str, instance_id: str) -> str:
    """An SSH alias for an instance (letters, digits, dots, dashes)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", f"{provider}-{instance_id}")
    return cleaned[:63]


def host_ref(instance: Instance, role: str) -> HostRef:
    """A HostRef for a provider instance that is reachable over SSH."""
    if not instance.ssh_host or not instance.ssh_port:
        raise HostUnreachable(f"{instance.provider} instance {instance.instance_id} has no SSH address yet "
                              f"(state {instance.raw_state})", hint="wait until it is running")
    return HostRef(instance.provider, instance.instance_id, instance.ssh_host, int(instance.ssh_port),
                   instance.ssh_user, role, alias_for(instance.provider, instance.instance_id))


def host_from_dict(data: dict[str, Any]) -> HostRef:
    """A HostRef from its stored form."""
    return HostRef(str(data["provider"]), str(data["instance_id"]), str(data["ssh_host"]), int(data["ssh_port"]),
                   str(data["ssh_user"]), str(data["role"]), str(data["alias"]))


async def scan_host_key(host: str, port: int, timeout: float) -> str:
    """The ed25519 host key a host presents (trust on first use, for a machine we just created)."""
    result = await run_local(["ssh-keyscan", "-T", str(max(1, int(timeout))), "-t", "ed25519", "-p", str(port), host],
                             timeout=timeout + 5, what=f"ssh-keyscan {host}:{port}")
    for line in result.text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "ssh-ed25519":
            return f"{parts[1]} {parts[2]}"
    raise HostUnreachable(f"{host}:{port} did not present an ed25519 host key", hint="is sshd running there?")


async def wait_for_ssh(ctx: ControllerContext, ref: HostRef, *, deadline: float) -> None:
    """Wait until the host accepts our key over SSH, pinning its host key on first contact."""
    last = "no attempt"
    while ctx.clock() < deadline:
        try:
            left = max(1.0, deadline - ctx.clock())
            if not ctx.known_hosts.keys_for(ref.alias):
                ctx.known_hosts.pin(ref.alias, await scan_host_key(ref.ssh_host, ref.ssh_port, min(10.0, left)))
            target = SshTarget(ref.alias, ref.ssh_host, ref.ssh_port, ref.ssh_user)
            await ctx.transport.check_reachable(target, timeout=min(15.0, left))
            return
        except DumontError as exc:
            last = exc.message
        await asyncio.sleep(min(1.0, max(0.0, deadline - ctx.clock())))  # the host is booting; poll, bounded
    raise HostUnreachable(f"{ref.alias} did not accept SSH before the deadline: {last}",
                          hint="the instance will be destroyed and the next offer tried")


async def present_pair_host_key(ctx: ControllerContext, ref: HostRef, pair: str) -> None:
    """Make the host present the pair's host key, and pin that key for it."""
    key_path = ctx.layout.pair_host_key(pair)
    public = read_public_key(key_path)
    if ctx.known_hosts.keys_for(ref.alias) == [" ".join(public.split()[:2])]:
        return
    # Both keys are trusted while sshd reloads, so a probe that lands in between sees no stranger.
    ctx.known_hosts.pin(ref.alias, public, keep_existing=True)
    await ctx.agent(ref).install_host_key(private_key=key_path.read_text(), public_key=public)
    target = SshTarget(ref.alias, ref.ssh_host, ref.ssh_port, ref.ssh_user)
    await ctx.forget(ref, still_ready=True)
    ctx.known_hosts.pin(ref.alias, public)
    loop_deadline = ctx.clock() + 20
    while True:
        try:
            await ctx.transport.check_reachable(target, timeout=10)
            return
        except DumontError:
            if ctx.clock() > loop_deadline:
                raise
        await asyncio.sleep(0.1)  # sshd re-executes itself on SIGHUP; bounded by the deadline above
