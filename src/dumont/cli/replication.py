"""``dumont sync`` and ``dumont verify`` between hosts of the local cloud."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dumont.cli.common import emit, json_option
from dumont.cli.local import resolve_state_dir, state_dir_option
from dumont.errors import IntegrityError, UsageError
from dumont.replication.modes import DIRECT, RELAY

if TYPE_CHECKING:
    from dumont.localcloud.access import LocalHostRef
    from dumont.replication.engine import PassReport


def describe_pass(report: PassReport) -> str:
    """One human paragraph about a pass."""
    from dumont.replication.guards import human_bytes

    if not report.copied:
        head = f"pass {report.seq}: no change; snapshot {report.snapshot_seq} is current"
    else:
        head = (f"pass {report.seq}: snapshot {report.snapshot_seq} committed, {report.files_copied} file(s) "
                f"copied, {report.files_deleted} deleted, {human_bytes(report.bytes_sent)} sent")
    lines = [f"{head} ({report.seconds:.2f} s, epoch {report.epoch}, {report.mode} mode)",
             f"  scanned {report.files_scanned} files, {human_bytes(report.bytes_scanned)}"]
    if report.deferred:
        lines.append(f"  {len(report.deferred)} file(s) were changing and keep their previous version until the "
                     "next pass")
    return "\n".join(lines)


@click.command("sync")
@click.option("--from", "source", default=None, metavar="HOST",
              help="With --to: run one pass from this local host now, without a controller.")
@click.option("--to", "standby", default=None, metavar="HOST", help="The standby that receives the snapshot.")
@click.option("--mode", type=click.Choice([DIRECT, RELAY]), default=DIRECT, show_default=True,
              help="direct: the primary pushes with the pair key; relay: this machine pulls, then pushes.")
@click.option("--pair", default=None, help="The pair (its key, or which controller pair to sync).")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True, help="Snapshots to keep.")
@click.option("--allow-empty-source", is_flag=True, help="Let an empty source replace a populated standby.")
@click.option("--allow-mass-delete", is_flag=True, help="Let a pass delete more than half the standby's files.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Without --from/--to: the running controller's config (default: $DUMONT_CONFIG).")
@state_dir_option
@json_option
def sync_command(source: str | None, standby: str | None, mode: str, pair: str | None, keep: int,
                 allow_empty_source: bool, allow_mass_delete: bool, config_path: Path | None, state_dir: Path | None,
                 as_json: bool) -> None:
    """Ask the running controller for a pass now, or (--from/--to) run one pass between two local hosts."""
    if source is None and standby is None:
        from dumont.cli.controller_cmd import request_sync

        request_sync(config_path, pair, as_json)
        return
    if source is None or standby is None:
        raise UsageError("--from and --to go together", hint="give both, or neither to ask the controller")
    from dumont.localcloud.access import local_hosts, pick, sync_once
    from dumont.replication.engine import ReplicationPolicy
    from dumont.replication.guards import GuardPolicy

    directory = resolve_state_dir(state_dir)
    hosts = local_hosts(directory)
    primary, target = pick(hosts, source, "--from"), pick(hosts, standby, "--to")
    if primary.name == target.name:
        raise UsageError(f"--from and --to are both {source!r}", hint="a host cannot be its own standby")
    policy = ReplicationPolicy(mode=mode, keep_snapshots=keep, guards=GuardPolicy(
        allow_empty_source=allow_empty_source, allow_mass_delete=allow_mass_delete))
    report = asyncio.run(sync_once(directory, primary, target, pair or "local", policy))
    emit(report.as_record(), as_json=as_json, human=lambda _: describe_pass(report))


@click.command("verify")
@click.argument("host")
@click.option("--snapshot", "seq", type=int, default=None, help="Snapshot to check (default: the newest).")
@click.option("--workspace", "check_workspace", is_flag=True,
              help="Check HOST's workspace instead, against --against's newest snapshot manifest.")
@click.option("--against", metavar="STANDBY", default=None, help="The standby whose manifest --workspace uses.")
@state_dir_option
@json_option
def verify_command(host: str, seq: int | None, check_workspace: bool, against: str | None,
                   state_dir: Path | None, as_json: bool) -> None:
    """Re-hash every file of HOST's snapshot (or workspace) and compare it with the manifest."""
    from dumont.localcloud.access import local_hosts, pick

    directory = resolve_state_dir(state_dir)
    hosts = local_hosts(directory)
    checked = pick(hosts, host, "HOST")
    if check_workspace and against is None:
        raise UsageError("--workspace needs --against STANDBY", hint="name the standby whose manifest to use")
    reference = pick(hosts, against, "--against") if against else checked
    result = asyncio.run(_verify(directory, checked, reference, seq, check_workspace))

    def human(r: dict[str, Any]) -> str:
        if r["ok"]:
            return f"{r['what']}: ok, every file matches the manifest"
        return "\n".join([f"{r['what']}: {len(r['problems'])} problem(s)", *(f"  {p}" for p in r["problems"])])

    emit(result, as_json=as_json, human=human)
    if not result["ok"]:
        raise IntegrityError(f"{result['what']} does not match its manifest", result["problems"])


async def _verify(state_dir: Path, checked: LocalHostRef, reference: LocalHostRef, seq: int | None,
                  check_workspace: bool) -> dict[str, Any]:
    from dumont.localcloud.access import local_transport, ready_agent

    async with local_transport(state_dir, [checked, reference]) as transport:
        agent, ref_agent = await ready_agent(transport, checked), await ready_agent(transport, reference)
        try:
            status = await ref_agent.status()
            chosen = seq if seq is not None else (status.latest.seq if status.latest else None)
            if chosen is None:
                raise UsageError(f"{reference.name} holds no snapshot yet", hint="run dumont sync first")
            if check_workspace:
                problems = await agent.verify_tree(await ref_agent.manifest(chosen))
                what = f"{checked.name} workspace vs {reference.name} snapshot {chosen}"
            else:
                problems = await agent.verify_snapshot(chosen)
                what = f"{checked.name} snapshot {chosen}"
        finally:
            await agent.close()
            await ref_agent.close()
    return {"what": what, "ok": not problems, "problems": problems, "snapshot": chosen}
