"""``dumont local ...``: the embedded local cloud of real sshd hosts, and its fault controls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from dumont.cli.common import LINK_PROFILES, emit, json_option
from dumont.localcloud import control, layout

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The local cloud's directory (default: $DUMONT_LOCAL_STATE or ~/.local/state/dumont/local).",
)


def resolve_state_dir(state_dir: Path | None) -> Path:
    """The state dir given, or the default one."""
    return (state_dir or layout.default_state_dir()).expanduser().resolve()


@click.group("local")
def local_group() -> None:
    """The local cloud: real OpenSSH hosts on 127.0.0.1 standing in for Vast.ai and GCP machines.

    Nothing here needs an account, root or the internet. Fault controls (kill, stop, partition, heal) act on real
    processes, so detection and failover can be exercised for real.
    """


@local_group.command("up")
@click.option("--link", "link", type=click.Choice(LINK_PROFILES), default=None,
              help="Put every host behind a link (lan: none yet; wan: 180 ms, 200 Mbit/s; bad: 300 ms, 20 Mbit/s, "
                   "2 s stalls), changeable at run time with `dumont local link`.")
@state_dir_option
@json_option
def up(link: str | None, state_dir: Path | None, as_json: bool) -> None:
    """Start the local cloud (a second `up` on a running one changes nothing)."""
    from dumont.localcloud.ready import ensure_ready_config

    directory = resolve_state_dir(state_dir)
    ready, was_running = control.start(directory, link)
    config = asyncio.run(ensure_ready_config(directory, ready))
    hosts = control.client(directory).get("/hosts")["hosts"]
    data = {"state_dir": str(directory), "already_running": was_running, "control_url": ready["control_url"],
            "pid": ready["pid"], "user_key": str(layout.user_key(directory)), "hosts": hosts, "config": str(config),
            **{k: v for k, v in ready.items() if k.endswith("_url")}}

    def human(d: dict[str, Any]) -> str:
        head = "local cloud already running" if d["already_running"] else "local cloud started"
        lines = [f"{head} in {d['state_dir']} (daemon pid {d['pid']})"]
        lines += [f"  {h['name']:<14} {h['state']:<12} ssh -i {d['user_key']} -p {h['ssh_port']} "
                  f"{h['user']}@{h['ssh_host']}" for h in d["hosts"]]
        lines.append(f"config protecting one pair: {d['config']}  (run it: dumont run --config {d['config']})")
        return "\n".join(lines)

    emit(data, as_json=as_json, human=human)


@local_group.command("down")
@state_dir_option
@json_option
def down(state_dir: Path | None, as_json: bool) -> None:
    """Stop the local cloud and every process of its hosts (their files stay)."""
    directory = resolve_state_dir(state_dir)
    killed = control.stop(directory)
    emit({"state_dir": str(directory), "stopped": True, "killed_pids": sorted(killed)}, as_json=as_json,
         human=lambda d: f"local cloud in {d['state_dir']} stopped")


@local_group.command("hosts")
@state_dir_option
@json_option
def hosts(state_dir: Path | None, as_json: bool) -> None:
    """List every host: name, role, provider, SSH port, pids, workspace and state."""
    listing = control.client(resolve_state_dir(state_dir)).get("/hosts")["hosts"]

    def human(rows: list[dict[str, Any]]) -> str:
        lines = [f"{'NAME':<12}{'ROLE':<6}{'PROVIDER':<10}{'STATE':<13}{'PORT':<7}{'PIDS':<8}WORKSPACE"]
        lines += [f"{h['name']:<12}{h['role']:<6}{h['provider']:<10}{h['state']:<13}{h['ssh_port']:<7}"
                  f"{len(h['pids']):<8}{h['workspace']}" for h in rows]
        return "\n".join(lines)

    emit(listing, as_json=as_json, human=human)


def _host_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A host's name as the control API takes it: never a path (``vast-1/../gcp-x`` once killed the standby)."""
    from dumont.errors import UsageError
    from dumont.transport.keys import check_alias

    try:
        return check_alias(value)
    except UsageError as exc:
        raise click.BadParameter(f"{exc.message}; {exc.hint}") from None


@local_group.command("add")
@click.argument("name", callback=_host_name)
@click.option("--role", default="", help="A free-form label shown in listings (gpu, cpu, ...).")
@state_dir_option
@json_option
def add(name: str, role: str, state_dir: Path | None, as_json: bool) -> None:
    """Create and start a new host that accepts the local user key."""
    host = control.client(resolve_state_dir(state_dir)).post("/hosts", {"name": name, "role": role})
    emit(host, as_json=as_json, human=lambda h: f"{h['name']} running on port {h['ssh_port']}")


@local_group.command("link")
@click.argument("host", callback=_host_name)
@click.option("--profile", type=click.Choice(LINK_PROFILES), default=None, help="Start from a named link.")
@click.option("--rtt", default=None, help="Round-trip time, like 180ms or 1s.")
@click.option("--rate", default=None, help="Bandwidth, like 200mbit or 25MB (bytes per second); 0: no limit.")
@click.option("--stall", default=None, help="Length of the stalls, like 2s (0: none).")
@click.option("--stall-every", default=None, help="About how often a stall comes, like 30s.")
@click.option("--loss", type=click.FloatRange(0, 0.5), default=None,
              help="Fraction of chunks that arrive one retransmission timeout late (TCP's view of packet loss).")
@click.option("--blackhole/--heal", "blackhole", default=None,
              help="Let nothing cross (no reset: connections hang), or let it cross again.")
@state_dir_option
@json_option
def link_command(host: str, profile: str | None, rtt: str | None, rate: str | None, stall: str | None,
                 stall_every: str | None, loss: float | None, blackhole: bool | None, state_dir: Path | None,
                 as_json: bool) -> None:
    """Change the link in front of HOST at once (open connections too); what is not given stays as it is.

    Needs a local cloud started with `dumont local up --link PROFILE`.
    """
    from dataclasses import replace

    from dumont.localcloud.link import parse_duration, parse_rate, spec_from_dict, spec_to_dict
    from dumont.localcloud.link import profile as named_profile

    client = control.client(resolve_state_dir(state_dir))
    current = next((h for h in client.get("/hosts")["hosts"] if h["name"] == host), None)
    if current is None:
        raise click.BadParameter(f"no local host {host!r}", param_hint="HOST")
    spec = named_profile(profile) if profile else spec_from_dict(current.get("link") or {})
    changes: dict[str, Any] = {}
    if rtt is not None:
        changes["rtt"] = parse_duration(rtt, "--rtt")
    if rate is not None:
        changes["rate"] = None if rate.strip() == "0" else parse_rate(rate)
    if stall is not None:
        changes["stall"] = parse_duration(stall, "--stall")
    if stall_every is not None:
        changes["stall_every"] = parse_duration(stall_every, "--stall-every")
        if changes["stall_every"] <= 0:
            raise click.BadParameter(f"{stall_every!r} is no interval; give a duration above 0, like 30s",
                                     param_hint="--stall-every")
    if loss is not None:
        changes["loss"] = loss
    if blackhole is not None:
        changes["blackhole"] = blackhole
    spec = replace(spec, **changes)
    result = client.post(f"/hosts/{host}/link", spec_to_dict(spec))
    emit(result, as_json=as_json, human=lambda h: f"{h['name']}: {spec_from_dict(h['link']).describe()}")


def _fault_command(action: str, summary: str) -> click.Command:
    @click.command(action, help=summary)
    @click.argument("host", callback=_host_name)
    @state_dir_option
    @json_option
    def command(host: str, state_dir: Path | None, as_json: bool) -> None:
        result = control.client(resolve_state_dir(state_dir)).post(f"/hosts/{host}/{action}")
        emit(result, as_json=as_json, human=lambda h: f"{h.get('name', host)}: {h.get('state', action)}")

    return command


for _action, _summary in (
    ("kill", "Hard-stop HOST: sshd and every process of it die at once (the machine lost power)."),
    ("stop", "Stop HOST gracefully (SIGTERM, then SIGKILL); its files stay."),
    ("start", "Start a stopped or killed HOST again, with its files as they were."),
    ("partition", "Make HOST stop answering without dying (its processes are frozen)."),
    ("heal", "Let a partitioned HOST answer again."),
    ("outbid", "Vast.ai: a higher bid takes HOST (an interruptible instance): stopped, data kept."),
    ("preempt", "GCP: the provider takes back HOST (a spot VM): TERMINATED, disk kept."),
):
    local_group.add_command(_fault_command(_action, _summary))
