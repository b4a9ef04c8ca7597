"""Background work: an unexpected crash is reported, cancellation is never swallowed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from dumont.config import InstanceConfig, PairConfig
from dumont.core.faults import InternalErrors
from dumont.core.model import PairState
from dumont.core.pair import PairRuntime, cancel, start_background
from dumont.endpoint.local import LocalEndpoint


def errors_ctx(events: list[tuple[str | None, str, str]]) -> Any:
    """What start_background needs of the controller: somewhere to report an unexpected error."""
    return SimpleNamespace(internal_errors=InternalErrors(lambda pair, kind, reason, data: events.append(
        (pair, kind, reason))))


def runtime() -> PairRuntime:
    config = PairConfig(name="main", endpoint_listen="127.0.0.1:2222", primary=InstanceConfig("vast", "1"),
                        standby=InstanceConfig("gcp", None))
    return PairRuntime(config, PairState.SYNCING, 1, None, None, LocalEndpoint("main"))


async def test_a_crash_is_reported_to_the_owner() -> None:
    reported: list[str] = []

    async def broken() -> None:
        raise KeyError("surprise")

    events: list[tuple[str | None, str, str]] = []
    task = start_background(errors_ctx(events), runtime(), "recovery", broken, on_crash=reported.append)
    await task
    assert reported == ["recovery crashed: KeyError: 'surprise'"]
    assert [(pair, kind) for pair, kind, _ in events] == [("main", "internal_error")]
    assert "KeyError" in events[0][2]


async def test_cancellation_propagates() -> None:
    started = asyncio.Event()

    async def forever() -> Any:
        started.set()
        await asyncio.Event().wait()

    task = start_background(errors_ctx([]), runtime(), "sync", forever)
    await started.wait()
    await cancel(task)
    assert task.cancelled()



def test_the_rpo_estimate_is_the_oldest_pending_change_with_a_watcher_else_the_lag() -> None:
    from dataclasses import replace

    from dumont.core.model import SyncStatus
    from dumont.core.pair import rpo_estimate

    rt = runtime()
    assert rpo_estimate(rt, 100.0, on_change=True) is None, "no pass yet: nothing to estimate from"
    rt.sync = SyncStatus(last_good_at=90.0, last_started_at=89.0)
    assert rpo_estimate(rt, 100.0, on_change=False) == 10.0, "without a watcher: the lag"
    assert rpo_estimate(rt, 100.0, on_change=True) == 10.0, "a watcher that never answered is no watcher"
    rt.watch_mode = "inotify"
    assert rpo_estimate(rt, 100.0, on_change=True) == 0.0, "nothing pending"
    rt.changed_at = 99.25
    assert rpo_estimate(rt, 100.0, on_change=True) == 0.75
    rt.changed_at, rt.sync = None, replace(rt.sync, running=True, last_started_at=99.5)
    assert rpo_estimate(rt, 100.0, on_change=True) == 0.5, "what the running pass carries is not committed"
