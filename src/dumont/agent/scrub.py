"""Scrubbing a standby: re-read what it keeps, a budget of bytes at a time, and mend what no longer matches.

A byte that changes on disk (a bad sector, a stray write) keeps its file's size and mtime, so no scan notices it;
later snapshots hard-link the same inode, and a failover would promote it (hostile-review.md #6). Each call reads
up to ``budget_bytes`` of the candidate and the snapshots (newest first, each inode once per round), resuming where
the last call stopped, and compares every file with its manifest's hash. A bad copy is rewritten in place from a
copy on this host that still verifies (the candidate and the snapshots are independent inodes); with none left, the
path becomes a *suspect*: the next pass sends it again from the primary (``stage`` and the candidate refresh
treat it as changed), and a bad candidate is invalidated so a failover does not promote it.

Reads and repairs happen under the host's lock (``server.run_locked``), so a scrub never races a commit.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from .common import (
    DATA,
    KIND,
    LINK,
    MTIME,
    PATH,
    Entry,
    Json,
    data_dir,
    dump_json,
    read_json,
    snapshot_path,
    suspects,
    write_atomic,
)
from .promotion import candidate_dir, candidate_manifest, candidate_seq, invalidate_candidate
from .scan import hash_file
from .snapshots import list_snapshots, snapshot_manifest


def _state_path() -> str:
    return os.path.join(data_dir(), "scrub.json")


def _set_suspects(paths: list[str]) -> None:
    write_atomic(os.path.join(data_dir(), "suspects.json"), dump_json(sorted(set(paths))))


def clear_suspects(resent: list[str]) -> None:
    """Forget suspects a committed pass has just sent again."""
    left = [p for p in suspects() if p not in set(resent)]
    _set_suspects(left)


def _trees() -> list[tuple[str, str, dict[str, Entry]]]:
    """Every tree this host keeps, as (name, root, manifest by path): the candidate first, then newest first."""
    trees = []
    seq = candidate_seq()
    if seq is not None:
        trees.append(("candidate", candidate_dir(), {e[PATH]: e for e in candidate_manifest()}))
    for snap in reversed(list_snapshots()):
        trees.append((f"snapshot {snap}", os.path.join(snapshot_path(snap), "tree"),
                      {e[PATH]: e for e in snapshot_manifest(snap)}))
    return trees


def scrub(args: Json) -> Json:
    """Check up to ``budget_bytes`` of stored files against their manifests; mend or report what is corrupt."""
    budget = int(args.get("budget_bytes", 512 << 20))
    state = read_json(_state_path(), {}) or {}
    cursor = state.get("cursor")  # [tree name, path] of the last file checked
    trees = _trees()
    files: list[tuple[str, str, Entry]] = [
        (name, root, entry) for name, root, manifest in trees for entry in manifest.values()
        if entry[KIND] == "f" and entry[LINK] is None and entry[DATA] is not None]
    start = 0
    if cursor is not None:
        start = next((n + 1 for n, (name, _, e) in enumerate(files) if [name, e[PATH]] == cursor), 0)
    seen = set(tuple(x) for x in state.get("inodes", []))
    checked_bytes, found, position = 0, [], start
    while position < len(files) and checked_bytes < budget:
        name, root, entry = files[position]
        position += 1
        full = os.path.join(os.fsencode(root), os.fsencode(entry[PATH]))
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        checked_bytes += st.st_size
        if hash_file(full, st) != entry[DATA]:
            found.append(_mend(name, full, entry, trees))
    complete = position >= len(files)
    last = files[position - 1] if position > start and not complete else None
    write_atomic(_state_path(), dump_json({
        "cursor": [last[0], last[2][PATH]] if last is not None else None,
        "inodes": [] if complete else sorted(seen)}))
    return {"checked_bytes": checked_bytes, "corrupt": found, "round_complete": complete,
            "suspects": suspects()}


def _mend(where: str, bad: bytes, entry: Entry, trees: list[tuple[str, str, dict[str, Entry]]]) -> dict[str, Any]:
    """Rewrite ``bad`` in place from a copy on this host that still verifies; else make its path a suspect."""
    bad_inode = os.lstat(bad).st_ino
    for name, root, manifest in trees:
        other = manifest.get(entry[PATH])
        if other is None or other[DATA] != entry[DATA]:
            continue
        good = os.path.join(os.fsencode(root), os.fsencode(entry[PATH]))
        try:
            st = os.lstat(good)
        except OSError:
            continue
        if st.st_ino == bad_inode or hash_file(good, st) != entry[DATA]:
            continue
        # In place: every snapshot hard-linking this inode is mended at once; size and mtime stay as recorded.
        mode = os.lstat(bad).st_mode
        os.chmod(bad, mode | 0o200)
        shutil.copyfile(good, bad)
        os.chmod(bad, mode & 0o7777)
        os.utime(bad, ns=(st.st_atime_ns, entry[MTIME]))
        return {"path": entry[PATH], "where": where, "repaired_from": name}
    group = [entry[PATH], *(p for _, _, m in trees for p, e in m.items() if e[LINK] == entry[PATH])]
    _set_suspects([*suspects(), *group])  # every name of the inode: rsync -H sends the group together
    if where == "candidate":
        invalidate_candidate()  # never promote a copy known to be wrong
    return {"path": entry[PATH], "where": where, "repaired_from": None}
