"""Failover (SPEC §4.4): fence the old primary, promote the standby, switch the endpoint; then fence by API.

Order matters. The standby stops accepting the old primary (its key revoked, its pushes killed) *before*
anything is promoted, so a primary that is only partitioned can never write again; the standby takes the new
epoch only once the promotion has succeeded, all in one agent call (``take_over``), so a failed promotion never
leaves it ahead of the controller refusing every pass (hostile-review.md #5). Promotion renames the standby's
candidate into place (no copy), and the endpoint switch is one assignment, so the user is back within about a
second of the decision. Stopping or destroying the old instance through its provider happens afterwards.
"""

from __future__ import annotations

import asyncio
import logging

from dumont.core.context import ControllerContext
from dumont.core.endpoint import publish_endpoint, revoke_host
from dumont.core.model import HostRef, Outcome
from dumont.core.pair import PairRuntime, cancel, start_background
from dumont.errors import DumontError

log = logging.getLogger("dumont.controller")

CANCEL_SYNC_SECONDS = 0.05  # how long a failover waits for the pass it cancels (measured: ~3 s on a partition)


async def fail_over(ctx: ControllerContext, rt: PairRuntime, cause: str) -> None:
    """Move the pair onto its standby; raise DumontError (state unchanged) if the standby cannot take over."""
    if rt.primary is None or rt.standby is None:
        raise DumontError(f"{rt.name} has no standby to fail over to", hint="wait for a new standby")
    decided = ctx.clock()
    old, standby = rt.primary, rt.standby
    # A pass stuck on a partitioned GPU unwinds slowly (its SSH channel must be torn down): the failover does not
    # wait for that. Whatever the pass still sends is refused by the standby once the epoch moves on.
    await cancel(rt.sync_task, timeout=CANCEL_SYNC_SECONDS)
    # The epoch is taken by compare-and-set: a second controller on this pair fails here, before fencing anything.
    new_epoch = ctx.store.advance_epoch(rt.name, rt.epoch)
    rt.epoch = new_epoch
    rt.paired_epoch = None  # whatever happens next, the pair key is gone from the standby: pair again
    await ctx.ensure_ready(standby)  # known already, unless the controller restarted while it was unreachable
    promoted = await ctx.hosts.take_over(rt.name, standby, new_epoch)
    await rt.endpoint.point_to((standby.ssh_host, standby.ssh_port), reason=cause, epoch=new_epoch)
    switched = ctx.clock()
    # Sessions still open to the old primary (a partitioned one may come back) must not keep writing there.
    closed = await rt.endpoint.close_existing(reason=cause)
    rt.primary, rt.standby = standby, None
    rt.failed.append(old)
    rt.paired_epoch = None
    rt.timings.update(decided_at=decided, endpoint_switched_at=switched)
    ctx.store.save_pair(rt.row())
    revoke_host(ctx, rt, old)  # the certificate the old GPU holds no longer opens the endpoint
    publish_endpoint(ctx, rt)  # the CPU's login (Google's images refuse root) goes into the user's snippet
    ctx.event(rt.name, "failover", f"failed over to the standby: {cause}", {
        "epoch": new_epoch, "from": old.as_dict(), "to": standby.as_dict(), "snapshot_seq": promoted["seq"],
        "decision_to_switch_seconds": round(switched - decided, 4), "receives_killed": promoted.get("killed", 0),
        "snapshot_files": promoted["files"], "sessions_closed": closed,
        "promoted_from": promoted.get("mode", "candidate"),  # "take": no complete candidate, the snapshot itself
    })
    # The state moves on in the next decision, which this outcome wakes at once.
    rt.outcome = Outcome("failover", True, cause, ctx.clock())
    start_background(ctx, rt, "fence-by-provider", lambda: fence_by_provider(ctx, rt, old))


async def fence_by_provider(ctx: ControllerContext, rt: PairRuntime, old: HostRef) -> None:
    """Stop (or destroy) the old primary through its provider, without making the user wait for it."""
    action = ctx.config.controller.fence_action
    try:
        async with asyncio.timeout(120):
            if action == "destroy":
                await ctx.market(old.provider).destroy(old.instance_id)
                ctx.store.release_host(old.provider, old.instance_id, "destroyed at failover")
            else:
                await ctx.market(old.provider).stop(old.instance_id)
    except (DumontError, TimeoutError) as exc:
        ctx.event(rt.name, "fence_failed", f"could not {action} the old GPU {old.instance_id} through its "
                                           f"provider: {exc}; it is fenced on the standby regardless")
        return
    done = "stopped" if action == "stop" else "destroyed"
    ctx.event(rt.name, "fenced", f"the old GPU {old.instance_id} was {done} through its provider")
