"""A controller-shaped fake for telemetry: real store, real pair runtimes and relays, a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dumont.config import Config, InstanceConfig, PairConfig
from dumont.core.faults import InternalErrors
from dumont.core.model import HostRef, PairState
from dumont.core.pair import PairRuntime
from dumont.endpoint.local import LocalEndpoint
from dumont.store.sqlite import Store

GPU = HostRef("vast", "7001", "127.0.0.1", 40001, "root", "gpu", "vast-7001")
CPU = HostRef("gcp", "standby-1", "127.0.0.1", 40002, "root", "cpu", "gcp-standby-1")


@dataclass
class Clock:
    """Time that moves only when the test says so."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeController:
    """What telemetry reads from a controller: ``pairs``, ``ticks`` and ``ctx`` (config, store, clock, events)."""

    ctx: Any
    pairs: dict[str, PairRuntime]
    ticks: int = 0
    last_tick_at: float | None = None
    events: list[tuple[str | None, str, str, dict[str, Any]]] = field(default_factory=list)

    def event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any] | None = None) -> None:
        """Record an event and tell the listeners, as ControllerContext.event does."""
        self.events.append((pair, kind, reason, data or {}))
        self.ctx.store.add_event(pair, kind, reason, data or {})
        for listener in self.ctx.listeners:
            listener(pair, kind, reason, data or {})


def make_pair(name: str = "main") -> PairRuntime:
    """A synced pair: GPU primary, CPU standby."""
    config = PairConfig(name=name, endpoint_listen="127.0.0.1:0", primary=InstanceConfig(provider="vast"),
                        standby=InstanceConfig(provider="gcp"))
    return PairRuntime(config, PairState.SYNCING, 1, GPU, CPU, LocalEndpoint(name))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def controller(tmp_path: Path, clock: Clock) -> AsyncIterator[FakeController]:
    store = Store(tmp_path / "state.db")
    ctx = SimpleNamespace(config=Config(), store=store, clock=clock, listeners=[])
    pair = make_pair()
    await pair.endpoint.start(("127.0.0.1", 0), 30)
    fake = FakeController(ctx, {"main": pair})
    ctx.event = fake.event
    ctx.internal_errors = InternalErrors(fake.event)
    yield fake
    await pair.endpoint.stop()
    store.close()
