"""``dumont endpoint serve|status|stop``: the stable SSH endpoint's own process."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import click

from dumont.cli.common import emit, json_option

dir_option = click.option(
    "--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="The endpoint directory: its control socket, routes.json, lock and log (created 0700).",
)


@click.group("endpoint")
def endpoint_group() -> None:
    """The stable SSH endpoint's own process, which keeps users' sessions through controller restarts."""


@endpoint_group.command("serve")
@dir_option
@click.option("--connect-timeout", type=float, default=5.0, show_default=True,
              help="Seconds to reach a primary before a user's connection is closed.")
def serve_command(root: Path, connect_timeout: float) -> None:
    """Run the endpoint process in the foreground until SIGTERM or Ctrl-C (systemd runs it like this)."""
    from dumont.endpoint.daemon import serve_endpoint

    # Its log is its transitions, one line each at INFO: shown without -v.
    logging.getLogger("dumont").setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    asyncio.run(serve_endpoint(root.absolute(), connect_timeout=connect_timeout))


@endpoint_group.command("status")
@dir_option
@json_option
def status_command(root: Path, as_json: bool) -> None:
    """Show every pair the endpoint serves, where it forwards, and whether a controller is heard."""
    from dumont.endpoint.control import request
    from dumont.endpoint.layout import EndpointLayout

    data = asyncio.run(request(EndpointLayout(root).control_socket, {"op": "status"}, what=f"endpoint in {root}"))
    data.pop("ok", None)
    emit(data, as_json=as_json, human=_human_status)


@endpoint_group.command("stop")
@dir_option
def stop_command(root: Path) -> None:
    """Stop the endpoint process (every session through it ends); its routes stay saved for the next start."""
    from dumont.endpoint.launch import stop_endpoint_daemon

    pid = asyncio.run(stop_endpoint_daemon(root))
    click.echo(f"stopped endpoint process {pid}" if pid is not None else f"no endpoint process serves {root}")


def _human_status(data: dict[str, Any]) -> str:
    up = time.time() - float(data["started_at"])
    lines = [f"endpoint process {data['pid']} serving {data['dir']} for {up:.0f} s", data["summary"]]
    for name, pair in sorted(data["pairs"].items()):
        lines.append(f"{name}: {_human_pair(pair)}")
        if pair["reason"]:
            lines.append(f"  {pair['reason']}")
    if not data["pairs"]:
        lines.append("no pairs served")
    return "\n".join(lines)


def _human_pair(pair: dict[str, Any]) -> str:
    if not pair["listening"]:
        return f"not listening on {pair['listen']}: {pair['error']}"
    host, port = pair["address"]
    target = f"{pair['target'][0]}:{pair['target'][1]}" if pair["target"] else "nothing (connections wait)"
    stats = pair["stats"]
    return (f"{host}:{port} -> {target}, epoch {pair['epoch']}{' (held)' if pair['held'] else ''}; "
            f"{stats['active']} active, {stats['parked']} parked, {stats['accepted']} accepted")
