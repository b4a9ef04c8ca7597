"""The Vast emulator's boot timers: one pending boot per instance, cancellable, failures logged and forgotten."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dumont.localcloud.emulators.vast_boot import BootTimers


async def test_a_boot_runs_once_its_delay_has_passed() -> None:
    """Armed with no delay, the boot runs for that instance and the timer forgets it."""
    booted: list[int] = []

    async def boot(instance_id: int) -> None:
        booted.append(instance_id)

    timers = BootTimers(boot)
    task = timers.arm(7, 0)
    assert timers.is_armed(7)
    await asyncio.wait_for(task, 5)
    assert booted == [7] and not timers.is_armed(7)


async def test_rearming_replaces_and_cancelling_prevents_the_boot() -> None:
    """A second arm cancels the first; a cancelled boot never runs; cancel_all waits for every task to end."""
    booted: list[int] = []

    async def boot(instance_id: int) -> None:
        booted.append(instance_id)

    timers = BootTimers(boot)
    first = timers.arm(1, 60)
    second = timers.arm(1, 60)
    other = timers.arm(2, 60)
    with pytest.raises(asyncio.CancelledError):
        await first
    timers.cancel(1)
    timers.cancel(99)  # nothing pending: fine
    with pytest.raises(asyncio.CancelledError):
        await second
    await timers.cancel_all()
    assert other.cancelled() and not timers.is_armed(2) and booted == []


async def test_a_failing_boot_is_logged_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    """An error in a boot does not escape the task unseen: it is logged with the instance id."""

    async def boot(instance_id: int) -> None:
        raise RuntimeError("sshd would not start")

    timers = BootTimers(boot)
    with caplog.at_level(logging.ERROR, logger="dumont.localcloud.vast"):
        await asyncio.wait_for(timers.arm(3, 0), 5)
    assert "booting Vast instance 3 failed" in caplog.text and "sshd would not start" in caplog.text
    assert not timers.is_armed(3)
