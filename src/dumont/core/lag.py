"""How late the controller's own event loop runs: a probe that timed out while the controller itself stalled says
nothing about the host.

A probe's deadline is a timer on the event loop. When the loop is held up (a machine short of CPU: a fleet's
controller beside a hundred SSH sessions, or a long step of its own), the timer fires as soon as the loop runs
again, in the same turn as the answer that had long arrived, and the probe times out although the host answered
in time. ``bench/fleet.py`` showed it: at 50 pairs on a 2-core machine, TCP connects to healthy local hosts "timed
out after 0.8 s" three times in a row and ten pairs failed over with no GPU down.

:class:`LoopLag` samples the loop's lateness (a short sleep, and how much longer than asked it took) and
:func:`discount` turns a probe that timed out while the loop was late by at least a quarter of the probe's
timeout into UNKNOWN, which counts as no strike. A host that is really down still fails: its refusal or its
provider's state do not depend on the loop, and once the loop keeps time again its timeouts count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from dumont.core.model import Health, ProbeResult

STALL_FRACTION = 0.25  # a timeout whose window held a stall this long (of the timeout) is no verdict
_TIMED_OUT = 0.98  # a failed probe that took this much of its timeout ended by it


class LoopLag:
    """The loop's lateness over the last ``keep`` seconds, sampled every ``every`` seconds."""

    def __init__(self, *, every: float = 0.05, keep: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.keep, self.clock = every, keep, clock
        self._samples: deque[tuple[float, float, float]] = deque()  # (asked at, woke at, lateness)
        self._asked_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sample from now on (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._sample(), name="loop lag")

    async def stop(self) -> None:
        """Stop sampling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample(self) -> None:
        while True:
            self._asked_at = asked = self.clock()
            await asyncio.sleep(self.every)
            woke = self.clock()
            self.note(asked, woke)

    def note(self, asked: float, woke: float) -> None:
        """Record one sleep of ``every`` seconds asked at ``asked`` that ended at ``woke``."""
        self._samples.append((asked, woke, max(0.0, woke - asked - self.every)))
        while self._samples and self._samples[0][1] < woke - self.keep:
            self._samples.popleft()

    def worst_since(self, since: float) -> float:
        """The longest stretch since ``since`` that the loop ran late: of each sleep, the part past its due time
        that falls after ``since``, the sleep still under way included (the loop may be late this very turn)."""
        def overlap(asked: float, woke: float) -> float:
            return max(0.0, woke - max(asked + self.every, since))

        worst = max((overlap(asked, woke) for asked, woke, late in self._samples if late > 0), default=0.0)
        if self._asked_at is not None:
            worst = max(worst, overlap(self._asked_at, self.clock()))
        return worst


def discount(results: Sequence[ProbeResult], stall: float, timeout: float) -> tuple[ProbeResult, ...]:
    """``results`` with each probe that timed out during a stall of at least ``STALL_FRACTION`` of ``timeout`` made
    UNKNOWN: the controller did not give it its time."""
    if stall < STALL_FRACTION * timeout:
        return tuple(results)
    return tuple(
        replace(r, health=Health.UNKNOWN, detail=f"{r.detail}, but the controller itself ran {stall:.1f} s late "
                                                 "meanwhile (short of CPU): no verdict on the host")
        if r.health == Health.FAIL and r.seconds >= _TIMED_OUT * timeout else r
        for r in results)
