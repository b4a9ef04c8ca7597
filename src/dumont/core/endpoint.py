"""What a user needs to reach a pair's stable endpoint: an ssh_config snippet and the pair's known_hosts.

The snippet names the login of the machine the endpoint serves now (root on a Vast GPU, the standby's own user on
a GCP VM, which refuses root), so it is rewritten at every switch. The known_hosts trusts the pair's host CA for
the pair's alias and refuses the keys of former primaries, so what the user trusts never changes at a failover.
In a fleet with ``controller.endpoint_hosts``, the snippet names every controller's endpoint, tried in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dumont.config import PairConfig, split_host_port
from dumont.endpoint import fallthrough
from dumont.endpoint.sshconfig import host_alias, render_ssh_config, write_ssh_config
from dumont.transport.hostcert import authority_line, revoked_line
from dumont.transport.keys import public_key_body, read_public_key, write_private

if TYPE_CHECKING:
    from dumont.core.context import ControllerContext
    from dumont.core.model import HostRef
    from dumont.core.pair import PairRuntime


def listen_address(ctx: ControllerContext, pair: PairConfig) -> tuple[str, int]:
    """Where this controller serves the pair's endpoint: ``endpoint_listen``, on ``controller.endpoint_bind``'s
    host when it names one (each controller of a fleet binds its own)."""
    host, port = split_host_port(pair.endpoint_listen)
    return ctx.config.controller.endpoint_bind or host, port


def fleet_endpoints(ctx: ControllerContext, pair: PairConfig) -> list[tuple[str, int]]:
    """Every controller's endpoint of the pair, in the order the users' ssh tries them (none outside a fleet):
    this controller's own first, since it holds the pair (its endpoint holds and switches as the pair's
    operations need; the others follow the store a tick behind), then the rest as configured."""
    port = split_host_port(pair.endpoint_listen)[1]
    hosts = list(ctx.config.controller.endpoint_hosts)
    own = ctx.config.controller.endpoint_bind
    if own in hosts:
        hosts.remove(own)
        hosts.insert(0, own)
    return [(host, port) for host in hosts]


def publish_endpoint(ctx: ControllerContext, rt: PairRuntime) -> None:
    """(Re)write the pair's ``Host dumont-<pair>`` snippet and known_hosts for the primary it serves now."""
    host, port = rt.endpoint.address
    every = fleet_endpoints(ctx, rt.config)
    folder = ctx.layout.ssh_dir(rt.name)
    folder.mkdir(parents=True, exist_ok=True)
    known = folder / "known_hosts"
    ca = read_public_key(ctx.layout.pair_host_ca(rt.name))
    lines = [authority_line(host_alias(rt.name), ca), *(revoked_line(k) for k in revoked_keys(ctx, rt.name))]
    write_ssh_config(known, "".join(line + "\n" for line in lines))
    user = rt.primary.ssh_user if rt.primary else "root"
    proxy = None
    if len(every) > 1:
        (host, port), proxy = every[0], folder / "fallthrough.py"
        write_ssh_config(proxy, Path(fallthrough.__file__).read_text())
    write_ssh_config(folder / "config", render_ssh_config(rt.name, host, port, user, _user_identity(ctx), known,
                                                          fall_through=every, proxy=proxy))


def revoked_keys(ctx: ControllerContext, pair: str) -> list[str]:
    """The host keys refused for the pair's endpoint."""
    path = ctx.layout.revoked_host_keys(pair)
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def revoke_host(ctx: ControllerContext, rt: PairRuntime, ref: HostRef) -> None:
    """Refuse a former primary's key for the endpoint from now on: the certificate it holds is worth nothing."""
    key = ctx.hosts.host_key(ref)
    if key is None:
        return
    body = public_key_body(key)
    known = revoked_keys(ctx, rt.name)
    if body not in known:
        write_private(ctx.layout.revoked_host_keys(rt.name), "".join(k + "\n" for k in [*known, body]))


def _user_identity(ctx: ControllerContext) -> Path | None:
    """The private key next to ``user_keys_file`` (``key.pub`` -> ``key``), if there is one."""
    path = ctx.config.controller.user_keys_file
    if path is not None and path.suffix == ".pub" and path.with_suffix("").exists():
        return path.with_suffix("")
    return None
