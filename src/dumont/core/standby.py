"""Protecting the standby (SPEC §4.6): bring a lost one back, or create a new spot VM and sync it fully.

The GPU is never touched: it keeps serving the endpoint meanwhile. A standby the provider stopped or preempted
keeps its disk, so it is started again first (cheaper than a new VM and a full copy; it comes back on a new
address, the same pinned key). Otherwise a new VM is created, readied, certified for the endpoint and filled; the
lost standby is deleted once the new one holds a complete snapshot. A VM this operation created that never
becomes usable (no SSH, no rsync, a first pass refused) is deleted before the operation ends: a retry must never
leave one more billed machine behind.
"""

from __future__ import annotations

import asyncio
import logging

from dumont.core.context import ControllerContext, host_ref
from dumont.core.faults import reason_of
from dumont.core.model import HostRef
from dumont.core.pair import PairRuntime, ensure_paired, run_operation, run_pass, show_operation
from dumont.errors import DumontError
from dumont.providers.base import Instance, InstanceState, StandbySpec

log = logging.getLogger("dumont.controller")

FIRST_PASS_ATTEMPTS = 3
DELETE_TIMEOUT = 300.0


async def replace_standby(ctx: ControllerContext, rt: PairRuntime, op_id: int) -> None:
    """Restart or replace the standby and fill it; record success or why it failed in the operation."""
    await run_operation(ctx, rt, op_id, "replace_standby", lambda: _replace(ctx, rt, op_id))


async def _replace(ctx: ControllerContext, rt: PairRuntime, op_id: int) -> None:
    if rt.primary is None:
        raise DumontError(f"{rt.name} has no primary to copy to a standby")
    op = ctx.store.operation(op_id)
    only_restart = bool(op and op.data.get("only_restart"))
    old = rt.standby
    if old is not None and await _restart(ctx, rt, op_id, old, fill=not only_restart):
        return
    if only_restart:
        raise DumontError(f"{rt.name}'s GPU is failing and its standby could not be started again, so there is "
                          "nothing to fail over to and nothing to fill a new standby from",
                          hint="the GPU may come back (an outbid one when its bid wins again); if not, the data is "
                               "on the stopped standby's disk")
    name = str(op.data.get("name") if op and op.data.get("name") else f"dumont-{rt.name}-standby-{op_id}")
    _step(ctx, rt, op_id, "creating", {"name": name})
    instance = await _create_or_find(ctx, rt, name)
    try:
        new = await _fill(ctx, rt, op_id, instance)
    except Exception as exc:  # a bug too: the VM this operation created must not outlive it
        # Cancellation (a controller stopping) keeps the VM: the restarted controller finds it by name.
        unusable = rt.standby if rt.standby is not old else None
        rt.standby, rt.paired_epoch = old, None
        ctx.store.save_pair(rt.row())
        await _delete(ctx, rt, instance.provider, instance.instance_id,
                      f"it never became a usable standby ({reason_of(exc)})",
                      ref=unusable)
        raise
    ctx.event(rt.name, "standby_replaced", f"the new standby {new.instance_id} holds a complete snapshot")
    if old is not None and old.instance_id != new.instance_id:
        await _delete(ctx, rt, old.provider, old.instance_id, "it was lost and has been replaced", ref=old)


async def _restart(ctx: ControllerContext, rt: PairRuntime, op_id: int, old: HostRef, *, fill: bool) -> bool:
    """Start a stopped or preempted standby again; True when it is back with a complete snapshot (caught up with
    the primary by a first pass when ``fill``; else with the snapshots its disk kept, for a failover)."""
    try:
        instance = await ctx.standby_cloud_of(rt.config).get(old.instance_id)
    except DumontError:
        return False
    # Without a fill, one already running or booting again (an earlier attempt started it, then failed to fill it
    # from a GPU that was failing meanwhile) is as good: its disk is what the failover needs.
    running = instance.state in (InstanceState.RUNNING, InstanceState.PENDING) and not fill
    if not (instance.state.restartable or running):
        return False
    _step(ctx, rt, op_id, "restarting", {"instance_id": old.instance_id})
    try:
        if not running:
            async with asyncio.timeout(ctx.config.standby.boot_timeout_seconds):
                await ctx.standby_cloud_of(rt.config).start(old.instance_id)
        await ctx.hosts.forget(old, still_ready=True)  # a new address: old channels lead nowhere; its disk is the same
        await _fill(ctx, rt, op_id, await ctx.standby_cloud_of(rt.config).get(old.instance_id), first_pass=fill)
    except (DumontError, TimeoutError) as exc:
        then = "creating a new one" if fill else "the next attempt tries again"
        ctx.event(rt.name, "standby_restart_failed",
                  f"could not bring standby {old.instance_id} back ({reason_of(exc)}); {then}")
        return False
    ctx.event(rt.name, "standby_restarted", f"standby {old.instance_id} is back with a complete snapshot")
    return True


async def _fill(ctx: ControllerContext, rt: PairRuntime, op_id: int, instance: Instance, *,
                first_pass: bool = True) -> HostRef:
    """Wait for the VM, ready it, make it present the pair's key, and copy the workspace onto it."""
    _step(ctx, rt, op_id, "waiting_ssh", {"instance_id": instance.instance_id})
    new = await _wait_running(ctx, instance)
    await ctx.ensure_ready(new)
    await ctx.hosts.certify_host(new, rt.name)
    rt.standby, rt.paired_epoch = new, None
    ctx.store.save_pair(rt.row())
    if first_pass:
        _step(ctx, rt, op_id, "syncing", {})
        assert rt.primary is not None
        await _first_pass(ctx, rt, rt.primary, new)
    return new


def _step(ctx: ControllerContext, rt: PairRuntime, op_id: int, step: str, data: dict[str, object]) -> None:
    ctx.store.update_operation(op_id, step=step, data=data)
    show_operation(ctx, rt, op_id, "replace_standby")


async def _create_or_find(ctx: ControllerContext, rt: PairRuntime, name: str) -> Instance:
    """The VM called ``name``: created now, or found if a restarted controller had created it already."""
    try:
        existing = await ctx.standby_cloud_of(rt.config).get(name)
    except DumontError:
        existing = None
    if existing is not None and existing.state not in (InstanceState.TERMINATED, InstanceState.UNKNOWN):
        return existing
    instance = await ctx.standby_cloud_of(rt.config).create_standby(standby_spec(ctx, rt, name))
    ctx.store.record_host(instance.provider, instance.instance_id, rt.name, "cpu", "created as the standby")
    cfg = ctx.config
    ctx.event(rt.name, "standby_created", f"created standby VM {instance.instance_id} ({cfg.standby.machine_type}, "
                                          f"{'spot' if cfg.gcp_spot else 'on-demand'})")
    return instance


def standby_spec(ctx: ControllerContext, rt: PairRuntime, name: str) -> StandbySpec:
    """The standby VM to create for ``rt``: a non-root login with our keys, reachable through its network tag's
    firewall rule, rsync installed by its startup script while it boots."""
    from dumont.core.bootstrap import boot_script

    cfg = ctx.config.standby
    return StandbySpec(name=name, machine_type=cfg.machine_type, disk_gb=cfg.disk_gb, image=cfg.image,
                       spot=ctx.config.gcp_spot, termination_action=cfg.termination_action, ssh_user=cfg.ssh_user,
                       ssh_public_keys=[ctx.controller_public_key(), *ctx.user_public_keys()],
                       labels={"dumont-pair": rt.name}, network_tag=cfg.network_tag,
                       ssh_source_ranges=cfg.ssh_source_ranges, startup_script=boot_script())


async def _wait_running(ctx: ControllerContext, instance: Instance) -> HostRef:
    cloud = ctx.cloud(instance.provider)
    deadline = ctx.clock() + ctx.config.standby.boot_timeout_seconds
    while instance.state != InstanceState.RUNNING or not instance.ssh_host:
        if ctx.clock() > deadline:
            raise DumontError(f"standby {instance.instance_id} was not running after "
                              f"{ctx.config.standby.boot_timeout_seconds:g} s (state {instance.raw_state})")
        if instance.state.restartable:
            await cloud.start(instance.instance_id)
        await ctx.sleep(1.0)  # the provider has no push notification; poll, bounded by the deadline
        instance = await cloud.get(instance.instance_id)
    ref = host_ref(instance, "cpu")
    await ctx.hosts.reach(ref, deadline=ctx.clock() + ctx.config.ssh_wait_timeout)
    return ref


async def _first_pass(ctx: ControllerContext, rt: PairRuntime, primary: HostRef, standby: HostRef) -> None:
    last: DumontError | None = None
    for _ in range(FIRST_PASS_ATTEMPTS):
        try:
            await ensure_paired(ctx, rt, primary, standby)
            report = await run_pass(ctx, rt, primary, standby)
        except DumontError as exc:
            last = exc
            continue
        ctx.store.record_pass(rt.name, report.as_record())
        rt.sync = type(rt.sync)(report.finished_at, report.started_at)
        return
    raise DumontError(f"the first full pass to the new standby failed: {last}")


async def _delete(ctx: ControllerContext, rt: PairRuntime, provider: str, instance_id: str, why: str, *,
                  ref: HostRef | None) -> None:
    """Delete a standby VM and forget it; report, never raise (a failure says to delete it by hand)."""
    try:
        async with asyncio.timeout(DELETE_TIMEOUT):
            await ctx.cloud(provider).delete(instance_id)
    except Exception as exc:  # never raise: the caller is already handling a failure
        ctx.event(rt.name, "cleanup_failed", f"could not delete standby VM {instance_id} ({why}): {exc}; "
                                             "delete it by hand to stop paying for it")
        return
    ctx.store.release_host(provider, instance_id, f"deleted: {why}")
    if ref is not None:
        await ctx.hosts.forget(ref)
    ctx.event(rt.name, "standby_deleted", f"deleted standby VM {instance_id}: {why}", {"instance_id": instance_id})
