"""A long command stopped with SIGTERM cleans up as on Ctrl-C: its work is cancelled and its finally blocks run."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from dumont.cli.common import run_until_done


def test_sigterm_cancels_the_work_so_its_clean_up_runs() -> None:
    cleaned: list[str] = []

    async def work() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()  # would wait for ever: only the cancellation ends it
        finally:
            cleaned.append("hosts stopped")

    with pytest.raises(KeyboardInterrupt):
        run_until_done(work())
    assert cleaned == ["hosts stopped"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler went with the loop


def test_work_that_finishes_returns_its_value() -> None:
    async def work() -> int:
        return 7

    assert run_until_done(work()) == 7
