"""Manifests: what a complete copy of a workspace holds, entry by entry, and how two of them differ.

An entry is ``(path, kind, mode, size, mtime_ns, data, link)``: ``kind`` is ``f`` (file), ``d`` (directory) or
``l`` (symlink); ``data`` is the content hash of a file (``None`` when the file was changing while it was read) or
the target of a symlink; ``link`` names the first path of the file's hard-link group inside the tree. Paths are
``os.fsdecode`` strings, so names that are not valid UTF-8 survive. Everything here is pure.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

FILE, DIRECTORY, SYMLINK = "f", "d", "l"


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a manifest."""

    path: str
    kind: str
    mode: int
    size: int
    mtime_ns: int
    data: str | None
    link: str | None = None

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> Entry:
        """Build an entry from the agent's list form."""
        path, kind, mode, size, mtime_ns, data, link = raw
        return cls(str(path), str(kind), int(mode), int(size), int(mtime_ns), data, link)

    def to_wire(self) -> list[Any]:
        """The agent's list form of this entry."""
        return [self.path, self.kind, self.mode, self.size, self.mtime_ns, self.data, self.link]

    @property
    def is_hot(self) -> bool:
        """A file whose content could not be read consistently (it changed while being hashed)."""
        return self.kind == FILE and self.data is None

    def same_content_and_attributes(self, other: Entry) -> bool:
        """True when copying ``other`` over this entry would change nothing (directory times aside)."""
        if self.kind != other.kind or self.mode != other.mode or self.link != other.link:
            return False
        if self.kind == DIRECTORY:
            return True
        return self.size == other.size and self.mtime_ns == other.mtime_ns and self.data == other.data


def path_key(path: str) -> bytes:
    """Sort key matching the agent's: the raw bytes of the path."""
    return os.fsencode(path)


def _entry_key(entry: Entry) -> bytes:
    return os.fsencode(entry.path)


@dataclass(frozen=True)
class Manifest:
    """A whole tree: entries sorted by path bytes."""

    entries: tuple[Entry, ...]

    @classmethod
    def from_wire(cls, raw: Iterable[Sequence[Any]]) -> Manifest:
        """Build a manifest from the agent's list-of-lists form."""
        return cls.of(Entry.from_wire(item) for item in raw)

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> Manifest:
        """A manifest holding ``entries`` in canonical order."""
        return cls(tuple(sorted(entries, key=lambda e: path_key(e.path))))

    def with_changes(self, changed: Iterable[Entry], removed: Iterable[str]) -> Manifest:
        """This manifest with ``changed`` entries put in (new or replacing theirs) and ``removed`` paths taken out:
        a scan's answer of only what changed, merged in one pass over the sorted entries instead of a sort."""
        new = {e.path: e for e in changed}
        gone = set(removed) | new.keys()
        kept = [e for e in self.entries if e.path not in gone]
        if not new:
            return Manifest(tuple(kept))
        added = sorted(new.values(), key=_entry_key)
        return Manifest(tuple(heapq.merge(kept, added, key=_entry_key)))

    def changes_from(self, other: Manifest) -> tuple[list[Entry], list[str]]:
        """What :meth:`with_changes` must put into ``other`` to give this manifest: entries new or different,
        and the paths of ``other`` gone."""
        before, after = other.index, self.index
        return ([e for e in self.entries if (old := before.get(e.path)) is not e and old != e],
                [e.path for e in other.entries if e.path not in after])

    def to_wire(self) -> list[list[Any]]:
        """The agent's list-of-lists form."""
        return [e.to_wire() for e in self.entries]

    def by_path(self) -> dict[str, Entry]:
        """Entries keyed by path (a new dict the caller may change)."""
        return dict(self.index)

    # A manifest never changes, and a million-entry one is costly to walk: what is derived from it is kept.
    @cached_property
    def index(self) -> Mapping[str, Entry]:
        """Entries keyed by path (shared: do not change it)."""
        return MappingProxyType({e.path: e for e in self.entries})

    @property
    def files(self) -> list[Entry]:
        """The regular files."""
        return [e for e in self.entries if e.kind == FILE]

    @cached_property
    def file_count(self) -> int:
        """How many regular files the tree holds."""
        return sum(1 for e in self.entries if e.kind == FILE)

    @cached_property
    def total_bytes(self) -> int:
        """The sum of the regular files' sizes."""
        return sum(e.size for e in self.entries if e.kind == FILE)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form; identical to the agent's ``manifest_digest``."""
        return self._digest

    @cached_property
    def _digest(self) -> str:
        return manifest_digest(self.to_wire())


def manifest_digest(wire: list[list[Any]]) -> str:
    """SHA-256 of the canonical JSON encoding of a manifest's list form."""
    data = json.dumps(wire, separators=(",", ":"), ensure_ascii=True, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TreeDiff:
    """What must happen to ``base`` to make it ``source``."""

    changed: tuple[str, ...]  # paths to copy from the source (new, or different content or attributes)
    deleted: tuple[str, ...]  # paths in the base that the source no longer has
    hot: tuple[str, ...]  # files changing right now on the source; their base version is kept this pass

    @property
    def is_empty(self) -> bool:
        """True when the source matches the base (hot files aside)."""
        return not self.changed and not self.deleted


def diff_trees(base: Manifest | None, source: Manifest) -> TreeDiff:
    """Compare a source manifest with the standby's base snapshot."""
    old = base.index if base else {}
    changed: list[str] = []
    hot: list[str] = []
    for entry in source.entries:
        if entry.is_hot:
            if entry.path != ".":
                hot.append(entry.path)
            continue
        previous = old.get(entry.path)
        if previous is entry or entry.path == ".":  # a scan merged from a delta shares the unchanged entries
            continue
        if previous is None or not previous.same_content_and_attributes(entry):
            changed.append(entry.path)
    new_paths = source.index
    deleted = [p for p in old if p not in new_paths and p != "."]
    changed = _with_whole_link_groups(changed, source)
    return TreeDiff(tuple(changed), tuple(sorted(deleted, key=path_key)), tuple(hot))


def _with_whole_link_groups(changed: list[str], source: Manifest) -> list[str]:
    """When one member of a hard-link group is copied, copy them all so rsync can recreate the group."""
    groups: dict[str, list[str]] = {}
    for entry in source.entries:
        if entry.link is not None:
            groups.setdefault(entry.link, [entry.link]).append(entry.path)
    wanted = set(changed)
    for members in groups.values():
        if wanted.intersection(members):
            wanted.update(members)
    return sorted(wanted, key=path_key)


def expected_after_pass(source: Manifest, base: Manifest | None, kept_from_base: Iterable[str]) -> Manifest:
    """The snapshot a pass produces: the source, except ``kept_from_base`` paths, which keep the base's version.

    A kept path the base never had is simply absent (it arrives with a later pass). A directory is kept only if
    it still has to exist to hold kept children.
    """
    kept = set(kept_from_base)
    if not kept:
        return source  # a scan is a whole tree: every parent is there, every group has its leader
    old = base.index if base else {}
    result: dict[str, Entry] = {}
    for entry in source.entries:
        if entry.path not in kept:
            result[entry.path] = entry
    for path in kept:
        previous = old.get(path)
        if previous is not None:
            result[path] = previous
        else:
            result.pop(path, None)
    _drop_orphans(result)
    return Manifest.of(result.values())


def _drop_orphans(result: dict[str, Entry]) -> None:
    """Remove entries whose parent directory is not in the tree, and link leaders that vanished."""
    for path in sorted(result, key=lambda p: path_key(p).count(b"/")):
        parent = os.path.dirname(path)
        if parent and (parent not in result or result[parent].kind != DIRECTORY):
            del result[path]
    leaders: dict[str, list[str]] = {}
    for entry in result.values():
        if entry.link is not None:
            leaders.setdefault(entry.link, []).append(entry.path)
    for leader, members in leaders.items():
        if leader in result and result[leader].kind == FILE:
            continue
        # The group lost its leader: its first remaining member leads it now.
        members.sort(key=path_key)
        new_leader = members[0]
        for member in members:
            entry = result[member]
            link = None if member == new_leader or len(members) == 1 else new_leader
            result[member] = Entry(entry.path, entry.kind, entry.mode, entry.size, entry.mtime_ns, entry.data, link)


def mismatches(expected: Manifest, actual: Manifest) -> list[str]:
    """Paths whose entry differs between the two manifests (present in only one, or different)."""
    want, have = expected.index, actual.index
    return sorted(
        (p for p in set(want) | set(have) if want.get(p) != have.get(p)),
        key=path_key,
    )


def describe_mismatch(path: str, expected: Entry | None, actual: Entry | None) -> str:
    """One readable line about a mismatching path."""
    shown = os.fsencode(path).decode("utf-8", "backslashreplace")
    if expected is None:
        return f"{shown}: present but not in the manifest"
    if actual is None:
        return f"{shown}: missing"
    fields = [
        name
        for name, a, b in (
            ("kind", expected.kind, actual.kind),
            ("mode", expected.mode, actual.mode),
            ("size", expected.size, actual.size),
            ("mtime", expected.mtime_ns, actual.mtime_ns),
            ("content", expected.data, actual.data),
            ("hard link", expected.link, actual.link),
        )
        if a != b
    ]
    return f"{shown}: differs in {', '.join(fields)}"
