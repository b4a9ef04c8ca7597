"""`dumont run` learns of its children's exits through pidfds: no thread started per ssh client it runs."""

from __future__ import annotations

import asyncio
import sys
import threading
import warnings

from dumont.cli.controller_cmd import watch_children_by_pidfd


def test_subprocesses_of_the_controller_s_loop_start_no_watcher_thread() -> None:
    """On Python 3.11 watch_children_by_pidfd sets the pidfd watcher; 3.12 uses one by itself (What's New in 3.12),
    and the call leaves it so. Either way twenty children start no thread and report their own exit codes."""
    async def run_twenty() -> tuple[list[int], int, object]:
        watch_children_by_pidfd()
        before = threading.active_count()
        procs = [await asyncio.create_subprocess_exec("sh", "-c", f"exit {n % 3}") for n in range(20)]
        during = threading.active_count() - before
        codes = [await proc.wait() for proc in procs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return codes, during, asyncio.get_child_watcher()

    try:
        codes, threads, watcher = asyncio.run(run_twenty())
    finally:
        if sys.version_info < (3, 12):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())  # as the other tests' loops expect
    assert codes == [n % 3 for n in range(20)]
    assert threads == 0, "a thread per child: the loop waits for each to start"
    assert isinstance(watcher, asyncio.PidfdChildWatcher)
