"""The spare tree: the pruned snapshot, kept to become the next pass's staging tree.

A staged tree built from nothing costs a hard link per unchanged file, and pruning the oldest snapshot an unlink
per file again: a pass that changed ten files of a million did two million system calls on the standby. Instead,
pruning renames the oldest snapshot to ``spare/`` (one call), and the next pass renames its tree into the staging
area and patches it into the base snapshot: only the paths that differ between the two are unlinked and linked
again, which is what the last few passes changed. A snapshot's files are never written (rsync writes new inodes and
renames them), so the spare holds exactly what its manifest says, as the snapshot did.

Where there is no spare (the first passes, after a crash in the middle of a pass, or after ``_make_room`` needed its
space), the staging tree is linked whole from the base as before.
"""

from __future__ import annotations

import contextlib
import os
import stat

from .common import KIND, LINK, PATH, Entry, data_dir, read_json, remove_tree


def spare_dir() -> str:
    """Where the pruned snapshot waits to be reused."""
    return os.path.join(data_dir(), "spare")


def keep_as_spare(snapshot: str) -> bool:
    """Move a pruned snapshot's directory to the spare's place; False (nothing moved) when a spare is there."""
    if os.path.lexists(spare_dir()):
        return False
    os.rename(snapshot, spare_dir())
    return True


def drop_spare() -> None:
    """Remove the spare (its space is needed, or it cannot be trusted)."""
    remove_tree(spare_dir())


def take_spare(tree: str) -> list[Entry] | None:
    """Rename the spare's tree to ``tree`` and return its manifest; None (and no spare left) when it has none."""
    manifest = read_json(os.path.join(spare_dir(), "manifest.json"))
    source = os.path.join(spare_dir(), "tree")
    if not isinstance(manifest, list) or not os.path.isdir(source):
        drop_spare()
        return None
    os.rename(source, tree)
    drop_spare()
    return manifest


def _same_entry(old: Entry | None, new: Entry | None) -> bool:
    """Whether the path can stay as it is: a directory stays a directory (its attributes are set at commit), and
    anything else must be the very same entry."""
    if old is None or new is None or old[KIND] != new[KIND]:
        return False
    return old[KIND] == "d" or old == new


def patch(tree: str, have: list[Entry], base_tree: str, want: list[Entry]) -> int:
    """Make ``tree`` (which holds ``have``) hold ``want``, linking its files from ``base_tree``; return the links
    made. ``want`` is in manifest order (parents before their children); directories made are left 0700, as the
    commit sets every directory's mode and times from the manifest."""
    btree, bbase = os.fsencode(tree), os.fsencode(base_tree)
    wanted = {e[PATH]: e for e in want}
    # A hard-link group is linked from the base every time: equal entries in the spare may be another inode (the
    # group was copied again since), and a group must be one inode.
    leaders = {e[LINK] for e in want if e[LINK] is not None}
    grouped = {p for p, e in wanted.items() if e[LINK] is not None or p in leaders}
    held = {e[PATH]: e for e in have if e[PATH] != "."}
    keep = {p for p, e in held.items() if p not in grouped and _same_entry(e, wanted.get(p))}
    opened: set[bytes] = set()
    # Children before their parents, so a directory that goes is empty of what we know of by then.
    for name in sorted((p for p in held if p not in keep), key=os.fsencode, reverse=True):
        full = os.path.join(btree, os.fsencode(name))
        _writable(os.path.dirname(full), opened)
        if held[name][KIND] == "d":
            remove_tree(os.fsdecode(full))
        else:
            with contextlib.suppress(FileNotFoundError):  # under a directory that went already
                os.unlink(full)
    linked = 0
    for entry in want:
        name = entry[PATH]
        if name in keep:
            continue
        full = os.path.join(btree, os.fsencode(name))
        _writable(os.path.dirname(full), opened)
        if entry[KIND] == "d":
            os.mkdir(full, 0o700)
        else:
            os.link(os.path.join(bbase, os.fsencode(name)), full, follow_symlinks=False)
            linked += 1
    return linked


def _writable(directory: bytes, opened: set[bytes]) -> None:
    """Let us write in a directory of the old snapshot that its user made read-only (commit resets its mode)."""
    if directory in opened:
        return
    mode = os.lstat(directory).st_mode
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        os.chmod(directory, stat.S_IMODE(mode) | stat.S_IRWXU)
    opened.add(directory)
