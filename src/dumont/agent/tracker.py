"""Knowing, without walking it, what changed in a workspace since the last scan.

A walk of a million files costs seconds of ``lstat`` calls; a pass that finds nothing should cost milliseconds.
The scan keeps one :class:`~.watch.Watcher` per workspace in the agent process, set up before its first walk.
inotify queues an event inside the very system call that changes a file, so when the queue is still empty at
the next scan, nothing under the tree changed since the last scan began, and its result still holds; when it is
not, the paths its events named are all that changed (``rescan`` looks at those again).

The watcher vouches only when all of this is true; otherwise the scan walks the tree as before:
- the watcher runs on inotify (a poll fallback proves nothing) and lost no event (an overflow, or more
  paths than it keeps);
- the workspace root is the same directory the watcher was set on (not removed or moved, then made again: a
  new directory may well get the old one's inode number, so the root's own watch events decide);
- the last walk found no file changing while it was read;
- the controller holds that walk's result (it names the walk's token);
- the last full walk is younger than ``full_walk_seconds``: inotify does not report writes through ``mmap``,
  through a hard link outside the workspace, or by another machine on a network filesystem (inotify(7)), so a
  full walk still runs that often and bounds how late such a change can be seen.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from .watch import Watcher


@dataclass
class Walk:
    """What the last scan under a watcher found: enough to repeat it unchanged, or to bring it up to date by
    looking again at only the paths the watcher heard of since (``agent/rescan.py``)."""

    token: str
    started_at: float  # wall clock, this host
    clean: bool  # no file was changing while it was read
    summary: dict[str, int]
    skipped: list[str]
    sparse: list[str]
    full_at: float = 0.0  # when the last full walk began (a rescan keeps it)
    entries: dict[str, list[Any]] | None = None  # path -> entry, what the scan answered (None: not kept)


@dataclass
class Tracker:
    """One watched workspace and its last walk."""

    root: str
    watcher: Watcher
    identity: tuple[int, int]
    last: Walk | None = None
    _count: int = field(default=0, repr=False)
    _session: str = field(default_factory=lambda: secrets.token_hex(6), repr=False)

    def changes(self, since: object, now: float, full_walk_seconds: float,
                ) -> tuple[Walk | None, tuple[set[bytes], set[bytes]] | None]:
        """The last scan and every path changed since it began (absolute, with each one's directory) with the
        directories made among them, when the watcher can vouch that nothing else changed; ``(None, None)``
        means: walk the whole tree.

        Always drains the queue first, so what the caller reads next sees every change made before it, and
        starts recording afresh, so the next call hears of every change made after it.
        """
        if self.watcher.mode != "inotify":
            return None, None
        self.watcher.wait(0.0)  # drains, and watches directories made since
        touched = self.watcher.take_touched()
        last = self.last
        if last is None or not last.clean or since != last.token or self.watcher.mode != "inotify":
            return None, None
        if self.watcher.root_lost or _identity(self.root) != self.identity:
            return None, None
        if now - last.full_at >= full_walk_seconds:
            return None, None
        return last, touched

    def walked(self, started_at: float, clean: bool, summary: dict[str, int], skipped: list[str],
               sparse: list[str], *, entries: dict[str, list[Any]] | None = None, full: bool = True) -> Walk:
        """Record a scan that began at ``started_at`` (after the queue was drained); return it with its token."""
        self._count += 1
        full_at = started_at if full or self.last is None else self.last.full_at
        self.last = Walk(f"{self._session}-{self._count}", started_at, clean, summary, skipped, sparse, full_at,
                         entries)
        return self.last


_TRACKERS: dict[str, Tracker] = {}


def tracker_for(root: str) -> Tracker:
    """The tracker of ``root``, made (and its watches set) when missing or when ``root`` was made again."""
    known = _TRACKERS.get(root)
    identity = _identity(root)
    if known is not None and known.identity == identity and not known.watcher.root_lost:
        return known  # on a poll fallback too: it never vouches, and setting watches again would fail again
    if known is not None:
        known.watcher.close()
    tracker = _TRACKERS[root] = Tracker(root, Watcher(root, record=True), identity)
    return tracker


def forget(root: str) -> None:
    """Drop the tracker of a workspace that no longer exists."""
    known = _TRACKERS.pop(root, None)
    if known is not None:
        known.watcher.close()


def _identity(root: str) -> tuple[int, int]:
    try:
        st = os.stat(root)
    except OSError:
        return (-1, -1)
    return (st.st_dev, st.st_ino)
