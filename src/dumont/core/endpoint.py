"""What a user needs to reach a pair's stable endpoint: an ssh_config snippet and the pair's known_hosts.

The snippet names the login of the machine the endpoint serves now (root on a Vast GPU, the standby's own user on
a GCP VM, which refuses root), so it is rewritten at every switch. The known_hosts trusts the pair's host CA for
the pair's alias and refuses the keys of former primaries, so what the user trusts never changes at a failover.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dumont.endpoint.sshconfig import host_alias, render_ssh_config, write_ssh_config
from dumont.transport.hostcert import authority_line, revoked_line
from dumont.transport.keys import public_key_body, read_public_key, write_private

if TYPE_CHECKING:
    from dumont.core.context import ControllerContext
    from dumont.core.model import HostRef
    from dumont.core.pair import PairRuntime


def publish_endpoint(ctx: ControllerContext, rt: PairRuntime) -> None:
    """(Re)write the pair's ``Host dumont-<pair>`` snippet and known_hosts for the primary it serves now."""
    host, port = rt.endpoint.address
    folder = ctx.layout.ssh_dir(rt.name)
    folder.mkdir(parents=True, exist_ok=True)
    known = folder / "known_hosts"
    ca = read_public_key(ctx.layout.pair_host_ca(rt.name))
    lines = [authority_line(host_alias(rt.name), ca), *(revoked_line(k) for k in revoked_keys(ctx, rt.name))]
    write_ssh_config(known, "".join(line + "\n" for line in lines))
    user = rt.primary.ssh_user if rt.primary else "root"
    write_ssh_config(folder / "config", render_ssh_config(rt.name, host, port, user, _user_identity(ctx), known))


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
