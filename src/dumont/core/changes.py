"""Change-triggered sync (``replication.on_change``): the primary's watcher tells the loop that the workspace
changed, so a pass starts within ``change_debounce_seconds`` instead of at the next interval.

One task per pair asks the primary's agent, on a channel of its own, to wait for a change (``HostAccess.watch``);
on one it records when the first change since the last pass was seen (``PairRuntime.changed_at``) and wakes the
loop once the debounce has passed. ``decide`` then starts the pass; the loop clears ``changed_at`` as it does.
The periodic pass stays the safety net: a watcher that fails (a dead host, no inotify) only costs latency.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dumont.core.context import ControllerContext
from dumont.core.model import PairState
from dumont.core.pair import PairRuntime
from dumont.errors import DumontError

log = logging.getLogger("dumont.controller")

WATCH_SECONDS = 10.0  # one watch call at most: a primary that changed (failover) is picked up after it
RETRY_SECONDS = 1.0  # after a failed watch (the host is down): bounded, the periodic pass goes on meanwhile


async def watch_changes(ctx: ControllerContext, rt: PairRuntime, wake: Callable[[], None]) -> None:
    """Until cancelled: wait for changes on the pair's primary and wake the loop when one has settled."""
    debounce = ctx.config.replication.change_debounce_seconds
    failing = False
    while True:
        primary = rt.primary
        if primary is None or rt.standby is None or rt.state == PairState.PAUSED:
            await ctx.sleep(RETRY_SECONDS)
            continue
        try:
            result = await ctx.hosts.watch(primary, timeout=WATCH_SECONDS)
        except DumontError as exc:
            if not failing:
                log.info("%s: watching %s failed (%s); passes run every sync_interval_seconds meanwhile",
                         rt.name, primary.alias, exc)
            failing = True
            await ctx.sleep(RETRY_SECONDS)
            continue
        failing = False
        _say_mode(ctx, rt, primary.alias, result)
        if result.get("changed") and rt.primary == primary:
            if rt.changed_at is None:
                rt.changed_at = ctx.clock()
            await ctx.sleep(debounce)
            wake()


def _say_mode(ctx: ControllerContext, rt: PairRuntime, alias: str, result: dict[str, object]) -> None:
    mode = str(result.get("mode", ""))
    if mode == rt.watch_mode:
        return
    rt.watch_mode = mode
    if mode == "poll":
        ctx.event(rt.name, "watch_degraded", f"{alias} watches its workspace by polling, not inotify: "
                                             f"{result.get('reason')}; changes are seen within about a second")
