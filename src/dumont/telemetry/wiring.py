"""One controller's telemetry: metrics, the sampler, notifications and the dashboard, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from dumont.api.server import Extension
from dumont.core.controller import Controller
from dumont.telemetry.http import routes
from dumont.telemetry.metrics import Metrics
from dumont.telemetry.notify import Notifier
from dumont.telemetry.sampler import SAMPLE_SECONDS, Sampler


class Telemetry:
    """Listens to the controller's events and serves what it sees; ``async with`` runs its background work."""

    def __init__(self, controller: Controller, *, sample_interval: float = SAMPLE_SECONDS) -> None:
        ctx = controller.ctx
        self.controller = controller
        self.sampler = Sampler(ctx, controller.pairs, interval=sample_interval)
        self.metrics = Metrics(controller, self.sampler)
        self.notifier = Notifier.from_config(ctx.config, on_outcome=self.metrics.on_notification)
        ctx.listeners.append(self.metrics.on_event)
        ctx.listeners.append(self.sampler.on_event)
        if self.notifier is not None:
            ctx.listeners.append(self.notifier.on_event)
        self.extensions: tuple[Extension, ...] = (routes(self),)
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Telemetry:
        self._tasks.append(asyncio.create_task(self.sampler.run(), name="telemetry:sampler"))
        if self.notifier is not None:
            self._tasks.append(asyncio.create_task(self.notifier.run(), name="telemetry:notifier"))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.notifier is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.notifier.deliver_due()  # what the last moments raised (a stop is no reason to lose it)
