"""What every part of the controller shares: config, its ports (store, hosts, providers, clock), the event sink."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dumont.config import Config, PairConfig
from dumont.core.bootstrap import HostReadiness
from dumont.core.faults import InternalErrors
from dumont.core.layout import ControllerLayout
from dumont.core.model import HostRef
from dumont.core.ports import Clock, HostAccess, NetworkCheck, Sleep, StateStore
from dumont.errors import DumontError, HostUnreachable
from dumont.providers.base import GpuMarket, Instance, StandbyCloud
from dumont.transport.keys import read_public_key

log = logging.getLogger("dumont.controller")

EventSink = Callable[[str | None, str, str, dict[str, Any]], None]


@dataclass
class ControllerContext:
    """The controller's shared parts, all behind ports; one per process."""

    config: Config
    layout: ControllerLayout
    store: StateStore
    hosts: HostAccess
    markets: dict[str, GpuMarket]  # the GPU markets opened, by provider name
    clouds: dict[str, StandbyCloud]  # the standby clouds opened, by provider name
    clock: Clock = time.time
    sleep: Sleep = asyncio.sleep
    network: NetworkCheck | None = None  # the controller's own network (None: the real check of its targets)
    listeners: list[EventSink] = field(default_factory=list)
    controller_id: str = ""  # this controller's name in a fleet (its leases, the events it writes)
    # Whether this controller may act on a pair (it holds the pair's lease); None: it acts on every pair it has.
    acting: Callable[[str], bool] | None = None
    internal_errors: InternalErrors = field(init=False)

    def __post_init__(self) -> None:
        self.internal_errors = InternalErrors(self._record_quietly)

    def event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any] | None = None) -> None:
        """Record an event (the one reason sentence) and tell the listeners (notifier, metrics, logs)."""
        payload = data or {}
        if pair is not None and self.acting is not None and not self.acting(pair):
            # Work still winding down after the lease was lost: the pair's history is its new owner's now.
            log.warning("%s: %s not recorded: this controller no longer holds the pair's lease (%s)", pair, kind,
                        reason)
            return
        self.store.add_event(pair, kind, reason, payload, controller=self.controller_id)
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
        self.store.add_event(pair, kind, reason, data, controller=self.controller_id)
        log.info("%s%s: %s", f"{pair}: " if pair else "", kind, reason, extra={"pair": pair, "event": kind})

    async def ensure_ready(self, ref: HostRef) -> HostReadiness:
        """Ready a host for the agent (once; said in a ``host_readied`` event the first time)."""
        ready = await self.hosts.ready(ref)
        if ready.fresh:
            installed = f"installed {', '.join(ready.installed)}" if ready.installed else "nothing to install"
            self.event(None, "host_readied", f"{ref.alias} is ready for Dumont ({installed}; Python "
                                             f"{ready.python_version} at {ready.python}, rsync at {ready.rsync})",
                       {"host": ref.alias, "installed": list(ready.installed), "python": ready.python,
                        "rsync": ready.rsync, "user": ready.user})
        return ready

    async def network_ok(self) -> bool | None:
        """Whether the controller's own network is up (None: nothing to check)."""
        if self.network is not None:
            return await self.network()
        from dumont.core.probes import network_ok, network_targets

        return await network_ok(network_targets(self.config), self.config.health.probe_timeout_seconds)

    def market(self, name: str) -> GpuMarket:
        """The GPU market called ``name`` (opened at start-up for the markets and primaries of the config)."""
        if name not in self.markets:
            raise DumontError(f"no GPU market {name!r} is open", hint=f"open ones: {', '.join(self.markets)}")
        return self.markets[name]

    def cloud(self, name: str) -> StandbyCloud:
        """The standby cloud called ``name``."""
        if name not in self.clouds:
            raise DumontError(f"no standby cloud {name!r} is open", hint=f"open ones: {', '.join(self.clouds)}")
        return self.clouds[name]

    def standby_cloud_of(self, pair: PairConfig) -> StandbyCloud:
        """Where the pair's standby VMs are created."""
        return self.cloud(pair.standby.provider)

    async def instance(self, ref: HostRef) -> Instance:
        """The record of a host, from the provider it came from."""
        if ref.provider in self.markets:
            return await self.markets[ref.provider].get(ref.instance_id)
        return await self.cloud(ref.provider).get(ref.instance_id)

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
