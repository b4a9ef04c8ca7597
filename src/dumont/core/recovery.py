"""Recovery and failback (SPEC §4.5): a new GPU, the CPU's workspace restored onto it, the endpoint moved back.

While the user keeps working on the CPU, the new GPU is made a standby *of the CPU* and filled by ordinary
replication passes (so a restore is verified, resumable and torn-file safe like any pass). Then new endpoint
connections are held, existing ones closed so nothing keeps writing to the CPU, one last catch-up pass carries
every CPU-side write over, the GPU takes its snapshot as its workspace (one rename), and the endpoint points at
it. The CPU becomes the standby again and the failed GPU is destroyed.
"""

from __future__ import annotations

import logging
from typing import Any

from dumont.core.context import ControllerContext
from dumont.core.endpoint import publish_endpoint
from dumont.core.faults import reason_of
from dumont.core.model import HostRef, RecoveryStep
from dumont.core.pair import PairRuntime, ensure_paired, run_operation, run_pass, show_operation
from dumont.core.progress import restore_progress
from dumont.core.renting import destroy_quietly, rent_gpu
from dumont.core.salvage import salvage
from dumont.errors import DumontError, IntegrityError
from dumont.replication.engine import PassReport

log = logging.getLogger("dumont.controller")

PROGRESS_EVERY_SECONDS = 1.0  # a restore's progress reaches the store and the status at most this often
MB = 1024 * 1024
RESTORE_PASSES = 5  # passes before the catch-up: enough for the CPU's writes to slow down to a trickle
STEP_SENTENCES = {
    RecoveryStep.SEARCHING: "searching offers within the limits",
    RecoveryStep.RENTING: "renting a GPU",
    RecoveryStep.WAITING_SSH: "waiting for the new GPU to run and answer SSH",
    RecoveryStep.RESTORING: "restoring the workspace from the CPU",
    RecoveryStep.CATCHING_UP: "holding the endpoint for the final catch-up pass",
    RecoveryStep.SWITCHING_BACK: "switching the endpoint back to the new GPU",
}


async def recover(ctx: ControllerContext, rt: PairRuntime, op_id: int) -> None:
    """Run a whole recovery; record success or the reason it failed in the operation (the loop decides next)."""
    await run_operation(ctx, rt, op_id, "recovery", lambda: _recover(ctx, rt, op_id))


async def _recover(ctx: ControllerContext, rt: PairRuntime, op_id: int) -> None:
    cpu = rt.primary
    if cpu is None:
        raise DumontError(f"{rt.name} has no primary to restore from")
    if cpu.role == "gpu":
        # The failback happened and the controller was killed before the recovery was recorded as over: only the
        # clean-up is left. (A chaos finding: "restoring" from the GPU now serving onto a new one, or onto itself,
        # made that GPU the pair's standby and lost the CPU, still billed, from the pair.)
        ctx.event(rt.name, "recovery_resumed", f"the failback to {cpu.instance_id} was done before a controller "
                                               "restart; cleaning up the failed GPUs")
        await _clean_up_failed(ctx, rt)
        return

    announced: list[str] = []

    def progress(step: RecoveryStep, data: dict[str, Any]) -> None:
        ctx.store.update_operation(op_id, step=str(step), data=data)
        show_operation(ctx, rt, op_id, "recovery")
        if announced[-1:] != [str(step)]:
            announced.append(str(step))
            ctx.event(rt.name, "recovery_step", f"recovery: {STEP_SENTENCES[step]}", {"step": str(step), **data})

    op = ctx.store.operation(op_id)
    known = (str(op.data.get("provider") or ctx.config.gpu_markets[0]), str(op.data["instance_id"])) \
        if op and op.data.get("instance_id") else None
    # Instances the store knows are the pair's own (failed, current); an unknown one with the pair's label was
    # rented by a controller that died before recording it, and is adopted instead of renting another.
    in_use = frozenset(i for _, i, _ in ctx.store.held_hosts(rt.name)) | {cpu.instance_id}
    gpu, instance = await rent_gpu(ctx, rt.name, exclude_machines=await _failed_machines(ctx, rt),
                                   progress=progress, known_instance=known, in_use=in_use)
    ctx.event(rt.name, "gpu_rented", f"rented instance {instance.instance_id} ({instance.gpu_name or 'GPU'}, "
                                     f"${instance.price_per_hour or 0:.2f}/h, {instance.country or '?'}); restoring")
    progress(RecoveryStep.RESTORING, {"instance_id": instance.instance_id})
    try:
        await ctx.ensure_ready(cpu)
        await ctx.ensure_ready(gpu)
        await ctx.hosts.certify_host(gpu, rt.name)
        await _restore(ctx, rt, cpu, gpu, progress)
        await _catch_up_and_switch(ctx, rt, cpu=cpu, gpu=gpu, progress=progress)
    except Exception as exc:
        # A half-restored GPU is worth nothing and costs money, whatever went wrong (a bug included): start clean
        # next time. (Cancellation keeps it: a restarted controller resumes with the same instance.)
        await destroy_quietly(ctx, rt.name, gpu.provider, gpu.instance_id, f"the restore failed ({reason_of(exc)})")
        await ctx.hosts.forget(gpu)
        raise
    await _clean_up_failed(ctx, rt)


async def _failed_machines(ctx: ControllerContext, rt: PairRuntime) -> frozenset[str]:
    """Machine ids of the GPUs that failed: a new GPU must not be rented on the machine that just died."""
    machines = set()
    current = rt.primary.instance_id if rt.primary else None
    for provider, instance_id, role in ctx.store.held_hosts(rt.name):
        if role != "gpu" or provider not in ctx.markets or instance_id == current:
            continue
        try:
            instance = await ctx.market(provider).get(instance_id)
        except DumontError:
            continue
        if instance.machine_id:
            machines.add(instance.machine_id)
    return frozenset(machines)


async def _restore(ctx: ControllerContext, rt: PairRuntime, cpu: HostRef, gpu: HostRef,
                   progress: Any) -> PassReport:
    """Fill the new GPU from the CPU with ordinary passes until one finds (almost) nothing left to copy."""
    rt.paired_epoch = None
    await ensure_paired(ctx, rt, cpu, gpu)
    began = ctx.clock()
    shown = [float("-inf")]

    def copying(done: int, total: int) -> None:
        now = ctx.clock()
        if now - shown[0] < PROGRESS_EVERY_SECONDS and done < total:
            return
        shown[0] = now
        progress(RecoveryStep.RESTORING, {"progress": restore_progress(done, total, now - began)})

    report = await run_pass(ctx, rt, cpu, gpu, keep_candidate=False, progress=copying)
    first = report
    for _ in range(RESTORE_PASSES - 1):
        progress(RecoveryStep.RESTORING, {"restored_bytes": report.bytes_scanned, "pass_seq": report.seq})
        if not report.copied:
            break
        report = await run_pass(ctx, rt, cpu, gpu, keep_candidate=False)
    seconds = max(first.seconds, 1e-6)
    ctx.event(rt.name, "restore_copied", f"restored {first.bytes_scanned / MB:.1f} MB ({first.files_copied} files) "
                                         f"onto {gpu.instance_id} in {first.seconds:.1f} s "
                                         f"({first.bytes_sent / MB / seconds:.1f} MB/s on the wire)",
              {"bytes": first.bytes_scanned, "bytes_sent": first.bytes_sent, "files": first.files_copied,
               "seconds": round(first.seconds, 3), "passes": report.seq - first.seq + 1})
    return report


async def _catch_up_and_switch(ctx: ControllerContext, rt: PairRuntime, *, cpu: HostRef, gpu: HostRef,
                               progress: Any) -> None:
    """Hold the endpoint, carry the last CPU writes over, promote the GPU, point the endpoint at it."""
    progress(RecoveryStep.CATCHING_UP, {})
    await rt.endpoint.hold(reason="failing back: the last CPU writes are carried over first")
    try:
        closed = await rt.endpoint.close_existing(reason="failing back to the new GPU")
        final = await run_pass(ctx, rt, cpu, gpu, keep_candidate=False)
        progress(RecoveryStep.SWITCHING_BACK, {"catch_up_files": final.files_copied, "closed_sessions": closed})
        new_epoch = ctx.store.advance_epoch(rt.name, rt.epoch)  # compare-and-set: one writer per epoch
        rt.epoch = new_epoch
        if final.snapshot_seq is None:
            raise IntegrityError("the catch-up pass left no snapshot on the new GPU to promote")
        manifest = await ctx.hosts.snapshot_manifest(gpu, final.snapshot_seq)
        await ctx.hosts.promote(gpu, epoch=new_epoch, mode="take")
        if not await ctx.hosts.verify_promoted(gpu, manifest):
            raise IntegrityError(f"the new GPU's workspace does not match snapshot {final.snapshot_seq}",
                                 hint="the endpoint stays on the CPU; the recovery will be retried")
        await rt.endpoint.point_to((gpu.ssh_host, gpu.ssh_port), reason="failback to the new GPU", epoch=new_epoch)
    finally:
        await rt.endpoint.release(reason="the catch-up is over")
    await ctx.hosts.set_epoch(cpu, new_epoch)
    await ctx.hosts.retire_workspace(cpu, epoch=new_epoch)
    rt.primary, rt.standby, rt.paired_epoch = gpu, cpu, None
    rt.sync = type(rt.sync)()
    ctx.store.save_pair(rt.row())
    publish_endpoint(ctx, rt)
    ctx.event(rt.name, "recovered", f"failed back to the new GPU {gpu.instance_id}; the CPU is the standby again",
              {"epoch": new_epoch, "gpu": gpu.as_dict(), "catch_up_files": final.files_copied,
               "catch_up_seconds": round(final.seconds, 3), "restore_seq": final.seq})


async def _clean_up_failed(ctx: ControllerContext, rt: PairRuntime) -> None:
    """Destroy every GPU the pair still holds besides its primary: the failed ones (also those a previous
    controller failed over from), so no paid instance is ever left behind."""
    keep = {h.instance_id for h in (rt.primary, rt.standby) if h is not None}
    for provider, instance_id, role in ctx.store.held_hosts(rt.name):
        if role == "gpu" and provider in ctx.markets and instance_id not in keep:
            await salvage(ctx, rt, provider, instance_id)  # an outbid GPU's newer writes, before they are gone
            await destroy_quietly(ctx, rt.name, provider, instance_id, "it failed and has been replaced")
    for ref in list(rt.failed):
        await ctx.hosts.forget(ref)
        rt.failed.remove(ref)
