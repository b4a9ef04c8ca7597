"""The agent's watcher on a real directory: inotify sees writes, new directories and deletions; the poll
fallback sees them too, and a quiet tree times out."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dumont.agent import watch
from dumont.agent.watch import Watcher


def later(action: object, delay: float = 0.05) -> threading.Timer:
    timer = threading.Timer(delay, action)  # type: ignore[arg-type]
    timer.start()
    return timer


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_writes_new_folders_and_deletions_are_seen_and_quiet_times_out(
        tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "POLL_SECONDS", 0.05)
    watcher = Watcher(str(tmp_path))
    if mode == "poll":
        watcher._fall_back("forced by the test")
    elif watcher.mode != "inotify":
        pytest.skip(f"no inotify here: {watcher.reason}")
    assert watcher.mode == mode
    started = time.monotonic()
    assert not watcher.wait(0.2) and time.monotonic() - started >= 0.2
    later(lambda: (tmp_path / "a.txt").write_text("x"))
    assert watcher.wait(5)
    later(lambda: (tmp_path / "new" / "deep").mkdir(parents=True))
    assert watcher.wait(5)
    while watcher.wait(0.2):  # drain what the mkdir left, until the tree is quiet
        pass
    later(lambda: (tmp_path / "new" / "deep" / "b.bin").write_bytes(b"y"))
    assert watcher.wait(5), "a file in a folder created after the watch began"
    later((tmp_path / "a.txt").unlink)
    assert watcher.wait(5)


def test_the_watch_operation_watches_a_workspace_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    monkeypatch.setattr(watch, "_WATCHERS", {})
    assert watch.watch({"root": str(root), "timeout": 0})["started"]  # the first call sets the watches
    if watch._WATCHERS[str(root)].mode != "inotify":
        pytest.skip("no inotify here")
    root.rmdir()
    root.mkdir()  # may get the old directory's inode number: only the root's own events tell
    answers = [watch.watch({"root": str(root), "timeout": 0.1}) for _ in range(3)]  # the removal, then anew
    assert [bool(a.get("started")) for a in answers] == [False, True, False]
    later(lambda: (root / "after.txt").write_text("x"))
    assert watch.watch({"root": str(root), "timeout": 5})["changed"]


def _queue_limit() -> int:
    try:
        return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except (OSError, ValueError):
        return 16384


def test_folders_made_while_the_queue_overflowed_are_watched_afterwards(tmp_path: Path) -> None:
    """Given a queue that overflowed (events lost, new folders' creation among them), when it is drained, then
    the watcher sets watches on the whole tree again, so a later write inside such a folder is still seen (the
    1,000,000-file bench wrote its files under a watched root and a changed pass then looked unchanged)."""
    limit = _queue_limit()
    flood = tmp_path / "flood"
    flood.mkdir()
    watcher = Watcher(str(tmp_path))
    assert watcher.mode == "inotify", f"the agent's hosts and this suite run on Linux: {watcher.reason}"
    for i in range(limit // 2 + 100):  # a create and a close-write each: more events than the queue holds
        (flood / f"{i}").write_bytes(b"")
    (tmp_path / "made-after-the-overflow" / "deep").mkdir(parents=True)
    assert watcher.wait(0), "an overflow is a change"
    while watcher.wait(0.05):
        pass
    later(lambda: (tmp_path / "made-after-the-overflow" / "deep" / "late.bin").write_bytes(b"x"))
    assert watcher.wait(5), "a write in a folder whose creation was lost in the overflow"
    assert watcher.overflows >= 1


def test_folders_made_in_one_go_are_all_watched(tmp_path: Path) -> None:
    """Given folders made in one go (the watcher hears only of the top one), then every one of them is watched."""
    watcher = Watcher(str(tmp_path))
    assert watcher.mode == "inotify", f"the agent's hosts and this suite run on Linux: {watcher.reason}"
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)  # all made before the watcher hears of "a"
    assert watcher.wait(5)
    while watcher.wait(0.05):
        pass
    later(lambda: (tmp_path / "a" / "b" / "c" / "f.bin").write_bytes(b"x"))
    assert watcher.wait(5)
