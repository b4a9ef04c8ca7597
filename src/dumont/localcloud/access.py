"""Reaching a running local cloud's hosts from outside: their addresses, pinned keys, and one-off passes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from dumont.errors import UsageError
from dumont.localcloud import control, layout
from dumont.replication.engine import PassReport, ReplicationPolicy, Replicator
from dumont.replication.hostagent import HostAgent
from dumont.replication.modes import DIRECT
from dumont.replication.pairing import pair_hosts
from dumont.transport.keys import KnownHosts, ensure_keypair
from dumont.transport.ssh import SshTarget, SshTransport

READY_TIMEOUT = 300.0


@dataclass(frozen=True)
class LocalHostRef:
    """A local host as a client needs it: where to reach it and which key it presents."""

    name: str
    target: SshTarget
    host_key: str


def local_hosts(state_dir: Path) -> dict[str, LocalHostRef]:
    """Every host of the running local cloud, by name."""
    rows = control.client(state_dir).get("/hosts")["hosts"]
    return {
        r["name"]: LocalHostRef(r["name"], SshTarget(r["name"], r["ssh_host"], r["ssh_port"], r["user"]),
                                r["host_public_key"])
        for r in rows
    }


async def ready_agent(transport: SshTransport, ref: LocalHostRef) -> HostAgent:
    """The agent of a local host, readied first (a host booted from a bare image lacks rsync, hides Python)."""
    from dumont.core.bootstrap import ready_host

    ready = await ready_host(transport, ref.target, timeout=READY_TIMEOUT)
    return HostAgent(transport, ref.target, python=ready.python)


def pick(hosts: dict[str, LocalHostRef], name: str, option: str) -> LocalHostRef:
    """The host called ``name``, or a usage error listing the known ones."""
    if name not in hosts:
        raise UsageError(f"{option} {name!r}: no such local host", hint=f"known hosts: {', '.join(sorted(hosts))}")
    return hosts[name]


@contextlib.asynccontextmanager
async def local_transport(state_dir: Path, refs: list[LocalHostRef]) -> AsyncIterator[SshTransport]:
    """An SSH transport that logs in with the local user key and pins the given hosts' keys."""
    known = KnownHosts(layout.known_hosts(state_dir))
    for ref in refs:
        known.pin(ref.name, ref.host_key)
    transport = SshTransport(identity=layout.user_key(state_dir), known_hosts=known)
    try:
        yield transport
    finally:
        await transport.close()


async def sync_once(state_dir: Path, primary: LocalHostRef, standby: LocalHostRef, pair: str,
                    policy: ReplicationPolicy) -> PassReport:
    """Run one pass between two local hosts (pairing them first in direct mode)."""
    async with local_transport(state_dir, [primary, standby]) as transport:
        source, target = await ready_agent(transport, primary), await ready_agent(transport, standby)
        try:
            epoch = (await source.info()).epoch
            if epoch == 0:
                epoch = await source.set_epoch(1)
            if policy.mode == DIRECT:
                pair_key = state_dir / "pairs" / pair / "pair_key"
                ensure_keypair(pair_key, f"dumont-pair-{pair}")
                await pair_hosts(pair=pair, epoch=epoch, primary=source, standby=target,
                                 standby_address=standby.target, standby_host_key=standby.host_key,
                                 pair_key=pair_key)
            replicator = Replicator(pair, source, target, policy, transport=transport,
                                    relay_dir=state_dir / "relay" / pair)
            return await replicator.run_pass()
        finally:
            await source.close()
            await target.close()
