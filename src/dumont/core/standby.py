"""Replacing the standby (SPEC §4.6): create a new spot VM, make it present the pair's key, sync it fully.

The GPU is never touched: it keeps serving the endpoint while its new standby fills. The lost standby is deleted
once the new one holds a complete snapshot (its copy is stale, and a stopped spot VM still bills for its disk).
"""

from __future__ import annotations

import asyncio
import logging

from dumont.core.context import ControllerContext, host_ref, present_pair_host_key, wait_for_ssh
from dumont.core.model import HostRef
from dumont.core.pair import PairRuntime, ensure_paired, replicator, run_operation, show_operation
from dumont.errors import DumontError
from dumont.providers.base import Instance, InstanceState, StandbySpec

log = logging.getLogger("dumont.controller")

FIRST_PASS_ATTEMPTS = 3


async def replace_standby(ctx: ControllerContext, rt: PairRuntime, op_id: int) -> None:
    """Create and fill a new standby; record success or why it failed in the operation."""
    await run_operation(ctx, rt, op_id, "replace_standby", lambda: _replace(ctx, rt, op_id))


async def _replace(ctx: ControllerContext, rt: PairRuntime, op_id: int) -> None:
    if rt.primary is None:
        raise DumontError(f"{rt.name} has no primary to copy to a standby")
    old = rt.standby
    op = ctx.store.operation(op_id)
    name = str(op.data.get("name") if op and op.data.get("name") else f"dumont-{rt.name}-standby-{op_id}")
    ctx.store.update_operation(op_id, step="creating", data={"name": name})
    show_operation(ctx, rt, op_id, "replace_standby")
    instance = await _create_or_find(ctx, rt, name)
    ctx.store.update_operation(op_id, step="waiting_ssh", data={"instance_id": instance.instance_id})
    show_operation(ctx, rt, op_id, "replace_standby")
    new = await _wait_running(ctx, instance)
    await present_pair_host_key(ctx, new, rt.name)
    ctx.store.update_operation(op_id, step="syncing")
    show_operation(ctx, rt, op_id, "replace_standby")
    rt.standby, rt.paired_epoch = new, None
    ctx.store.save_pair(rt.row())
    await _first_pass(ctx, rt, rt.primary, new)
    ctx.event(rt.name, "standby_replaced", f"the new standby {new.instance_id} holds a complete snapshot")
    if old is not None and old.instance_id != new.instance_id:
        await _delete_old(ctx, rt, old)


async def _create_or_find(ctx: ControllerContext, rt: PairRuntime, name: str) -> Instance:
    """The VM called ``name``: created now, or found if a restarted controller had created it already."""
    try:
        existing = await ctx.standby_cloud.get(name)
    except DumontError:
        existing = None
    if existing is not None and existing.state not in (InstanceState.TERMINATED, InstanceState.UNKNOWN):
        return existing
    cfg = ctx.config
    spec = StandbySpec(name=name, machine_type=cfg.standby.machine_type, disk_gb=cfg.standby.disk_gb,
                       image=cfg.standby.image, spot=cfg.gcp_spot, termination_action=cfg.standby.termination_action,
                       ssh_public_keys=[ctx.controller_public_key(), *ctx.user_public_keys()],
                       labels={"dumont-pair": rt.name})
    instance = await ctx.standby_cloud.create_standby(spec)
    ctx.store.record_host(instance.provider, instance.instance_id, rt.name, "cpu", "created as the standby")
    ctx.event(rt.name, "standby_created", f"created standby VM {instance.instance_id} ({cfg.standby.machine_type}, "
                                          f"{'spot' if cfg.gcp_spot else 'on-demand'})")
    return instance


async def _wait_running(ctx: ControllerContext, instance: Instance) -> HostRef:
    deadline = ctx.clock() + ctx.config.ssh_wait_timeout
    while instance.state != InstanceState.RUNNING or not instance.ssh_host:
        if ctx.clock() > deadline:
            raise DumontError(f"standby {instance.instance_id} was not running after {ctx.config.ssh_wait_timeout:g} s")
        if instance.state in (InstanceState.STOPPED, InstanceState.PREEMPTED):
            await ctx.standby_cloud.start(instance.instance_id)
        await asyncio.sleep(1.0)  # the provider has no push notification; poll, bounded by the deadline
        instance = await ctx.standby_cloud.get(instance.instance_id)
    ref = host_ref(instance, "cpu")
    await wait_for_ssh(ctx, ref, deadline=deadline)
    return ref


async def _first_pass(ctx: ControllerContext, rt: PairRuntime, primary: HostRef, standby: HostRef) -> None:
    last: DumontError | None = None
    for _ in range(FIRST_PASS_ATTEMPTS):
        try:
            await ensure_paired(ctx, rt, primary, standby)
            report = await replicator(ctx, rt, primary, standby).run_pass()
        except DumontError as exc:
            last = exc
            continue
        ctx.store.record_pass(rt.name, report.as_record())
        rt.sync = type(rt.sync)(report.finished_at, report.started_at)
        return
    raise DumontError(f"the first full pass to the new standby failed: {last}")


async def _delete_old(ctx: ControllerContext, rt: PairRuntime, old: HostRef) -> None:
    try:
        async with asyncio.timeout(300):
            await ctx.standby_cloud.delete(old.instance_id)
    except (DumontError, TimeoutError) as exc:
        ctx.event(rt.name, "cleanup_failed", f"could not delete the old standby {old.instance_id}: {exc}")
        return
    ctx.store.release_host(old.provider, old.instance_id, "replaced")
    await ctx.forget(old)
    ctx.event(rt.name, "standby_deleted", f"deleted the lost standby {old.instance_id}")
