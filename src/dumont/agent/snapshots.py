"""The standby's replica store: stage a pass, inspect it, revert unsettled paths, commit it as a snapshot.

Staging builds ``incoming-<epoch>/tree`` as hard links to the newest snapshot, minus the paths the pass
replaces; rsync then writes only those (always to new inodes: it writes a temporary file and renames it), so no
snapshot's file is ever modified. Commit checks the whole staged tree against the expected manifest and renames
it into ``snapshots/``: the one atomic step that publishes a pass.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .common import (
    DATA,
    KIND,
    MODE,
    MTIME,
    PATH,
    Entry,
    Failure,
    Json,
    accept_epoch,
    data_dir,
    disk_usage,
    dump_json,
    fsync_dir,
    incoming_dir,
    read_epoch,
    read_json,
    remove_tree,
    snapshot_path,
    snapshots_dir,
    suspects,
    unlink_if_present,
    write_atomic,
)
from .scan import HashLookup, diff_entries, manifest_digest, scan_paths, scan_tree, stat_key, summarize


def list_snapshots() -> list[int]:
    """Sequence numbers of the complete snapshots, oldest first."""
    root = snapshots_dir()
    if not os.path.isdir(root):
        return []
    return sorted(int(name) for name in os.listdir(root) if name.isdigit())


def snapshot_manifest(seq: int) -> list[Entry]:
    """The manifest of snapshot ``seq``."""
    value = read_json(os.path.join(snapshot_path(seq), "manifest.json"))
    if value is None:
        raise Failure("NotFound", f"snapshot {seq} has no manifest on this host")
    return value  # type: ignore[no-any-return]


def snapshot_info(seq: int) -> Json:
    """What the pass that made snapshot ``seq`` recorded about it."""
    meta = read_json(os.path.join(snapshot_path(seq), "pass.json"), {}) or {}
    return {"seq": seq, "epoch": meta.get("epoch"), "files": meta.get("files"), "bytes": meta.get("bytes"),
            "finished_at": meta.get("finished_at"), "manifest_digest": meta.get("manifest_digest")}


def last_pass() -> Json | None:
    """The newest record of ``passes.jsonl`` (a torn last line from a crash is skipped)."""
    path = os.path.join(data_dir(), "passes.jsonl")
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 65536))
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)  # type: ignore[no-any-return]
        except ValueError:
            continue
    return None


def append_pass(record: Json) -> None:
    """Append a pass record durably (a leading newline isolates it from a torn previous line)."""
    os.makedirs(data_dir(), exist_ok=True)
    fd = os.open(os.path.join(data_dir(), "passes.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"\n" + dump_json(record) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(keep: int) -> list[int]:
    """Remove all but the newest ``keep`` snapshots; return the ones removed."""
    seqs = list_snapshots()
    doomed = seqs[: max(0, len(seqs) - max(1, keep))]
    for seq in doomed:
        remove_tree(snapshot_path(seq))
    return doomed


def stage(args: Json) -> Json:
    """Prepare ``incoming-<epoch>/tree`` as hard links to the base snapshot, minus what the pass will replace."""
    epoch = accept_epoch(int(args["epoch"]))
    base = args.get("base_seq")
    seqs = list_snapshots()
    latest = seqs[-1] if seqs else None
    if base != latest:
        raise Failure("BaseMoved", f"the standby's latest snapshot is {latest}, not {base}; rescan and retry")
    usage = _make_room(int(args.get("needed_bytes", 0)), float(args.get("min_free_fraction", 0.05)), base)
    for name in os.listdir(data_dir()):
        if name.startswith("incoming-"):
            remove_tree(os.path.join(data_dir(), name))  # leftovers of interrupted or fenced passes
    tree = os.path.join(incoming_dir(epoch), "tree")
    os.makedirs(tree)
    resend = [p for p in args.get("replace", []) if p in set(suspects())]  # a scrub found every copy wrong
    replaced = set(args.get("replace", [])) | set(args.get("delete", []))
    linked = _link_base(base, tree, replaced) if base is not None else 0
    write_atomic(os.path.join(incoming_dir(epoch), "stage.json"),
                 dump_json({"epoch": epoch, "base_seq": base, "resend": resend}))
    link_dest = os.path.join(snapshot_path(base), "tree") if base is not None else None
    return {"tree": tree, "link_dest": link_dest, "linked": linked, "free_bytes": usage["free_bytes"]}


def _make_room(needed: int, min_free_fraction: float, base: int | None) -> Json:
    """Check the pass fits; when it does not, prune snapshots older than the base first (SPEC §4.6), then refuse."""
    older = [seq for seq in list_snapshots() if base is not None and seq < base]
    while True:
        usage = disk_usage(data_dir())
        reserve = int(usage["total_bytes"] * min_free_fraction)
        if usage["free_bytes"] - needed >= reserve:
            return usage
        if not older:
            raise Failure("InsufficientSpace",
                          f"the standby has {usage['free_bytes']} bytes free; this pass needs {needed} (the files "
                          f"and the promotion candidate's copy of them) plus a reserve of {reserve}; grow the "
                          f"standby's disk (standby.disk_gb) or shrink the workspace")
        remove_tree(snapshot_path(older.pop(0)))


def _link_base(base: int, tree: str, replaced: set[str]) -> int:
    """Recreate the base snapshot in ``tree``: directories made, files and symlinks hard-linked."""
    base_tree = os.fsencode(os.path.join(snapshot_path(base), "tree"))
    btree = os.fsencode(tree)
    linked = 0
    for entry in snapshot_manifest(base):
        name = entry[PATH]
        if name == "." or name in replaced:
            continue
        rel = os.fsencode(name)
        if entry[KIND] == "d":
            os.mkdir(os.path.join(btree, rel), 0o700)  # its real mode is set at commit, once it is filled
        elif not _parent_replaced(name, replaced):
            os.link(os.path.join(base_tree, rel), os.path.join(btree, rel), follow_symlinks=False)
            linked += 1
    return linked


def _parent_replaced(name: str, replaced: set[str]) -> bool:
    parent = os.path.dirname(name)
    while parent:
        if parent in replaced:
            return True
        parent = os.path.dirname(parent)
    return False


def load_stage(epoch: int) -> Json:
    """The staged pass for ``epoch``; refused if none is staged or the epoch has moved on."""
    meta = read_json(os.path.join(incoming_dir(epoch), "stage.json"))
    if not isinstance(meta, dict) or meta.get("epoch") != epoch:
        raise Failure("NotStaged", f"no pass is staged for epoch {epoch} on this host")
    if epoch != read_epoch():
        raise Failure("StaleEpochRefused", f"epoch {epoch} is no longer this host's epoch {read_epoch()}")
    return meta


def _base_hashes(base: int | None) -> dict[str, tuple[int, str]]:
    """Path -> (inode, hash) for the base snapshot's files; a file sharing that inode has that content."""
    if base is None:
        return {}
    base_tree = os.fsencode(os.path.join(snapshot_path(base), "tree"))
    known = {}
    for entry in snapshot_manifest(base):
        if entry[KIND] == "f":
            try:
                inode = os.lstat(os.path.join(base_tree, os.fsencode(entry[PATH]))).st_ino
            except OSError:
                continue
            known[entry[PATH]] = (inode, entry[DATA])
    return known


def staged_hashes(meta: Json, epoch: int, vouched: dict[str, list[Any]] | None = None) -> HashLookup:
    """Hashes we can trust in the staged tree: links into the base snapshot, files inspect already hashed, and
    files the source vouches for (``[size, mtime, hash]`` of a file that stood still while rsync, which checks
    every transfer end to end, copied it)."""
    known = _base_hashes(meta.get("base_seq"))
    inspected: dict[str, list[Any]] = read_json(os.path.join(incoming_dir(epoch), "inspected.json"), {}) or {}
    vouched = vouched or {}

    def lookup(rel: str, st: os.stat_result) -> str | None:
        hit = known.get(rel)
        if hit is not None and hit[0] == st.st_ino:
            return hit[1]
        seen = inspected.get(rel)
        if seen is not None and tuple(seen[:4]) == stat_key(st):
            return str(seen[4])
        claim = vouched.get(rel)
        if claim is not None and claim[0] == st.st_size and claim[1] == st.st_mtime_ns:
            return str(claim[2])
        return None

    return lookup


def inspect(args: Json) -> Json:
    """Manifest of the staged tree as received; only files that are not links into the base are hashed.

    With ``paths``, only those paths are looked at: what the pass copied. Everything else in the tree is a link
    this host made to its own snapshot, and commit checks the whole tree anyway before publishing it.
    """
    epoch = int(args["epoch"])
    meta = load_stage(epoch)
    tree = os.path.join(incoming_dir(epoch), "tree")
    lookup = staged_hashes(meta, epoch, args.get("vouched"))
    if args.get("paths") is not None:
        entries, skipped, fresh = scan_paths(tree, args["paths"], lookup)
    else:
        entries, skipped, fresh = scan_tree(tree, lookup, {}, trust_all=True)
    write_atomic(os.path.join(incoming_dir(epoch), "inspected.json"), dump_json(fresh))
    return {"entries": entries, "skipped": skipped, "digest": manifest_digest(entries)}


def revert(args: Json) -> Json:
    """Give ``paths`` back their base snapshot version in the staged tree (or drop them if it has none)."""
    epoch = int(args["epoch"])
    base = load_stage(epoch).get("base_seq")
    tree = os.fsencode(os.path.join(incoming_dir(epoch), "tree"))
    base_tree = os.fsencode(os.path.join(snapshot_path(base), "tree")) if base is not None else b""
    kinds = {e[PATH]: e[KIND] for e in snapshot_manifest(base)} if base is not None else {}
    restored, dropped = [], []
    for name in sorted(args["paths"], key=os.fsencode, reverse=True):
        rel = os.fsencode(name)
        full = os.path.join(tree, rel)
        if os.path.isdir(full) and not os.path.islink(full) and kinds.get(name) == "d":
            continue  # a directory stays; its attributes are reset at commit from the manifest
        if os.path.isdir(full) and not os.path.islink(full):
            remove_tree(os.fsdecode(full))
        elif os.path.lexists(full):
            os.unlink(full)
        if kinds.get(name) in ("f", "l"):
            os.makedirs(os.path.dirname(full), exist_ok=True)
            os.link(os.path.join(base_tree, rel), full, follow_symlinks=False)
            restored.append(name)
        elif kinds.get(name) == "d":
            os.makedirs(full, exist_ok=True)
            restored.append(name)
        else:
            dropped.append(name)
    return {"restored": restored, "dropped": dropped}


def apply_attributes(tree: bytes, entries: list[Entry]) -> None:
    """Set directory modes and times, and symlink times, from the manifest (rsync sets neither exactly).

    Directories go deepest first, since filling a child changes its parent's mtime. A symlink whose time already
    matches is left alone: it may be a hard link shared with an older snapshot.
    """
    for entry in entries:
        if entry[KIND] == "l":
            full = os.path.join(tree, os.fsencode(entry[PATH]))
            if os.lstat(full).st_mtime_ns != entry[MTIME]:
                os.utime(full, ns=(entry[MTIME], entry[MTIME]), follow_symlinks=False)
    dirs = [e for e in entries if e[KIND] == "d"]
    dirs.sort(key=lambda e: -1 if e[PATH] == "." else os.fsencode(e[PATH]).count(b"/"), reverse=True)
    for entry in dirs:
        full = tree if entry[PATH] == "." else os.path.join(tree, os.fsencode(entry[PATH]))
        os.chmod(full, entry[MODE])
        os.utime(full, ns=(entry[MTIME], entry[MTIME]), follow_symlinks=False)


def commit(args: Json) -> Json:
    """Check the staged tree against the expected manifest, then rename it into ``snapshots/`` atomically."""
    epoch, seq, expected = int(args["epoch"]), int(args["seq"]), args["entries"]
    meta = load_stage(epoch)
    incoming = incoming_dir(epoch)
    tree = os.fsencode(os.path.join(incoming, "tree"))
    apply_attributes(tree, expected)
    actual, skipped, _ = scan_tree(os.fsdecode(tree), staged_hashes(meta, epoch))
    if skipped or manifest_digest(actual) != manifest_digest(expected):
        problems = "; ".join(diff_entries(expected, actual)[:20])
        raise Failure("IntegrityError", f"staged tree does not match the expected manifest: {problems}")
    record = dict(args.get("record") or {})
    record.update({"seq": seq, "epoch": epoch, "snapshot": seq, "finished_at": time.time(),
                   "manifest_digest": manifest_digest(actual)})
    record.update(summarize(actual))
    write_atomic(os.path.join(incoming, "manifest.json"), dump_json(actual))
    write_atomic(os.path.join(incoming, "pass.json"), dump_json(record))
    os.unlink(os.path.join(incoming, "stage.json"))
    unlink_if_present(os.path.join(incoming, "inspected.json"))
    os.makedirs(snapshots_dir(), exist_ok=True)
    os.rename(incoming, snapshot_path(seq))  # the pass becomes visible here, whole, or not at all
    fsync_dir(snapshots_dir())
    append_pass(record)
    return {"seq": seq, "record": record, "pruned": prune(int(args.get("keep", 3)))}


def record_pass(args: Json) -> Json:
    """Record a pass that found nothing to copy: the newest snapshot is still current."""
    epoch = accept_epoch(int(args["epoch"]))
    record = dict(args.get("record") or {})
    record.update({"seq": int(args["seq"]), "epoch": epoch, "finished_at": time.time()})
    append_pass(record)
    return {"record": record}
