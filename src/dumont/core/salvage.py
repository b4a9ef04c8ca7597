"""Salvage (SPEC §4.5 step 4): an outbid GPU keeps its disk, so what it wrote after its last pass is not lost.

Before a failed GPU is destroyed, if its provider says it is paused with its disk (outbid or stopped) and its
market can copy between instances (``CopiesBetweenInstances``: Vast's copy works on a paused instance), its
workspace is copied into ``/workspace/.dumont/salvage/<epoch>/`` on the new GPU. What equals the live workspace is
then dropped on the new GPU (``salvage_sort``), so the folder holds only the failed GPU's newer writes, beside the
live files and never over one the CPU wrote meanwhile; a ``salvaged`` event lists them. A deadline bounds it all
(``controller.salvage_timeout_seconds``) and nothing here raises: a failed salvage is said, and the GPU is
destroyed regardless.
"""

from __future__ import annotations

import asyncio
import logging

from dumont.core.context import ControllerContext
from dumont.core.pair import PairRuntime
from dumont.errors import DumontError
from dumont.providers.base import CopiesBetweenInstances, InstanceState

log = logging.getLogger("dumont.controller")

SETTLE_POLL_SECONDS = 0.5
PAUSED = (InstanceState.OUTBID, InstanceState.STOPPED)


async def salvage(ctx: ControllerContext, rt: PairRuntime, provider: str, instance_id: str) -> None:
    """Copy the newer files of a paused failed GPU onto the pair's new primary; never raises."""
    primary = rt.primary
    market = ctx.markets.get(provider)
    if (not ctx.config.controller.salvage_outbid or primary is None or primary.provider != provider
            or not isinstance(market, CopiesBetweenInstances)):
        return
    try:
        instance = await ctx.market(provider).get(instance_id)
    except DumontError:
        return
    if instance.state not in PAUSED:
        return  # a machine that died or is gone has nothing to give
    folder = f".dumont/salvage/{rt.epoch}"
    started = ctx.clock()
    try:
        async with asyncio.timeout(ctx.config.controller.salvage_timeout_seconds):
            await market.copy_between(instance_id, primary.instance_id, "/workspace/", f"/workspace/{folder}/")
            await _settled(ctx, rt, provider, folder)
            kept = await ctx.hosts.salvage_sort(primary, folder)
    except (DumontError, TimeoutError) as exc:
        reason = str(exc) or f"not done within {ctx.config.controller.salvage_timeout_seconds:g} s"
        ctx.event(rt.name, "salvage_failed", f"could not salvage the files of the failed GPU {instance_id}: {reason}; "
                                             "it is destroyed regardless", {"instance_id": instance_id})
        return
    seconds = round(ctx.clock() - started, 3)
    where = f"/workspace/{folder}"
    summary = (f"{len(kept)} file(s) the failed GPU {instance_id} wrote after its last pass are in {where} on the "
               f"new GPU" if kept else f"the failed GPU {instance_id} held nothing newer than the workspace")
    ctx.event(rt.name, "salvaged", summary, {"instance_id": instance_id, "folder": where, "files": kept[:500],
                                             "count": len(kept), "seconds": seconds})


async def _settled(ctx: ControllerContext, rt: PairRuntime, provider: str, folder: str) -> None:
    """Wait until the copy is done: the destination says so, or the folder stopped changing (bounded by the
    caller's deadline)."""
    primary = rt.primary
    assert primary is not None
    previous: tuple[int, int, int] | None = None
    while True:
        status = (await ctx.market(provider).get(primary.instance_id)).status_message or ""
        if "failed" in status.lower():
            raise DumontError(f"the provider says: {status}")
        signature = await ctx.hosts.salvage_signature(primary, folder)
        if "done" in status.lower() or (signature[0] > 0 and signature == previous):
            return
        previous = signature
        await ctx.sleep(SETTLE_POLL_SECONDS)
