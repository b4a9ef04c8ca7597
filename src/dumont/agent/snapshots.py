"""The standby's replica store: stage a pass, inspect it, revert unsettled paths, commit it as a snapshot.

Staging builds ``incoming-<epoch>/tree`` as hard links to the newest snapshot, minus the paths the pass
replaces: from the spare (the last pruned snapshot, patched where it differs: ``recycle``) or, without one, a link
per file. rsync then writes only the replaced paths (always to new inodes: it writes a temporary file and renames
it), so no snapshot's file is ever modified. Commit checks the staged tree against the expected manifest
(``treecheck``: every name, and what is not the base's own inode read again) and renames it into ``snapshots/``:
the one atomic step that publishes a pass.
"""

from __future__ import annotations

import hashlib
import heapq
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
    file_signature,
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
from .recycle import drop_spare, keep_as_spare, patch, spare_dir, take_spare
from .scan import HashLookup, manifest_digest, scan_paths, scan_tree, stat_key, summarize
from .treecheck import Listing, check_staged, listing


def list_snapshots() -> list[int]:
    """Sequence numbers of the complete snapshots, oldest first."""
    root = snapshots_dir()
    if not os.path.isdir(root):
        return []
    return sorted(int(name) for name in os.listdir(root) if name.isdigit())


def snapshot_manifest(seq: int) -> list[Entry]:
    """The manifest of snapshot ``seq`` (shared with other callers: never change it)."""
    path = os.path.join(snapshot_path(seq), "manifest.json")
    signature = file_signature(path)
    held = _MANIFESTS.get(path)
    if held is not None and signature is not None and held[0] == signature:
        return held[1]
    value = read_json(path)
    if value is None:
        raise Failure("NotFound", f"snapshot {seq} has no manifest on this host")
    _remember(path, signature, value)
    return value  # type: ignore[no-any-return]


# A pass reads its base's manifest four times (stage, inspect, commit, the candidate's refresh) and the next pass
# reads the one this pass wrote: the newest two stay parsed in the agent process, keyed by the file's identity.
_MANIFESTS: dict[str, tuple[tuple[int, int, int], list[Entry]]] = {}
_KEEP_PARSED = 2
# The names and inodes of the newest committed tree, from its commit's check: the next pass's base listing.
_COMMITTED: dict[str, tuple[tuple[int, int], Listing]] = {}


def _remember(path: str, signature: tuple[int, int, int] | None, entries: list[Entry]) -> None:
    if signature is None:
        return
    _MANIFESTS.pop(path, None)
    _MANIFESTS[path] = (signature, entries)
    for old in list(_MANIFESTS)[:-_KEEP_PARSED]:
        del _MANIFESTS[old]


def _base_listing(base_tree: str) -> Listing:
    """The base tree's names and inodes: kept from its own commit when it is still the same directory."""
    held = _COMMITTED.get(base_tree)
    identity = _identity(base_tree)
    if held is not None and held[0] == identity:
        return held[1]
    return listing(base_tree)


def _identity(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


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
    """Remove all but the newest ``keep`` snapshots, the newest of those removed kept as the spare; return them."""
    seqs = list_snapshots()
    doomed = seqs[: max(0, len(seqs) - max(1, keep))]
    for seq in reversed(doomed):
        if not keep_as_spare(snapshot_path(seq)):
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
    os.makedirs(incoming_dir(epoch))
    found = set(suspects())
    resend = [p for p in args.get("replace", []) if p in found]  # a scrub found every copy wrong
    replaced = set(args.get("replace", [])) | set(args.get("delete", []))
    spare = take_spare(tree) if base is not None else None
    if spare is None:
        drop_spare()
        os.mkdir(tree)
    linked = _link_base(base, tree, replaced, spare) if base is not None else 0
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
        if os.path.lexists(spare_dir()):
            drop_spare()  # the old versions it holds come first
            continue
        if not older:
            raise Failure("InsufficientSpace",
                          f"the standby has {usage['free_bytes']} bytes free; this pass needs {needed} (the files "
                          f"and the promotion candidate's copy of them) plus a reserve of {reserve}; grow the "
                          f"standby's disk (standby.disk_gb) or shrink the workspace")
        remove_tree(snapshot_path(older.pop(0)))


def _link_base(base: int, tree: str, replaced: set[str], spare: list[Entry] | None) -> int:
    """Recreate the base snapshot in ``tree`` minus ``replaced``: patched from the spare's tree already there, or
    from nothing (directories made, files and symlinks hard-linked); return the links made."""
    entries = snapshot_manifest(base)
    # A replaced directory's own entry stays out, its children with it: rsync makes it anew.
    gone = {e[PATH] for e in entries if e[KIND] == "d" and e[PATH] in replaced}
    want = [e for e in entries
            if e[PATH] != "." and e[PATH] not in replaced and not (gone and _under(e[PATH], gone))]
    return patch(tree, spare or [], os.path.join(snapshot_path(base), "tree"), want)


def _under(name: str, directories: set[str]) -> bool:
    parent = os.path.dirname(name)
    while parent:
        if parent in directories:
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


def base_manifest(meta: Json) -> list[Entry]:
    """The manifest of the snapshot a staged pass is based on ([] for a first pass)."""
    base = meta.get("base_seq")
    return snapshot_manifest(int(base)) if base is not None else []


def staged_hashes(meta: Json, epoch: int, vouched: dict[str, list[Any]] | None = None,
                  base: list[Entry] | None = None) -> HashLookup:
    """Hashes we can trust in the staged tree: links into the base snapshot (a file sharing the base file's inode
    has its content; looked up only for the files asked about), files inspect already hashed, and files the
    source vouches for (``[size, mtime, hash]`` of a file that stood still while rsync, which checks every
    transfer end to end, copied it)."""
    seq = meta.get("base_seq")
    known = {e[PATH]: e[DATA] for e in (base_manifest(meta) if base is None else base)
             if e[KIND] == "f" and e[DATA] is not None}
    base_tree = os.fsencode(os.path.join(snapshot_path(int(seq)), "tree")) if seq is not None else b""
    inspected: dict[str, list[Any]] = read_json(os.path.join(incoming_dir(epoch), "inspected.json"), {}) or {}
    if vouched is None:  # the commit's lookup: the claims inspect was given
        vouched = read_json(os.path.join(incoming_dir(epoch), "vouched.json"), {}) or {}

    def lookup(rel: str, st: os.stat_result) -> str | None:
        if rel in known:
            try:
                if os.lstat(os.path.join(base_tree, os.fsencode(rel))).st_ino == st.st_ino:
                    return str(known[rel])
            except OSError:
                pass
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

    With ``paths``, only those paths are looked at: what the pass copied that the source does not vouch for.
    Everything else in the tree is a link this host made to its own snapshot or a file ``vouched`` for (kept in
    ``vouched.json`` for the commit's lookup), and commit checks the whole tree anyway before publishing it.
    """
    epoch = int(args["epoch"])
    meta = load_stage(epoch)
    tree = os.path.join(incoming_dir(epoch), "tree")
    vouched = args.get("vouched") or {}
    write_atomic(os.path.join(incoming_dir(epoch), "vouched.json"), dump_json(vouched))  # for the commit
    lookup = staged_hashes(meta, epoch, vouched)
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
    """Check the staged tree against the expected manifest, then rename it into ``snapshots/`` atomically.

    The manifest comes whole (``entries``) or as ``delta`` against the snapshot the pass was staged on: ``changed``
    entries and ``removed`` paths, merged here into that snapshot's manifest (kept parsed in this process).
    """
    epoch, seq = int(args["epoch"]), int(args["seq"])
    meta = load_stage(epoch)
    expected = _merged(meta, args["delta"]) if "delta" in args else args["entries"]
    incoming = incoming_dir(epoch)
    tree = os.fsencode(os.path.join(incoming, "tree"))
    apply_attributes(tree, expected)
    base = base_manifest(meta)
    base_seq = meta.get("base_seq")
    base_tree = os.path.join(snapshot_path(int(base_seq)), "tree") if base_seq is not None else None
    staged = listing(os.fsdecode(tree))
    problems = check_staged(staged, expected, _base_listing(base_tree) if base_tree is not None else {}, base,
                            lookup=staged_hashes(meta, epoch, base=base), tree=os.fsdecode(tree))
    if problems:
        raise Failure("IntegrityError", f"staged tree does not match the expected manifest: {'; '.join(problems[:20])}")
    actual = sorted(expected, key=lambda e: os.fsencode(e[PATH]))  # what the tree holds, in the manifest's order
    raw = dump_json(actual)
    record = dict(args.get("record") or {})
    record.update({"seq": seq, "epoch": epoch, "snapshot": seq, "finished_at": time.time(),
                   "manifest_digest": hashlib.sha256(raw).hexdigest()})  # manifest_digest, from the bytes written
    record.update(summarize(actual))
    write_atomic(os.path.join(incoming, "manifest.json"), raw)
    write_atomic(os.path.join(incoming, "pass.json"), dump_json(record))
    os.unlink(os.path.join(incoming, "stage.json"))
    unlink_if_present(os.path.join(incoming, "inspected.json"))
    unlink_if_present(os.path.join(incoming, "vouched.json"))
    os.makedirs(snapshots_dir(), exist_ok=True)
    os.rename(incoming, snapshot_path(seq))  # the pass becomes visible here, whole, or not at all
    fsync_dir(snapshots_dir())
    published = os.path.join(snapshot_path(seq), "tree")
    _COMMITTED.clear()
    _COMMITTED[published] = (_identity(published), staged)
    manifest_file = os.path.join(snapshot_path(seq), "manifest.json")
    _remember(manifest_file, file_signature(manifest_file), actual)
    append_pass(record)
    return {"seq": seq, "record": record, "pruned": prune(int(args.get("keep", 3)))}


def _merged(meta: Json, delta: Json) -> list[Entry]:
    """The base snapshot's manifest with a commit's ``delta`` put in, in the manifest's order."""
    if delta.get("base_seq") != meta.get("base_seq"):
        raise Failure("BaseMoved", f"the commit's manifest is a change of snapshot {delta.get('base_seq')}, but the "
                                   f"pass was staged on {meta.get('base_seq')}; rescan and retry")
    changed = {e[PATH]: e for e in delta["changed"]}
    gone = set(delta["removed"]) | set(changed)
    kept = [e for e in base_manifest(meta) if e[PATH] not in gone]
    added = sorted(changed.values(), key=lambda e: os.fsencode(e[PATH]))
    return list(heapq.merge(kept, added, key=lambda e: os.fsencode(e[PATH])))


def record_pass(args: Json) -> Json:
    """Record a pass that found nothing to copy: the newest snapshot is still current."""
    epoch = accept_epoch(int(args["epoch"]))
    record = dict(args.get("record") or {})
    record.update({"seq": int(args["seq"]), "epoch": epoch, "finished_at": time.time()})
    append_pass(record)
    return {"record": record}
