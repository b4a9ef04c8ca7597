"""Turning a snapshot into the live workspace, fast, without ever letting the user's writes reach a snapshot.

Snapshots share unchanged files as hard links, so a live workspace made of links would let an in-place write
(``torch.save`` truncates and rewrites) alter every snapshot holding that file. A standby therefore keeps a
*candidate*: an independent copy of its newest snapshot (no inode shared with any snapshot), refreshed after each
commit by copying only what changed. Failing over is then one rename of the candidate (``mode="candidate"``).

A freshly rented GPU being restored has no history worth keeping, so it promotes by taking its newest snapshot's
tree itself and dropping all its snapshots (``mode="take"``): still one rename, and no copy at all.
"""

from __future__ import annotations

import os
import shutil
import stat
import time

from .common import (
    DATA,
    KIND,
    LINK,
    PATH,
    Entry,
    Failure,
    Json,
    accept_epoch,
    data_dir,
    dump_json,
    read_json,
    remove_tree,
    snapshot_path,
    workspace_dir,
    write_atomic,
)
from .scan import CHUNK, manifest_digest, scan_tree
from .snapshots import apply_attributes, list_snapshots, snapshot_manifest


def candidate_dir() -> str:
    """The promotion-ready copy of the newest snapshot."""
    return os.path.join(data_dir(), "candidate")


def _candidate_seq() -> int | None:
    meta = read_json(os.path.join(data_dir(), "candidate.json"), {}) or {}
    seq = meta.get("seq")
    return int(seq) if seq is not None and os.path.isdir(candidate_dir()) else None


def refresh_candidate(seq: int) -> Json:
    """Make the candidate an independent copy of snapshot ``seq``, copying only what differs from its last state."""
    started = time.time()
    previous = _candidate_seq()
    old: dict[str, Entry] = {}
    if previous is not None and previous in list_snapshots():
        old = {e[PATH]: e for e in snapshot_manifest(previous)}
    else:
        remove_tree(candidate_dir())  # unknown state (a crash mid-refresh): rebuild it whole
    # Marked invalid while it changes: a crash here leaves a candidate nobody will promote.
    write_atomic(os.path.join(data_dir(), "candidate.json"), dump_json({"seq": None}))
    entries = snapshot_manifest(seq)
    source = os.fsencode(os.path.join(snapshot_path(seq), "tree"))
    target = os.fsencode(candidate_dir())
    os.makedirs(target, exist_ok=True)
    new = {e[PATH]: e for e in entries}
    for name in sorted(set(old) - set(new), key=os.fsencode, reverse=True):
        _remove(os.path.join(target, os.fsencode(name)))
    copied = 0
    for entry in entries:  # parents sort before their children
        if entry[PATH] != "." and old.get(entry[PATH]) != entry:
            copied += _place(entry, source, target)
    apply_attributes(target, entries)
    write_atomic(os.path.join(data_dir(), "candidate.json"), dump_json({"seq": seq}))
    return {"seq": seq, "copied_bytes": copied, "seconds": time.time() - started}


def _remove(path: bytes) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(os.fsdecode(path))
    elif os.path.lexists(path):
        os.unlink(path)


def _place(entry: Entry, source: bytes, target: bytes) -> int:
    """Write one entry into the candidate as a new inode; return the bytes copied."""
    rel = os.fsencode(entry[PATH])
    dest = os.path.join(target, rel)
    if entry[KIND] == "d":
        if os.path.lexists(dest) and not os.path.isdir(dest):
            os.unlink(dest)
        os.makedirs(dest, exist_ok=True)
        os.chmod(dest, stat.S_IRWXU | (entry[2] & 0o777))
        return 0
    if entry[KIND] == "f" and entry[LINK] is None and _is_lone_file(dest):
        return _copy_changes(os.path.join(source, rel), dest)
    _remove(dest)
    if entry[KIND] == "l":
        os.symlink(os.fsencode(entry[DATA]), dest)
        return 0
    if entry[LINK] is not None:
        os.link(os.path.join(target, os.fsencode(entry[LINK])), dest)  # the leader was placed first
        return 0
    tmp = dest + b".dumont-tmp"
    shutil.copy2(os.path.join(source, rel), tmp, follow_symlinks=False)
    os.replace(tmp, dest)
    return int(os.lstat(dest).st_size)


def _is_lone_file(path: bytes) -> bool:
    """A regular file with no other name (so rewriting it in place touches nothing else)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _copy_changes(source: bytes, dest: bytes) -> int:
    """Make ``dest`` equal to ``source`` by rewriting only the chunks that differ; return the bytes written.

    A large checkpoint changed in a few places costs a read of both copies (usually cached) instead of a full
    rewrite. The candidate is marked invalid while it changes, so a crash here leaves nothing promotable.
    """
    written = offset = 0
    with open(source, "rb") as src, open(dest, "r+b") as dst:
        while chunk := src.read(CHUNK):
            if dst.read(len(chunk)) != chunk:
                dst.seek(offset)
                dst.write(chunk)
                written += len(chunk)
            offset += len(chunk)
            dst.seek(offset)
        dst.truncate(offset)
    shutil.copystat(source, dest, follow_symlinks=False)
    return written


def promote(args: Json) -> Json:
    """Make the newest snapshot the live workspace (``candidate`` or ``take``, see the module docstring)."""
    started = time.time()
    epoch = accept_epoch(int(args["epoch"]))
    seqs = list_snapshots()
    if not seqs:
        raise Failure("NothingToPromote", "this host holds no complete snapshot to promote")
    seq, mode = seqs[-1], args.get("mode", "candidate")
    entries = snapshot_manifest(seq)
    if mode == "take":
        tree = os.path.join(snapshot_path(seq), "tree")
    else:
        if _candidate_seq() != seq:
            refresh_candidate(seq)  # slow path: the last commit did not refresh it
        tree = candidate_dir()
    displaced = _clear_workspace()
    os.rename(tree, workspace_dir())
    if mode == "take":
        for old in seqs:
            remove_tree(snapshot_path(old))
    else:
        write_atomic(os.path.join(data_dir(), "candidate.json"), dump_json({"seq": None}))
    write_atomic(os.path.join(data_dir(), "promoted.json"),
                 dump_json({"epoch": epoch, "seq": seq, "mode": mode, "at": time.time()}))
    return {"seq": seq, "mode": mode, "digest": manifest_digest(entries), "displaced": displaced,
            "files": sum(1 for e in entries if e[KIND] == "f"), "seconds": time.time() - started}


def _clear_workspace() -> str | None:
    """Move anything at the workspace path aside (never delete a user's files); return where it went."""
    workspace = workspace_dir()
    if not os.path.lexists(workspace):
        os.makedirs(os.path.dirname(workspace) or "/", exist_ok=True)
        return None
    if os.path.isdir(workspace) and not os.path.islink(workspace) and not os.listdir(workspace):
        os.rmdir(workspace)
        return None
    aside = os.path.join(data_dir(), f"displaced-{int(time.time() * 1000)}")
    os.rename(workspace, aside)
    return aside


def retire_workspace(args: Json) -> Json:
    """A former primary becomes a standby: move its live workspace aside until a later snapshot supersedes it.

    The copy is named for the epoch in which it was live (the one before ``epoch``), so the first snapshot
    committed in ``epoch`` lets it go.
    """
    epoch = accept_epoch(int(args["epoch"]))
    workspace = workspace_dir()
    if not os.path.lexists(workspace):
        return {"retired": None}
    aside = os.path.join(data_dir(), f"retired-{epoch - 1}")
    remove_tree(aside)
    os.rename(workspace, aside)
    os.makedirs(workspace)
    return {"retired": aside}


def drop_superseded_retirements(epoch: int) -> list[str]:
    """Remove workspaces retired before ``epoch`` (a snapshot of this epoch now holds the data)."""
    dropped = []
    for name in os.listdir(data_dir()):
        if name.startswith("retired-") and name[8:].isdigit() and int(name[8:]) < epoch:
            remove_tree(os.path.join(data_dir(), name))
            dropped.append(name)
    return dropped


def verify_promoted(args: Json) -> Json:
    """Check the live workspace against the promoted snapshot's manifest without re-reading unchanged data.

    The promoted tree is the very inodes the snapshot was verified with, so matching sizes, times, modes and
    links prove it; files whose stat changed since (the user wrote) are hashed afresh.
    """
    meta = read_json(os.path.join(data_dir(), "promoted.json"))
    if not isinstance(meta, dict):
        raise Failure("NotPromoted", "this host has not promoted a snapshot")
    expected = args["entries"]
    by_path = {e[PATH]: e for e in expected}

    def trusted(rel: str, st: os.stat_result) -> str | None:
        entry = by_path.get(rel)
        if entry is not None and entry[KIND] == "f" and entry[3] == st.st_size and entry[4] == st.st_mtime_ns:
            return str(entry[DATA])
        return None

    actual, skipped, _ = scan_tree(workspace_dir(), trusted)
    return {"ok": manifest_digest(actual) == manifest_digest(expected) and not skipped,
            "digest": manifest_digest(actual)}
