"""Watching the workspace for changes, so a pass can start within a fraction of a second of a write.

Linux's inotify through ctypes (the agent stays stdlib-only): one watch per directory, new directories watched as
they appear. Where inotify is missing or its watch limit (``fs.inotify.max_user_watches``) is reached, the
watcher falls back to a cheap poll of directory and file times, and says so (``mode`` and ``reason``). The
``watch`` operation blocks until something changed or its timeout passes, so it runs on an agent channel of its
own: scans and pushes never wait behind it. The watcher lives as long as that agent process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import time
from typing import Any

from .common import Json, workspace_dir

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED, IN_Q_OVERFLOW, IN_ISDIR = 0x400, 0x800, 0x8000, 0x4000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF)
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name)
POLL_SECONDS = 1.0
MAX_TOUCHED = 50_000  # more paths than this between two scans: a walk is as cheap as looking at each


class Watcher:
    """Changes under one directory tree, by inotify or, failing that, by polling."""

    def __init__(self, root: str, record: bool = False) -> None:
        self.root = os.fsencode(root)
        self.mode, self.reason = "inotify", ""
        self.fd = -1
        self.dirs: dict[int, bytes] = {}
        self.root_lost = False  # the root itself was removed or moved: a directory made in its place is unwatched
        self.overflows = 0  # how often the queue overflowed (and every watch was set again)
        # With ``record``, the paths events named since ``take_touched`` (each with its directory); None once
        # events were lost or too many came to be worth keeping: then only a walk knows what changed.
        self.touched: set[bytes] | None = set() if record else None
        # Of those, the directories made or moved in: what they hold was never heard of (they were not watched yet),
        # even where a directory of the same name stood before.
        self.made: set[bytes] = set()
        self._record = record
        self._signature: tuple[int, int] | None = None
        try:
            self._libc: Any = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            self.fd = fd
            self._watch_tree(self.root)
        except (OSError, AttributeError) as exc:
            self._fall_back(f"inotify is unavailable ({exc})")

    def _fall_back(self, reason: str) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.mode, self.reason = "poll", reason
        self._signature = self._poll_signature()

    def _watch_tree(self, top: bytes) -> None:
        """Watch ``top`` and every directory under it (again, where watched already: the same watch comes back).

        Each directory is watched before it is listed, so a child made meanwhile is either listed or reported.
        """
        pending = [top]
        while pending:
            path = pending.pop()
            if not self._add(path):
                continue
            try:
                with os.scandir(path) as entries:
                    pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
            except OSError:
                continue  # removed meanwhile: its removal is itself a change

    def _add(self, path: bytes) -> bool:
        wd = self._libc.inotify_add_watch(self.fd, path, MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR):
                return False  # gone already: its removal is itself a change
            if code == errno.ENOSPC:
                raise OSError(code, "the inotify watch limit is reached (fs.inotify.max_user_watches)")
            raise OSError(code, os.strerror(code))
        self.dirs[wd] = path
        return True

    def close(self) -> None:
        """Release the inotify descriptor (its watches go with it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def wait(self, timeout: float) -> bool:
        """True as soon as something under the tree changed (then drained), False when ``timeout`` passed."""
        if self.mode == "poll":
            return self._poll(timeout)
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            self._drain()
        except OSError as exc:
            self._fall_back(str(exc))
        return True

    def _drain(self) -> None:
        overflowed = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                break
            offset = 0
            while offset + EVENT.size <= len(data):
                wd, mask, _, length = EVENT.unpack_from(data, offset)
                name = data[offset + EVENT.size: offset + EVENT.size + length].rstrip(b"\0")
                offset += EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    overflowed = True  # events were lost, a new directory's creation perhaps among them
                    self.touched = None
                    continue
                parent = self.dirs.get(wd)
                self._note(parent, name, mask)
                if parent == self.root and mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self.root_lost = True
                if mask & IN_IGNORED:
                    self.dirs.pop(wd, None)  # the directory is gone; its watch went with it
                elif parent is not None and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                    self._watch_tree(os.path.join(parent, name))
        if overflowed and not self.root_lost:
            # A directory made while the queue was full was never watched, and no later write under it would
            # ever be heard: set the watches on the whole tree again (existing ones come back unchanged).
            self.overflows += 1
            self._watch_tree(self.root)

    def _note(self, parent: bytes | None, name: bytes, mask: int) -> None:
        """Record the paths one event names, when recording."""
        if self.touched is None:
            return
        if parent is None:
            self.touched = None  # an event of a watch we no longer know: only a walk can tell
            return
        self.touched.add(parent)  # a name made, removed or renamed in it changes its own times
        if name:
            self.touched.add(os.path.join(parent, name))
            if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                self.made.add(os.path.join(parent, name))
        if len(self.touched) > MAX_TOUCHED:
            self.touched = None

    def take_touched(self) -> tuple[set[bytes], set[bytes]] | None:
        """The paths touched since the last call and the directories made among them (None: unknown, walk), and
        start recording afresh."""
        touched, made = self.touched, self.made
        self.touched = set() if self._record else None
        self.made = set()
        return None if touched is None else (touched, made)

    def _poll(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            signature = self._poll_signature()
            if signature != self._signature:
                self._signature = signature
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_SECONDS, left))

    def _poll_signature(self) -> tuple[int, int]:
        newest, count = 0, 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
                count += 1
        return newest, count


_WATCHERS: dict[str, Watcher] = {}


def watch(args: Json) -> Json:
    """Wait up to ``timeout`` seconds for a change in the workspace; say how the watcher works."""
    root = args.get("root") or workspace_dir()
    watcher = _WATCHERS.get(root)
    if watcher is not None and watcher.root_lost:
        watcher.close()  # the workspace was removed or moved away; whatever stands there now needs new watches
        del _WATCHERS[root]
        watcher = None
    if watcher is None:
        if not os.path.isdir(root):
            time.sleep(min(float(args.get("timeout", 30)), POLL_SECONDS))
            return {"changed": False, "mode": "none", "reason": f"{root} does not exist"}
        watcher = _WATCHERS[root] = Watcher(root)
        # What changed before the watch began is unknown: say "changed", and the pass that follows covers it.
        return {"changed": True, "started": True, "mode": watcher.mode, "reason": watcher.reason,
                "watched_dirs": len(watcher.dirs)}
    changed = watcher.wait(float(args.get("timeout", 30)))
    return {"changed": changed, "mode": watcher.mode, "reason": watcher.reason, "watched_dirs": len(watcher.dirs)}
