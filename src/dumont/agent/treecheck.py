"""The commit's check of a staged tree against the manifest it must publish, at the cost of what the pass touched.

Every path the manifest names must be in the tree, and nothing else. A file or symlink that is still the base
snapshot's own inode at the same path, where the base's entry is the one expected, was checked when the base was
committed and has not changed since (a snapshot's files are never written: rsync makes new inodes); every other
path, every directory and the root are read again (``lstat``, and a hash where nothing vouches for it). The names
and inodes come from the directories alone (``scandir``), so an unchanged file costs no ``stat``.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Dict, Tuple

from .common import KIND, LINK, PATH, Entry, Failure
from .scan import HashLookup, diff_entries, scan_paths

Listing = Dict[str, Tuple[int, str]]  # path -> (inode, kind: d, f, l, or o for anything else)


def listing(root: str) -> Listing:
    """Every path under ``root`` (``.`` excluded) with its inode and kind, read from the directories only."""
    broot = os.fsencode(root)
    found: Listing = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(broot, rel) if rel else broot) as it:
                for item in it:
                    child = os.path.join(rel, item.name) if rel else item.name
                    if item.is_symlink():
                        kind = "l"
                    elif item.is_dir(follow_symlinks=False):
                        kind = "d"
                        stack.append(child)
                    else:
                        kind = "f" if item.is_file(follow_symlinks=False) else "o"
                    found[os.fsdecode(child)] = (item.inode(), kind)
        except OSError as exc:
            raise Failure("UnreadablePath", f"cannot list {os.fsdecode(rel) or '.'!r} in {root!r}: "
                                            f"{exc.strerror}") from exc
    return found


def check_staged(staged: Listing, expected: list[Entry], base_inodes: Listing, base: list[Entry], *,
                 lookup: HashLookup, tree: str) -> list[str]:
    """What is wrong with ``tree`` (whose ``listing`` is ``staged``) against ``expected``, given the base
    snapshot's manifest and listing; nothing: it may be published."""
    base_index = {e[PATH]: e for e in base}
    wanted = {e[PATH]: e for e in expected}
    problems = [f"{name!r} is not in the manifest" for name in staged if name not in wanted]
    again: list[str] = []
    for entry in expected:
        name = entry[PATH]
        got = staged.get(name)
        if name == ".":
            again.append(name)
        elif got is None:
            problems.append(f"{name!r} is missing")
        elif entry[KIND] == "d" or not _from_base(name, entry, got, base_inodes, base_index):
            again.append(name)
    again = _with_whole_groups(again, expected)
    entries, skipped, _ = scan_paths(tree, again, lookup)
    problems += [f"{name!r} is a special file" for name in skipped]
    problems += diff_entries([wanted[name] for name in again], entries)
    problems += _stray_links(entries, expected, staged)
    return problems


def _from_base(name: str, entry: Entry, got: tuple[int, str], base_inodes: Listing, base_index: dict[str, Entry],
               ) -> bool:
    """Whether the staged path is the base snapshot's own file or symlink, and the base's entry is the one wanted."""
    known = base_inodes.get(name)
    return known is not None and known == got and base_index.get(name) == entry


def _with_whole_groups(names: list[str], expected: list[Entry]) -> list[str]:
    """``names`` plus every member of a hard-link group one of them belongs to (groups are found among the paths
    read together)."""
    groups: dict[str, list[str]] = {}
    for entry in expected:
        if entry[LINK] is not None:
            groups.setdefault(entry[LINK], [entry[LINK]]).append(entry[PATH])
    if not groups:
        return names
    leader_of = {member: leader for leader, members in groups.items() for member in members}
    chosen = set(names)
    for name in names:
        leader = leader_of.get(name)
        if leader is not None:
            chosen.update(groups[leader])
    return sorted(chosen, key=os.fsencode)


def _stray_links(read: list[Entry], expected: list[Entry], staged: Listing) -> list[str]:
    """A file read again that shares its inode with more paths of the tree than its expected hard-link group."""
    counts = Counter(inode for inode, kind in staged.values() if kind == "f")
    size: Counter[str] = Counter()
    for entry in expected:
        if entry[LINK] is not None:
            size[entry[LINK]] += 1
    problems = []
    for entry in read:
        if entry[KIND] != "f":
            continue
        leader = entry[LINK] or entry[PATH]
        want = size[leader] + 1 if size[leader] else 1
        got = staged.get(entry[PATH])
        if got is not None and counts[got[0]] != want:
            problems.append(f"{entry[PATH]!r} shares its inode with paths outside its hard-link group")
    return problems
