"""Bringing the last scan up to date from the paths the watcher heard of, instead of walking the whole tree.

inotify names every path a change touches, inside the very system call that makes it (``tracker``). When the
watcher vouches for the tree (``Tracker.changes``), a scan looks again only at those paths and their directories:
each is ``lstat``-ed and hashed as a walk would do it (the scan cache decides what is read again); a directory that
is new there is walked whole (what was made in it before its watch was set is found that way); a path that is
gone takes whatever was under it along. The answer is the one a walk would give.

Hard links are the exception: a group is found across the whole tree, so where a touched path is a member or a
leader of one, or a file with more than one name, this gives up and the caller walks.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Any

from .common import DATA, KIND, LINK, PATH, Entry
from .scan import CACHE_TRUST_SECONDS, SPARSE_MIN_BYTES, entry_for, known_hash, no_known_hash, stat_key, walk


class _GiveUp(Exception):
    """A hard link is involved: only a walk finds its group."""


@dataclass
class Rescanned:
    """The last scan brought up to date."""

    entries: dict[str, Entry]
    skipped: list[str]
    sparse: list[str]
    clean: bool  # no file read here was changing while it was read


def rescan(root: str, last: dict[str, Entry], touched: set[bytes], cache: dict[str, list[Any]], *,
           made: set[bytes], skipped: list[str], sparse: list[str]) -> Rescanned | None:
    """The entries of the tree at ``root`` now, from ``last`` and the absolute paths ``touched`` since (``made``:
    the directories made or moved in among them); None when a walk is needed. ``cache`` (the scan cache) is
    brought up to date in place."""
    broot = os.fsencode(root)
    names = _relative(broot, touched)
    if _near_a_group(last, names):
        return None
    update = _Update(broot, dict(last), set(skipped), set(sparse), cache, _relative(broot, made))
    try:
        for name in sorted(names, key=os.fsencode):
            update.look(name, update.entries.get(name))
    except _GiveUp:
        return None
    return Rescanned(update.entries, sorted(update.skipped, key=os.fsencode),
                     sorted(update.sparse, key=os.fsencode), update.clean)


def _near_a_group(last: dict[str, Entry], names: set[str]) -> bool:
    """Whether a touched path is a member or the leader of a hard-link group, or a directory above one (removing
    it removes a member: the others' link count changes without an event in any directory watched)."""
    grouped = {e[PATH] for e in last.values() if e[LINK] is not None}
    if not grouped:
        return False
    grouped |= {e[LINK] for e in last.values() if e[LINK] is not None}
    above = set()
    for path in grouped:
        parent = os.path.dirname(path)
        while parent and parent not in above:
            above.add(parent)
            parent = os.path.dirname(parent)
    return any(name in grouped or name in above for name in names)


def _relative(broot: bytes, touched: set[bytes]) -> set[str]:
    prefix = broot + b"/"
    names = set()
    for path in touched:
        if path == broot:
            names.add(".")
        elif path.startswith(prefix):
            names.add(os.fsdecode(path[len(prefix):]))
    return names


@dataclass
class _Update:
    broot: bytes
    entries: dict[str, Entry]
    skipped: set[str]
    sparse: set[str]
    cache: dict[str, list[Any]]
    made: set[str]
    clean: bool = True

    def look(self, name: str, old: Entry | None) -> None:
        """Look at one touched path again."""
        parent = os.path.dirname(name)
        if name != "." and self.entries.get(parent or ".", [None, None])[KIND] != "d":
            self.drop(name)  # under a path that is gone or no longer a directory
            return
        full = self.broot if name == "." else os.path.join(self.broot, os.fsencode(name))
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            self.drop(name)
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if old is not None and old[KIND] == "d" and not is_dir:
            self.drop(name)
        if is_dir and name != "." and (old is None or old[KIND] != "d" or name in self.made):
            self.drop(name)
            try:
                for rel, child_st in walk(full):  # new here: what was made in it before its watch was set is seen
                    child = name if rel == b"." else f"{name}/{os.fsdecode(rel)}"
                    self.put(child, os.path.join(full, rel) if rel != b"." else full, child_st)
            except FileNotFoundError:
                self.drop(name)  # removed again meanwhile: its removal is an event of the next scan
            return
        self.put(name, full, st)

    def put(self, name: str, full: bytes, st: os.stat_result) -> None:
        """Record one path's entry as a walk would."""
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise _GiveUp(name)
        digest, cached = known_hash(name, st, no_known_hash, self.cache, {})
        entry = entry_for(name, full, st, digest)
        self.sparse.discard(name)
        if entry is None:
            self.entries.pop(name, None)
            self.cache.pop(name, None)
            self.skipped.add(name)
            return
        self.skipped.discard(name)
        self.entries[name] = entry
        if entry[KIND] != "f":
            self.cache.pop(name, None)
            return
        if st.st_size >= SPARSE_MIN_BYTES and st.st_blocks * 512 < st.st_size // 2:
            self.sparse.add(name)
        trusted = cached or st.st_ctime_ns < (time.time() - CACHE_TRUST_SECONDS) * 1e9
        if entry[DATA] is None:
            self.clean = False
            self.cache.pop(name, None)
        elif trusted:
            self.cache[name] = [*stat_key(st), entry[DATA]]
        else:
            self.cache.pop(name, None)

    def drop(self, name: str) -> None:
        """Forget a path and everything under it."""
        prefix = name + "/"
        doomed = [name] if name in self.entries else []
        if self.entries.get(name, [None, None])[KIND] == "d":
            doomed += [p for p in self.entries if p.startswith(prefix)]
        for path in doomed:
            del self.entries[path]
            self.cache.pop(path, None)
            self.sparse.discard(path)
        self.skipped.discard(name)
        self.skipped -= {p for p in self.skipped if p.startswith(prefix)}
