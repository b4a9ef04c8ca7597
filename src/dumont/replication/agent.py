"""The Dumont host agent: one stdlib-only Python file that runs on every host of a pair.

It is copied to ``<data_dir>/agent/`` over SSH and started as ``python3 agent.py serve``: a long-lived process that
answers JSON requests, one per line, on stdin/stdout, so a replication pass costs no extra SSH sessions. It must
run on any Python >= 3.8 with nothing installed (a Vast.ai image, a GCP Debian VM), so it imports nothing from
the ``dumont`` package.

Layout of ``data_dir`` (``$DUMONT_DATA_DIR``, default ``/var/lib/dumont``)::

    epoch                    highest epoch this host has accepted (the fence)
    scan-cache.json          path -> (size, mtime, ctime, inode, hash) so unchanged files are never re-hashed
    snapshots/<seq>/tree/    complete, verified, immutable copies; unchanged files are hard links between them
    snapshots/<seq>/manifest.json, pass.json
    incoming-<epoch>/        the pass being received; renamed into snapshots/ only once verified
    passes.jsonl             every completed pass, append-only
    pair/                    direct mode: the pair key and ssh_config a primary pushes with

A snapshot is never modified after its rename; a pass that dies at any instant leaves only an ``incoming-*``
directory behind, which the next pass discards. Paths travel as ``os.fsdecode`` strings (surrogate escapes),
so any byte in a file name survives the trip through JSON.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

HASH_NAME = "blake2b-128"
PROTOCOL = 1
CACHE_TRUST_SECONDS = 2.0  # a file changed this recently may change again within the same timestamp tick
CHUNK = 1 << 20

# One manifest entry: [path, kind, mode, size, mtime_ns, hash-or-link-target, hard-link leader or None]
PATH, KIND, MODE, SIZE, MTIME, DATA, LINK = range(7)


class Failure(Exception):
    """An error reported back to the controller as ``{"kind": ..., "message": ...}``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# --------------------------------------------------------------------------- paths and small file helpers


def data_dir() -> str:
    return os.environ.get("DUMONT_DATA_DIR") or "/var/lib/dumont"


def workspace_dir() -> str:
    return os.environ.get("DUMONT_WORKSPACE") or "/workspace"


def snapshots_dir() -> str:
    return os.path.join(data_dir(), "snapshots")


def incoming_dir(epoch: int) -> str:
    return os.path.join(data_dir(), "incoming-%d" % epoch)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(parent)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str, default: object = None) -> object:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return default


def dump_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, sort_keys=True).encode()


def manifest_digest(entries: list) -> str:
    return hashlib.sha256(dump_json(entries)).hexdigest()


def disk_usage(path: str) -> dict:
    st = os.statvfs(path)
    return {"free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}


def remove_tree(path: str) -> None:
    """Remove a directory tree of ours (staging or pruned snapshots), tolerating read-only subdirectories."""
    if not os.path.lexists(path):
        return

    def make_writable(func, target, _exc):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(target)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) | stat.S_IRWXU)
        func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)  # type: ignore[call-arg,unused-ignore]
    else:
        shutil.rmtree(path, onerror=make_writable)


# --------------------------------------------------------------------------- epochs


def read_epoch() -> int:
    value = read_json(os.path.join(data_dir(), "epoch"), 0)
    return int(value)  # type: ignore[arg-type]


def write_epoch(epoch: int) -> None:
    write_atomic(os.path.join(data_dir(), "epoch"), dump_json(epoch))


def accept_epoch(epoch: int) -> int:
    """Adopt ``epoch`` if it is newer; refuse a source whose epoch is older than ours."""
    current = read_epoch()
    if epoch < current:
        raise Failure(
            "StaleEpochRefused",
            "source epoch %d is older than this host's epoch %d: it is a fenced former primary" % (epoch, current),
        )
    if epoch > current:
        write_epoch(epoch)
    return epoch


# --------------------------------------------------------------------------- scanning and hashing


def hash_file(path: bytes, before: os.stat_result) -> str | None:
    """Hash a file; None when it changed while being read (the caller keeps its previous version)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        digest = hashlib.blake2b(digest_size=16)
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            digest.update(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if stat_key(before) != stat_key(after):
        return None
    return digest.hexdigest()


def stat_key(st: os.stat_result) -> tuple:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def walk(root: bytes):  # type: ignore[no-untyped-def]
    """Yield (relative path, lstat) for every entry under ``root``, parents before children, never following links."""
    yield b".", os.lstat(root)
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(full) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            continue  # removed while we walked: the next pass sees the deletion
        except OSError as exc:
            # Skipping it would look like a deletion and wipe the standby's copy: stop the pass instead.
            raise Failure("UnreadablePath", "cannot list %r: %s" % (os.fsdecode(full), exc.strerror)) from exc
        for entry in entries:
            child = os.path.join(rel, entry.name) if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)


def scan_tree(root: str, hashes, cache: dict | None = None, trust_all: bool = False):  # type: ignore[no-untyped-def]
    """Return (entries, skipped, new_cache) for the tree at ``root``.

    ``hashes(rel, st)`` may return a known hash for a file (or None to hash it). Files whose hash could not be
    taken consistently get hash None ("hot"): the pass keeps the standby's previous version of them.
    """
    broot = os.fsencode(root)
    entries = []
    skipped = []
    new_cache = {}
    inodes = {}
    seen = {}
    for rel, st in walk(broot):
        name = os.fsdecode(rel)
        digest = None
        cached = False
        if stat.S_ISREG(st.st_mode):
            digest = hashes(name, st)
            if digest is None and cache is not None:
                hit = cache.get(name)
                if hit is not None and tuple(hit[:4]) == stat_key(st):
                    digest, cached = hit[4], True
            if digest is None and st.st_nlink > 1:
                digest = seen.get((st.st_dev, *stat_key(st)))  # another name of a file already hashed
        entry = entry_for(name, os.path.join(broot, rel), st, digest)
        if entry is None:
            skipped.append(name)
            continue
        entries.append(entry)
        if entry[KIND] == "f":
            # A hash is reusable only if no write can have landed in the same timestamp tick after we read.
            trusted = trust_all or cached or st.st_ctime_ns < (time.time() - CACHE_TRUST_SECONDS) * 1e9
            if entry[DATA] is not None and trusted:
                new_cache[name] = [*stat_key(st), entry[DATA]]
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(entry)
                seen[(st.st_dev, *stat_key(st))] = entry[DATA]
    entries.sort(key=lambda e: os.fsencode(e[PATH]))
    for group in inodes.values():
        if len(group) > 1:
            group.sort(key=lambda e: os.fsencode(e[PATH]))
            for entry in group[1:]:
                entry[LINK] = group[0][PATH]  # the leader is the group's first path in byte order
    return entries, skipped, new_cache


def entry_for(name: str, full: bytes, st: os.stat_result, digest: str | None = None):  # type: ignore[no-untyped-def]
    """The manifest entry of one path (None for special files, which are not replicated)."""
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return [name, "d", stat.S_IMODE(mode), 0, st.st_mtime_ns, None, None]
    if stat.S_ISLNK(mode):
        try:
            target = os.fsdecode(os.readlink(full))
        except FileNotFoundError:
            return None
        return [name, "l", stat.S_IMODE(mode), st.st_size, st.st_mtime_ns, target, None]
    if stat.S_ISREG(mode):
        if digest is None:
            digest = hash_file(full, st)
        return [name, "f", stat.S_IMODE(mode), st.st_size, st.st_mtime_ns, digest, None]
    return None


def summarize(entries: list) -> dict:
    files = [e for e in entries if e[KIND] == "f"]
    return {"files": len(files), "bytes": sum(e[SIZE] for e in files), "paths": len(entries)}


# --------------------------------------------------------------------------- snapshots


def list_snapshots() -> list:
    root = snapshots_dir()
    if not os.path.isdir(root):
        return []
    seqs = sorted(int(name) for name in os.listdir(root) if name.isdigit())
    return seqs


def snapshot_path(seq: int) -> str:
    return os.path.join(snapshots_dir(), "%010d" % seq)


def snapshot_manifest(seq: int) -> list:
    value = read_json(os.path.join(snapshot_path(seq), "manifest.json"))
    if value is None:
        raise Failure("NotFound", "snapshot %d has no manifest on this host" % seq)
    return value  # type: ignore[return-value]


def last_pass() -> dict | None:
    path = os.path.join(data_dir(), "passes.jsonl")
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)  # type: ignore[no-any-return]
        except ValueError:
            continue  # a torn last line from a crash mid-append: use the one before it
    return None


def append_pass(record: dict) -> None:
    path = os.path.join(data_dir(), "passes.jsonl")
    os.makedirs(data_dir(), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"\n" + dump_json(record) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot_info(seq: int) -> dict:
    meta = read_json(os.path.join(snapshot_path(seq), "pass.json"), {}) or {}
    return {"seq": seq, "epoch": meta.get("epoch"), "files": meta.get("files"), "bytes": meta.get("bytes"),
            "finished_at": meta.get("finished_at"), "manifest_digest": meta.get("manifest_digest")}


# --------------------------------------------------------------------------- operations (one per request)


def op_info(args: dict) -> dict:
    os.makedirs(data_dir(), exist_ok=True)
    try:
        rsync = subprocess.run(["rsync", "--version"], capture_output=True, timeout=10).stdout.split(b"\n")[0]
    except (OSError, subprocess.SubprocessError):
        rsync = b""
    info = {"protocol": PROTOCOL, "hash": HASH_NAME, "workspace": workspace_dir(), "data_dir": data_dir(),
            "epoch": read_epoch(), "python": sys.version.split()[0], "rsync": rsync.decode(errors="replace"),
            "host": os.environ.get("DUMONT_HOST") or os.uname().nodename}
    info.update(disk_usage(data_dir()))
    return info


def op_set_epoch(args: dict) -> dict:
    epoch = int(args["epoch"])
    if args.get("force"):
        write_epoch(epoch)
    else:
        accept_epoch(epoch)
    return {"epoch": read_epoch()}


def op_scan(args: dict) -> dict:
    """Manifest of the workspace, hashing only files whose stat changed since the last scan."""
    root = args.get("root") or workspace_dir()
    started = time.time()
    if not os.path.isdir(root):
        return {"epoch": read_epoch(), "entries": [], "skipped": [], "missing": True, **summarize([])}
    cache_path = os.path.join(data_dir(), "scan-cache.json")
    cache = read_json(cache_path, {}) if args.get("use_cache", True) else {}
    entries, skipped, new_cache = scan_tree(root, lambda rel, st: None, cache)  # type: ignore[arg-type]
    if args.get("use_cache", True):
        write_atomic(cache_path, dump_json(new_cache))
    result = {"epoch": read_epoch(), "entries": entries, "skipped": skipped, "missing": False}
    result.update(summarize(entries))
    result["scan_seconds"] = time.time() - started
    return result


def op_entries(args: dict) -> dict:
    """Fresh entries for ``paths`` under ``root`` (None for a path that no longer exists)."""
    root = os.fsencode(args.get("root") or workspace_dir())
    out = {}
    for name in args["paths"]:
        full = os.path.join(root, os.fsencode(name))
        try:
            st = os.lstat(full)
        except OSError:
            out[name] = None
            continue
        out[name] = entry_for(name, full, st)
    return {"entries": out}


def op_status(args: dict) -> dict:
    seqs = list_snapshots()
    result = {"epoch": read_epoch(), "snapshots": [snapshot_info(s) for s in seqs], "last_pass": last_pass()}
    os.makedirs(data_dir(), exist_ok=True)
    result.update(disk_usage(data_dir()))
    return result


def op_manifest(args: dict) -> dict:
    seq = int(args["seq"])
    entries = snapshot_manifest(seq)
    return {"seq": seq, "entries": entries, "digest": manifest_digest(entries)}


def op_stage(args: dict) -> dict:
    """Prepare ``incoming-<epoch>/tree`` as hard links to the base snapshot, minus what the pass will replace."""
    epoch = accept_epoch(int(args["epoch"]))
    base = args.get("base_seq")
    seqs = list_snapshots()
    latest = seqs[-1] if seqs else None
    if base != latest:
        raise Failure("BaseMoved", "the standby's latest snapshot is %s, not %s; rescan and retry" % (latest, base))
    usage = disk_usage(data_dir())
    needed = int(args.get("needed_bytes", 0))
    reserve = int(usage["total_bytes"] * float(args.get("min_free_fraction", 0.05)))
    if usage["free_bytes"] - needed < reserve:
        raise Failure(
            "InsufficientSpace",
            "the standby has %d bytes free; this pass needs %d plus a reserve of %d"
            % (usage["free_bytes"], needed, reserve),
        )
    for name in os.listdir(data_dir()):
        if name.startswith("incoming-"):
            remove_tree(os.path.join(data_dir(), name))  # leftovers of interrupted or fenced passes
    incoming = incoming_dir(epoch)
    tree = os.path.join(incoming, "tree")
    os.makedirs(tree)
    replaced = set(args.get("replace", [])) | set(args.get("delete", []))
    linked = 0
    if base is not None:
        base_tree = os.fsencode(os.path.join(snapshot_path(base), "tree"))
        btree = os.fsencode(tree)
        for entry in snapshot_manifest(base):
            name = entry[PATH]
            if name == "." or name in replaced:
                continue
            rel = os.fsencode(name)
            if entry[KIND] == "d":
                os.mkdir(os.path.join(btree, rel), 0o700)
            elif not parent_replaced(name, replaced):
                os.link(os.path.join(base_tree, rel), os.path.join(btree, rel), follow_symlinks=False)
                linked += 1
    write_atomic(os.path.join(incoming, "stage.json"), dump_json({"epoch": epoch, "base_seq": base}))
    link_dest = os.path.join(snapshot_path(base), "tree") if base is not None else None
    return {"tree": tree, "link_dest": link_dest, "linked": linked, "free_bytes": usage["free_bytes"]}


def parent_replaced(name: str, replaced: set) -> bool:
    parent = os.path.dirname(name)
    while parent:
        if parent in replaced:
            return True
        parent = os.path.dirname(parent)
    return False


def load_stage(epoch: int) -> dict:
    stage_meta = read_json(os.path.join(incoming_dir(epoch), "stage.json"))
    if not isinstance(stage_meta, dict) or stage_meta.get("epoch") != epoch:
        raise Failure("NotStaged", "no pass is staged for epoch %d on this host" % epoch)
    if epoch != read_epoch():
        raise Failure("StaleEpochRefused", "epoch %d is no longer this host's epoch %d" % (epoch, read_epoch()))
    return stage_meta


def base_hashes(base) -> dict:  # type: ignore[no-untyped-def]
    """Map path -> (inode, hash) for the files of the base snapshot; a shared inode means identical content."""
    if base is None:
        return {}
    base_tree = os.fsencode(os.path.join(snapshot_path(base), "tree"))
    known = {}
    for entry in snapshot_manifest(base):
        if entry[KIND] == "f":
            try:
                known[entry[PATH]] = (os.lstat(os.path.join(base_tree, os.fsencode(entry[PATH]))).st_ino, entry[DATA])
            except OSError:
                continue
    return known


def staged_hashes(stage_meta: dict, epoch: int):  # type: ignore[no-untyped-def]
    """A hash lookup for the staged tree: links into the base snapshot, and files already hashed by inspect."""
    known = base_hashes(stage_meta.get("base_seq"))
    inspected = read_json(os.path.join(incoming_dir(epoch), "inspected.json"), {}) or {}

    def lookup(rel: str, st: os.stat_result):  # type: ignore[no-untyped-def]
        hit = known.get(rel)
        if hit is not None and hit[0] == st.st_ino:
            return hit[1]
        seen = inspected.get(rel)  # type: ignore[union-attr]
        if seen is not None and tuple(seen[:4]) == stat_key(st):
            return seen[4]
        return None

    return lookup


def op_inspect(args: dict) -> dict:
    """Manifest of the staged tree; only files that are not hard links into the base snapshot are hashed."""
    epoch = int(args["epoch"])
    stage_meta = load_stage(epoch)
    lookup = staged_hashes(stage_meta, epoch)
    tree = os.path.join(incoming_dir(epoch), "tree")
    entries, skipped, fresh = scan_tree(tree, lookup, {}, trust_all=True)  # nobody else writes the staging tree
    write_atomic(os.path.join(incoming_dir(epoch), "inspected.json"), dump_json(fresh))
    return {"entries": entries, "skipped": skipped, "digest": manifest_digest(entries)}


def op_revert(args: dict) -> dict:
    """Put back the base snapshot's version of ``paths`` (or drop them when the base has none)."""
    epoch = int(args["epoch"])
    stage_meta = load_stage(epoch)
    base = stage_meta.get("base_seq")
    tree = os.fsencode(os.path.join(incoming_dir(epoch), "tree"))
    base_tree = os.fsencode(os.path.join(snapshot_path(base), "tree")) if base is not None else None
    base_kinds = {e[PATH]: e[KIND] for e in snapshot_manifest(base)} if base is not None else {}
    restored, dropped = [], []
    for name in sorted(args["paths"], key=lambda n: os.fsencode(n), reverse=True):
        rel = os.fsencode(name)
        full = os.path.join(tree, rel)
        if os.path.lexists(full):
            if os.path.isdir(full) and not os.path.islink(full):
                if base_kinds.get(name) == "d":
                    continue  # a directory's attributes are reset at commit from the manifest
                remove_tree(os.fsdecode(full))
            else:
                os.unlink(full)
        if base_tree is not None and base_kinds.get(name) in ("f", "l"):
            os.makedirs(os.path.dirname(full), exist_ok=True)
            os.link(os.path.join(base_tree, rel), full, follow_symlinks=False)
            restored.append(name)
        elif base_kinds.get(name) == "d":
            os.makedirs(full, exist_ok=True)
            restored.append(name)
        else:
            dropped.append(name)
    return {"restored": restored, "dropped": dropped}


def apply_attributes(tree: bytes, entries: list) -> None:
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
    dirs.sort(key=lambda e: os.fsencode(e[PATH]).count(b"/") if e[PATH] != "." else -1, reverse=True)
    for entry in dirs:
        full = tree if entry[PATH] == "." else os.path.join(tree, os.fsencode(entry[PATH]))
        os.chmod(full, entry[MODE])
        os.utime(full, ns=(entry[MTIME], entry[MTIME]), follow_symlinks=False)


def op_commit(args: dict) -> dict:
    """Check the staged tree against the expected manifest, then rename it into ``snapshots/`` atomically."""
    epoch = int(args["epoch"])
    stage_meta = load_stage(epoch)
    seq = int(args["seq"])
    expected = args["entries"]
    incoming = incoming_dir(epoch)
    tree = os.fsencode(os.path.join(incoming, "tree"))
    apply_attributes(tree, expected)
    actual, skipped, _ = scan_tree(os.fsdecode(tree), staged_hashes(stage_meta, epoch))
    if skipped or manifest_digest(actual) != manifest_digest(expected):
        problems = diff_entries(expected, actual)[:20]
        raise Failure("IntegrityError", "staged tree does not match the expected manifest: %s" % "; ".join(problems))
    finished = time.time()
    record = dict(args.get("record") or {})
    record.update({"seq": seq, "epoch": epoch, "snapshot": seq, "finished_at": finished,
                   "manifest_digest": manifest_digest(actual)})
    record.update(summarize(actual))
    write_atomic(os.path.join(incoming, "manifest.json"), dump_json(actual))
    write_atomic(os.path.join(incoming, "pass.json"), dump_json(record))
    os.unlink(os.path.join(incoming, "stage.json"))
    with_suppressed(os.unlink, os.path.join(incoming, "inspected.json"))
    os.makedirs(snapshots_dir(), exist_ok=True)
    os.rename(incoming, snapshot_path(seq))
    fsync_dir(snapshots_dir())
    append_pass(record)
    pruned = prune(int(args.get("keep", 3)))
    return {"seq": seq, "record": record, "pruned": pruned}


def with_suppressed(func, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        func(*args)
    except FileNotFoundError:
        pass


def diff_entries(expected: list, actual: list) -> list:
    want = {e[PATH]: e for e in expected}
    have = {e[PATH]: e for e in actual}
    problems = []
    for name in sorted(set(want) | set(have)):
        a, b = want.get(name), have.get(name)
        if a is None:
            problems.append("%r is not in the manifest" % name)
        elif b is None:
            problems.append("%r is missing" % name)
        elif a != b:
            fields = [f for f, i in (("kind", KIND), ("mode", MODE), ("size", SIZE), ("mtime", MTIME),
                                     ("content", DATA), ("hard link", LINK)) if a[i] != b[i]]
            problems.append("%r differs in %s" % (name, ", ".join(fields)))
    return problems


def prune(keep: int) -> list:
    seqs = list_snapshots()
    doomed = seqs[: max(0, len(seqs) - max(1, keep))]
    for seq in doomed:
        remove_tree(snapshot_path(seq))
    return doomed


def op_record_pass(args: dict) -> dict:
    """Record a pass that found nothing to copy: the latest snapshot is still current."""
    epoch = accept_epoch(int(args["epoch"]))
    record = dict(args.get("record") or {})
    record.update({"seq": int(args["seq"]), "epoch": epoch, "finished_at": time.time()})
    append_pass(record)
    return {"record": record}


def op_verify(args: dict) -> dict:
    """Re-hash a snapshot (or any tree) fully and compare it with a manifest."""
    seq = args.get("seq")
    if seq is not None:
        root = os.path.join(snapshot_path(int(seq)), "tree")
        expected = snapshot_manifest(int(seq))
    else:
        root = args.get("root") or workspace_dir()
        expected = args["entries"]
    actual, skipped, _ = scan_tree(root, lambda rel, st: None)
    problems = diff_entries(expected, actual) + ["%r is a special file" % s for s in skipped]
    return {"root": root, "ok": not problems, "problems": problems, "checked": len(actual)}


# --------------------------------------------------------------------------- direct mode: pair keys and push

PAIR_MARK = "dumont-pair="
RSYNC_FLAGS = set("lHogDtpRSrvcIxWzq.LsfCuiue")


def authorized_keys_path() -> str:
    return os.environ.get("DUMONT_AUTHORIZED_KEYS") or os.path.expanduser("~/.ssh/authorized_keys")


def agent_path() -> str:
    return os.path.abspath(__file__)


def op_authorize_pair(args: dict) -> dict:
    """Let the pair key push into this host's staging area for ``epoch`` only (a forced command)."""
    epoch = int(args["epoch"])
    key = " ".join(args["public_key"].split()[:2])
    pair = args["pair"]
    python = os.environ.get("DUMONT_PYTHON") or sys.executable or "python3"
    command = "%s %s receive %d" % (shlex.quote(python), shlex.quote(agent_path()), epoch)
    line = 'command="%s",restrict %s %s%s' % (command.replace('"', '\\"'), key, PAIR_MARK, pair)
    rewrite_authorized_keys(pair, line)
    return {"epoch": epoch}


def op_revoke_pair(args: dict) -> dict:
    """Fence: stop accepting the pair key and stop every receive still running from an older epoch."""
    removed = rewrite_authorized_keys(args["pair"], None)
    epoch = read_epoch()
    killed = kill_receivers(older_than=epoch + (1 if args.get("all") else 0))
    return {"removed": removed, "killed": killed}


def rewrite_authorized_keys(pair: str, line: str | None) -> int:
    path = authorized_keys_path()
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    kept = [x for x in lines if not x.endswith(PAIR_MARK + pair)]
    removed = len(lines) - len(kept)
    if line is not None:
        kept.append(line)
    write_atomic(path, ("\n".join(kept) + "\n").encode(), 0o600)
    return removed


def kill_receivers(older_than: int) -> int:
    killed = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as handle:
                env = handle.read().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"DUMONT_RECEIVE_EPOCH="):
                if int(item.split(b"=", 1)[1] or b"0") < older_than:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                        killed += 1
                    except OSError:
                        pass
    return killed


def op_install_pair_client(args: dict) -> dict:
    """Give a primary the pair key and an ssh_config that reaches the standby as ``dumont-standby``."""
    pair_dir = os.path.join(data_dir(), "pair")
    os.makedirs(pair_dir, mode=0o700, exist_ok=True)
    key_path = os.path.join(pair_dir, "pair_key")
    write_atomic(key_path, args["private_key"].encode(), 0o600)
    known = os.path.join(pair_dir, "known_hosts")
    write_atomic(known, ("dumont-standby %s\n" % " ".join(args["standby_host_key"].split()[:2])).encode())
    control = "/tmp/dumont-%s-%%C" % hashlib.sha256(pair_dir.encode()).hexdigest()[:10]
    config = "\n".join([
        "Host dumont-standby",
        "  HostName %s" % args["host"], "  Port %d" % int(args["port"]), "  User %s" % args["user"],
        "  HostKeyAlias dumont-standby", '  IdentityFile "%s"' % key_path, "  IdentitiesOnly yes",
        '  UserKnownHostsFile "%s"' % known, "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes",
        "  HostKeyAlgorithms ssh-ed25519", "  BatchMode yes", "  ConnectTimeout 10", "  ServerAliveInterval 5",
        "  ServerAliveCountMax 3", "  ControlMaster auto", '  ControlPath "%s"' % control, "  ControlPersist 60",
        "  LogLevel ERROR", "",
    ])
    write_atomic(os.path.join(pair_dir, "ssh_config"), config.encode(), 0o600)
    return {"ssh_config": os.path.join(pair_dir, "ssh_config")}


def op_push(args: dict) -> dict:
    """Direct mode: rsync the listed workspace paths to the standby's staging area with the pair key."""
    config = os.path.join(data_dir(), "pair", "ssh_config")
    if not os.path.exists(config):
        raise Failure("NotPaired", "this host has no pair key; the controller must install it first")
    argv = rsync_argv(args, "ssh -F '%s' -T" % config)
    argv += [workspace_dir() + "/", "dumont-standby:incoming/"]
    return run_rsync(argv, args["paths"], float(args.get("timeout", 3600)))


def rsync_argv(args: dict, rsh: str) -> list:
    # --ignore-times: every listed path is known to differ; rsync's quick check only compares whole seconds.
    argv = ["rsync", "-aHS", "--numeric-ids", "--ignore-times", "--files-from=-", "--from0", "--stats",
            "--timeout=%d" % int(args.get("io_timeout", 60)), "-e", rsh]
    if args.get("bwlimit"):
        argv.append("--bwlimit=%d" % int(args["bwlimit"]))
    return argv


CURRENT_CHILD: list = []


def run_rsync(argv: list, paths: list, timeout: float) -> dict:
    started = time.time()
    listing = b"".join(os.fsencode(p) + b"\0" for p in paths)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    CURRENT_CHILD.append(proc)
    try:
        out, err = proc.communicate(listing, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise Failure("CommandTimeout", "rsync did not finish within %g s" % timeout) from None
    finally:
        CURRENT_CHILD.remove(proc)
    return {"returncode": proc.returncode, "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace")[-4000:], "seconds": time.time() - started}


def receive_argv(original: list, epoch: int, base_seq) -> list:  # type: ignore[no-untyped-def]
    """The ``rsync --server`` command to run for a pair-key push, or Failure if the request is not one.

    The destination and the delta basis are ours to choose: whatever paths the client asked for are ignored.
    """
    if len(original) < 4 or original[:2] != ["rsync", "--server"]:
        raise Failure("Refused", "only a staged rsync push is allowed with this key")
    options = []
    args = iter(original[2:])
    for arg in args:
        if arg == ".":
            break
        if arg == "--link-dest":
            next(args, None)
        elif arg.startswith("--link-dest="):
            continue
        elif arg in ("--numeric-ids", "--stats", "--ignore-times") or arg.startswith(("--timeout=", "--bwlimit=")):
            options.append(arg)
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) <= RSYNC_FLAGS:
            options.append(arg)
        else:
            raise Failure("Refused", "rsync option %r is not allowed with the pair key" % arg)
    else:
        raise Failure("Refused", "the rsync request names no destination")
    argv = ["rsync", "--server", *options]
    if base_seq is not None:
        argv.append("--link-dest=" + os.path.join(snapshot_path(int(base_seq)), "tree"))
    return argv + [".", os.path.join(incoming_dir(epoch), "tree") + "/"]


def receive(epoch: int) -> None:
    """Forced command of the pair key: run ``rsync --server`` into this epoch's staging area, nothing else."""
    try:
        if read_epoch() != epoch:
            raise Failure("Refused", "this key belongs to epoch %d, the standby is at %d" % (epoch, read_epoch()))
        stage_meta = read_json(os.path.join(incoming_dir(epoch), "stage.json"))
        if not isinstance(stage_meta, dict):
            raise Failure("Refused", "no pass is staged for epoch %d" % epoch)
        original = shlex.split(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
        argv = receive_argv(original, epoch, stage_meta.get("base_seq"))
    except Failure as failure:
        sys.stderr.write("dumont: refused: %s\n" % failure.message)
        sys.exit(3)
    os.environ["DUMONT_RECEIVE_EPOCH"] = str(epoch)  # lets a fence find and kill this receive
    os.execvp("rsync", argv)


def op_install_host_key(args: dict) -> dict:
    """Make this host's sshd present the pair's host key (so the endpoint never changes identity)."""
    path = os.environ.get("DUMONT_SSHD_HOST_KEY") or "/etc/ssh/ssh_host_ed25519_key"
    write_atomic(path, args["private_key"].encode(), 0o600)
    write_atomic(path + ".pub", (args["public_key"].strip() + "\n").encode(), 0o644)
    pidfile = os.environ.get("DUMONT_SSHD_PIDFILE") or "/run/sshd.pid"
    try:
        with open(pidfile) as handle:
            os.kill(int(handle.read().strip()), signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise Failure("ReloadFailed", "could not ask sshd to reload its host key: %s" % exc) from exc
    return {"path": path}


OPERATIONS = {
    "info": op_info, "set_epoch": op_set_epoch, "scan": op_scan, "entries": op_entries, "status": op_status,
    "manifest": op_manifest, "stage": op_stage, "inspect": op_inspect, "revert": op_revert, "commit": op_commit,
    "record_pass": op_record_pass, "verify": op_verify, "authorize_pair": op_authorize_pair,
    "revoke_pair": op_revoke_pair, "install_pair_client": op_install_pair_client, "push": op_push,
    "install_host_key": op_install_host_key,
}


# --------------------------------------------------------------------------- the request loop

MUTATING = {"set_epoch", "stage", "revert", "commit", "record_pass", "authorize_pair", "revoke_pair",
            "install_pair_client", "install_host_key"}
LOCK_WAIT_SECONDS = 30.0


def run_locked(operation, args: dict) -> dict:  # type: ignore[no-untyped-def]
    """Run a mutating operation under this host's lock, so two controllers can never interleave a pass."""
    os.makedirs(data_dir(), exist_ok=True)
    fd = os.open(os.path.join(data_dir(), "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Failure("Busy", "another controller holds this host's lock") from None
                time.sleep(0.05)
        return operation(args)  # type: ignore[no-any-return]
    finally:
        os.close(fd)



def handle(line: bytes) -> bytes:
    request_id = None
    try:
        request = json.loads(line)
        request_id = request.get("id")
        operation = OPERATIONS.get(request.get("op"))
        if operation is None:
            raise Failure("UnknownOperation", "unknown operation %r" % request.get("op"))
        args = request.get("args") or {}
        result = run_locked(operation, args) if request.get("op") in MUTATING else operation(args)
        response = {"id": request_id, "ok": True, "result": result}
    except Failure as failure:
        response = {"id": request_id, "ok": False, "error": {"kind": failure.kind, "message": failure.message}}
    except Exception as exc:  # noqa: BLE001 - reported to the controller, never swallowed
        response = {"id": request_id, "ok": False,
                    "error": {"kind": type(exc).__name__, "message": "%s: %s" % (type(exc).__name__, exc)}}
    return dump_json(response) + b"\n"


def serve() -> None:
    """Answer requests until stdin closes; when the controller goes away, stop any rsync we started."""
    requests: list = []
    ready = threading.Condition()

    def read_requests() -> None:
        for raw in sys.stdin.buffer:
            with ready:
                requests.append(raw)
                ready.notify()
        for child in list(CURRENT_CHILD):
            child.kill()
        os._exit(0)

    threading.Thread(target=read_requests, daemon=True).start()
    out = sys.stdout.buffer
    out.write(dump_json({"ready": True, "protocol": PROTOCOL, "pid": os.getpid()}) + b"\n")
    out.flush()
    while True:
        with ready:
            while not requests:
                ready.wait()
            line = requests.pop(0)
        out.write(handle(line))
        out.flush()


def main(argv: list) -> None:
    os.umask(0o022)
    if len(argv) >= 2 and argv[1] == "serve":
        serve()
    elif len(argv) >= 3 and argv[1] == "receive":
        receive(int(argv[2]))
    elif len(argv) >= 3 and argv[1] == "call":
        sys.stdout.buffer.write(handle(dump_json({"id": 0, "op": argv[2], "args": json.loads(sys.stdin.read() or "{}")})))
    else:
        sys.stderr.write("usage: agent.py serve | receive EPOCH | call OP < args.json\n")
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
