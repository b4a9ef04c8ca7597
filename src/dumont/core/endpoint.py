"""What a user needs to reach a pair's stable endpoint: an ssh_config snippet and the pair's known host key.

The snippet names the login of the machine the endpoint serves now (root on a Vast GPU, the standby's own user on
a GCP VM, which refuses root), so it is rewritten at every switch; the host key never changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dumont.endpoint.sshconfig import known_hosts_line, render_ssh_config, write_ssh_config
from dumont.transport.keys import read_public_key

if TYPE_CHECKING:
    from dumont.core.context import ControllerContext
    from dumont.core.pair import PairRuntime


def publish_endpoint(ctx: ControllerContext, rt: PairRuntime) -> None:
    """(Re)write the pair's ``Host dumont-<pair>`` snippet and known_hosts for the primary it serves now."""
    host, port = rt.endpoint.address
    folder = ctx.layout.ssh_dir(rt.name)
    folder.mkdir(parents=True, exist_ok=True)
    known = folder / "known_hosts"
    write_ssh_config(known, known_hosts_line(rt.name, read_public_key(ctx.layout.pair_host_key(rt.name))) + "\n")
    user = rt.primary.ssh_user if rt.primary else "root"
    write_ssh_config(folder / "config", render_ssh_config(rt.name, host, port, user, _user_identity(ctx), known))


def _user_identity(ctx: ControllerContext) -> Path | None:
    """The private key next to ``user_keys_file`` (``key.pub`` -> ``key``), if there is one."""
    path = ctx.config.controller.user_keys_file
    if path is not None and path.suffix == ".pub" and path.with_suffix("").exists():
        return path.with_suffix("")
    return None
