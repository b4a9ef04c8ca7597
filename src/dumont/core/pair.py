"""One protected pair at runtime: its hosts, epoch, endpoint, replication and the long operation in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dumont.config import PairConfig
from dumont.core.context import ControllerContext, host_from_dict
from dumont.core.model import (
    HostHealth,
    HostRef,
    Memory,
    Observation,
    OperationStatus,
    Outcome,
    PairState,
    SyncStatus,
)
from dumont.endpoint.ports import Endpoint
from dumont.errors import DumontError
from dumont.replication.engine import PassReport, ReplicationPolicy
from dumont.replication.guards import GuardPolicy
from dumont.store.rows import PairRow

log = logging.getLogger("dumont.controller")


@dataclass
class PairRuntime:
    """Everything the controller holds for one pair while it runs."""

    config: PairConfig
    state: PairState
    epoch: int
    primary: HostRef | None
    standby: HostRef | None
    endpoint: Endpoint
    memory: Memory = field(default_factory=Memory)
    sync: SyncStatus = field(default_factory=SyncStatus)
    operation: OperationStatus | None = None
    operation_id: int | None = None
    failed: list[HostRef] = field(default_factory=list)  # former primaries awaiting clean-up
    paired_epoch: int | None = None  # the epoch direct mode was last set up for
    last_reason: str = ""
    last_action_error: str | None = None
    sync_task: asyncio.Task[None] | None = None
    op_task: asyncio.Task[None] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    observation: Observation | None = None  # the last tick's snapshot, for metrics and the dashboard
    awaiting_host_key: bool = False  # adopted: the endpoint holds connections until the primary is re-keyed
    outcome: Outcome | None = None  # what an inline effector reported, for the next decision only
    endpoint_lost: bool = False  # the endpoint did not answer the last refresh (said once)
    skipped_said: set[str] = field(default_factory=set)  # the special files last named in an event
    last_probes: dict[str, tuple[float, HostHealth]] = field(default_factory=dict)  # alias -> (when, health)
    last_scrub_at: float = 0.0
    changed_at: float | None = None  # the first change the primary's watcher reported since the last pass began
    watch_task: asyncio.Task[None] | None = None
    reach_task: asyncio.Task[None] | None = None  # reaching the hosts when the controller took the pair up
    watch_mode: str = ""  # how the primary's agent watches: inotify, poll (said once when it changes)

    @property
    def name(self) -> str:
        """The pair's name."""
        return self.config.name

    def row(self) -> PairRow:
        """The durable form of this pair."""
        return PairRow(self.name, str(self.state), self.epoch, self.primary.as_dict() if self.primary else None,
                       self.standby.as_dict() if self.standby else None, 0.0)

    @classmethod
    def from_row(cls, config: PairConfig, row: PairRow, endpoint: Endpoint) -> PairRuntime:
        """Rebuild a pair from the store (a controller restart)."""
        return cls(config, PairState(row.state), row.epoch, host_from_dict(row.primary) if row.primary else None,
                   host_from_dict(row.standby) if row.standby else None, endpoint)


def replication_policy(ctx: ControllerContext, *, keep_candidate: bool = True) -> ReplicationPolicy:
    """The replication settings of the configuration."""
    rep = ctx.config.replication
    return ReplicationPolicy(
        mode=rep.mode, keep_snapshots=rep.keep_snapshots, min_free_fraction=rep.min_free_fraction,
        transfer_timeout=rep.transfer_timeout_seconds, io_timeout=rep.io_timeout_seconds,
        keep_candidate=keep_candidate, full_walk_seconds=rep.full_scan_seconds, streams=rep.push_streams,
        guards=GuardPolicy(max_delete_fraction=rep.max_delete_fraction, near_empty_fraction=rep.near_empty_fraction),
    )


async def ensure_paired(ctx: ControllerContext, rt: PairRuntime, source: HostRef, target: HostRef) -> None:
    """Ready both hosts, and set direct mode up for ``source`` -> ``target`` at the pair's epoch (idempotent)."""
    await ctx.ensure_ready(source)
    await ctx.ensure_ready(target)
    if ctx.config.replication.mode != "direct" or rt.paired_epoch == rt.epoch:
        return
    await reconcile_epoch(ctx, rt, target)
    await ctx.hosts.pair(rt.name, rt.epoch, source, target)
    rt.paired_epoch = rt.epoch


async def reconcile_epoch(ctx: ControllerContext, rt: PairRuntime, target: HostRef) -> None:
    """A standby already at a later epoch than the controller (a takeover whose answer was lost, an older
    version's fence): move the pair's epoch up to it, so passes are not refused for ever (hostile-review.md #5)."""
    theirs = await ctx.hosts.epoch(target)
    if theirs <= rt.epoch:
        return
    ours = rt.epoch
    rt.epoch = ctx.store.advance_epoch(rt.name, ours, to=theirs)
    ctx.store.save_pair(rt.row())
    ctx.event(rt.name, "epoch_reconciled", f"{target.alias} was at epoch {theirs}, ahead of the controller's "
                                           f"{ours}; the pair moved up to it", {"from": ours, "to": rt.epoch})


async def run_pass(ctx: ControllerContext, rt: PairRuntime, source: HostRef, target: HostRef, *,
                   keep_candidate: bool = True, progress: Callable[[int, int], None] | None = None) -> PassReport:
    """One pass from ``source`` to ``target`` with the pair's settings (``progress``: see HostsPort.run_pass)."""
    return await ctx.hosts.run_pass(rt.name, source, target, replication_policy(ctx, keep_candidate=keep_candidate),
                                    progress)


async def run_sync(ctx: ControllerContext, rt: PairRuntime) -> PassReport | None:
    """One replication pass primary -> standby, with its outcome recorded; never raises (the loop judges)."""
    if rt.primary is None or rt.standby is None:
        return None
    started = ctx.clock()
    rt.sync = SyncStatus(rt.sync.last_good_at, started, rt.sync.consecutive_failures, True, rt.sync.last_error)
    try:
        await ensure_paired(ctx, rt, rt.primary, rt.standby)
        report = await run_pass(ctx, rt, rt.primary, rt.standby)
    except asyncio.CancelledError:
        rt.sync = SyncStatus(rt.sync.last_good_at, started, rt.sync.consecutive_failures, False, "cancelled")
        raise
    except Exception as exc:  # a failed pass, whatever failed: the next one retries; a bug is also reported once
        if not isinstance(exc, DumontError):
            ctx.internal_errors.report("a sync pass", exc, rt.name)
        message = exc.message if isinstance(exc, DumontError) else f"unexpected {type(exc).__name__}: {exc}"
        failures = rt.sync.consecutive_failures + 1
        rt.sync = SyncStatus(rt.sync.last_good_at, started, failures, False, message)
        if failures == 1:
            ctx.event(rt.name, "sync_failed", f"a sync pass failed: {exc}")
        return None
    ctx.store.record_pass(rt.name, report.as_record())
    _say_skipped(ctx, rt, report.skipped)
    if rt.sync.consecutive_failures:
        ctx.event(rt.name, "sync_recovered", f"sync works again after {rt.sync.consecutive_failures} failed passes")
    rt.sync = SyncStatus(report.finished_at, started, 0, False, None)
    await scrub_if_due(ctx, rt)
    return report


async def scrub_if_due(ctx: ControllerContext, rt: PairRuntime) -> None:
    """After a good pass, scrub a round of the standby's stored copies if the interval has passed; say what a
    scrub mended or could not (never raises: a failed scrub is said, and the next round tries again)."""
    rep, standby = ctx.config.replication, rt.standby
    if standby is None or ctx.clock() - rt.last_scrub_at < rep.scrub_interval_seconds:
        return
    rt.last_scrub_at = ctx.clock()
    try:
        result = await ctx.hosts.scrub(standby, budget_bytes=rep.scrub_mb_per_round << 20)
    except DumontError as exc:
        ctx.event(rt.name, "scrub_failed", f"the scrub of {standby.alias} failed: {exc}")
        return
    for found in result.get("corrupt", []):
        where, path, source = found["where"], found["path"], found.get("repaired_from")
        if source:
            ctx.event(rt.name, "corruption_repaired", f"{path!r} in the {where} on {standby.alias} did not match "
                                                      f"its manifest; rewritten from the {source}", found)
        else:
            ctx.event(rt.name, "corruption_found", f"{path!r} in the {where} on {standby.alias} did not match its "
                                                   "manifest and no copy there is good; the next pass sends it "
                                                   "again from the primary", found)


def _say_skipped(ctx: ControllerContext, rt: PairRuntime, skipped: tuple[str, ...]) -> None:
    """Name the special files a pass left out, once for each new set (hostile-review.md #16: they were silent)."""
    if not skipped or set(skipped) == rt.skipped_said:
        rt.skipped_said = set(skipped)
        return
    rt.skipped_said = set(skipped)
    shown = ", ".join(repr(p) for p in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    ctx.event(rt.name, "special_files_skipped",
              f"{len(skipped)} special file(s) in the workspace are not replicated (FIFOs, sockets and devices "
              f"cannot be copied): {shown}; a program recreates them when it starts", {"paths": list(skipped)})


def rpo_estimate(rt: PairRuntime, now: float, *, on_change: bool) -> float | None:
    """What a failover now would lose, in seconds of writes: with a working watcher, the age of the oldest change
    not yet in a committed pass (0 when none is pending); otherwise the time since the last pass ended."""
    if rt.sync.last_good_at is None:
        return None
    if on_change and rt.watch_mode in ("inotify", "poll"):
        if rt.changed_at is not None:
            return max(0.0, now - rt.changed_at)
        if rt.sync.running and rt.sync.last_started_at is not None:
            return max(0.0, now - rt.sync.last_started_at)  # what that pass carries is not committed yet
        return 0.0
    return max(0.0, now - rt.sync.last_good_at)


def show_operation(ctx: ControllerContext, rt: PairRuntime, op_id: int, kind: str, *, finished: bool = False,
                   error: str | None = None) -> None:
    """Mirror an operation's stored progress into the pair, where the loop observes it."""
    row = ctx.store.operation(op_id)
    if row is not None:
        moving = row.data.get("progress") if not finished and row.step == "restoring" else None
        rt.operation = OperationStatus(kind, row.step, row.started_at, finished, finished and error is None, error,
                                       moving if isinstance(moving, dict) else None)


async def run_operation(ctx: ControllerContext, rt: PairRuntime, op_id: int, kind: str,
                        body: Callable[[], Awaitable[None]]) -> None:
    """Run an operation's body; record its success, or the reason it failed, for the loop to decide on."""
    try:
        await body()
    except DumontError as exc:
        ctx.store.finish_operation(op_id, succeeded=False, error=exc.message)
        show_operation(ctx, rt, op_id, kind, finished=True, error=exc.message)
        return
    ctx.store.finish_operation(op_id, succeeded=True)
    show_operation(ctx, rt, op_id, kind, finished=True)


def start_background(ctx: ControllerContext, rt: PairRuntime, name: str, work: Callable[[], Awaitable[Any]], *,
                     on_crash: Callable[[str], None] | None = None) -> asyncio.Task[None]:
    """Run ``work`` as a tracked task whose unexpected errors become one ``internal_error`` event, never lost."""

    async def runner() -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ctx.internal_errors.report(f"the background {name}", exc, rt.name)
            if on_crash is not None:
                on_crash(f"{name} crashed: {type(exc).__name__}: {exc}")

    return asyncio.create_task(runner(), name=f"{rt.name}:{name}")


async def cancel(task: asyncio.Task[None] | None, timeout: float = 10.0) -> None:
    """Cancel a task and wait for it to finish (bounded)."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        async with asyncio.timeout(timeout):
            await task
