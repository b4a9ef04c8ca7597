"""When the Vast emulator's instances boot: one timer per instance that pulls and boots, then starts its host.

A real instance is not reachable while Vast pulls its image and starts its container: a first launch "can take
5-60 minutes depending on image size" (docs: choosing/templates). The emulator starts an instance's host only
when that delay (``DUMONT_LOCAL_VAST_DELAY_SECONDS``, scaled down) has passed, by an asyncio task per instance.
A stop, an outbid, a kill or a destroy cancels the task; a reboot or a start arms a new one; after a restart of
the local cloud the emulator arms again the instances that were still booting, for what is left of their delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("dumont.localcloud.vast")

Boot = Callable[[int], Awaitable[None]]


class BootTimers:
    """At most one pending boot per instance id; each runs ``boot(instance_id)`` once its delay has passed."""

    def __init__(self, boot: Boot) -> None:
        self._boot = boot
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def arm(self, instance_id: int, after: float) -> asyncio.Task[None]:
        """Boot ``instance_id`` in ``after`` seconds (replacing a boot already pending for it); the task doing it."""
        self.cancel(instance_id)
        task = asyncio.create_task(self._run(instance_id, max(0.0, after)), name=f"vast-boot-{instance_id}")
        self._tasks[instance_id] = task
        return task

    def is_armed(self, instance_id: int) -> bool:
        """Whether a boot is pending for ``instance_id``."""
        task = self._tasks.get(instance_id)
        return task is not None and not task.done()

    def cancel(self, instance_id: int) -> None:
        """Forget the pending boot of ``instance_id``, if any (it will not start its host)."""
        task = self._tasks.pop(instance_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def cancel_all(self) -> None:
        """Cancel every pending boot and wait until they are gone."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, instance_id: int, after: float) -> None:
        await asyncio.sleep(after)  # the emulated pull and boot: this is the delay itself, not a synchronisation
        try:
            await self._boot(instance_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # a boot that fails must say so; the instance then reads as exited
            log.exception("booting Vast instance %d failed", instance_id)
        finally:
            if self._tasks.get(instance_id) is asyncio.current_task():
                del self._tasks[instance_id]
