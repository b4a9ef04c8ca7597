"""The agent's request loop: one JSON request per line in, one answer per line out, until stdin closes."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from typing import Callable

from . import pairing, promotion, push, rescan, salvage, scancache, scrub, snapshots, tracker, watch
from .common import (
    DATA,
    KIND,
    PATH,
    Entry,
    Failure,
    Json,
    accept_epoch,
    data_dir,
    disk_usage,
    dump_json,
    read_epoch,
    snapshot_path,
    suspects,
    workspace_dir,
    write_epoch,
)
from .scan import (
    CACHE_TRUST_SECONDS,
    HASH_NAME,
    diff_entries,
    entry_for,
    manifest_digest,
    no_known_hash,
    scan_tree,
    summarize,
)

PROTOCOL = 1
LOCK_WAIT_SECONDS = 30.0
FULL_WALK_SECONDS = 300.0  # the longest a change inotify cannot see (an mmap write) waits to be found


def info(args: Json) -> Json:
    """Where this host keeps its workspace and data, its epoch, tools and disk."""
    os.makedirs(data_dir(), exist_ok=True)
    try:
        rsync = subprocess.run(["rsync", "--version"], capture_output=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        rsync = b""
    result = {"protocol": PROTOCOL, "hash": HASH_NAME, "workspace": workspace_dir(), "data_dir": data_dir(),
              "epoch": read_epoch(), "python": sys.version.split()[0],
              "rsync": rsync.split(b"\n")[0].decode(errors="replace"),
              "host": os.environ.get("DUMONT_HOST") or os.uname().nodename, "peak_rss_kb": _peak_rss_kb()}
    result.update(disk_usage(data_dir()))
    return result


def set_epoch(args: Json) -> Json:
    """Raise this host's epoch (``force`` also lowers it: for repair and tests only)."""
    if args.get("force"):
        write_epoch(int(args["epoch"]))
    else:
        accept_epoch(int(args["epoch"]))
    return {"epoch": read_epoch()}


def scan(args: Json) -> Json:
    """Manifest of the workspace, hashing only files whose stat changed since the last scan.

    With ``since`` naming the token of the caller's last scan, and the workspace's watcher able to prove that
    nothing changed since that scan's walk began (see ``tracker``), the answer is ``unchanged`` with no entries.
    With ``delta`` too, a scan that found changes answers only them against that scan (``delta``: ``base`` token,
    ``changed`` entries, ``removed`` paths) instead of every entry: the sync bench's 100,000-file manifest is
    9.6 MB of JSON to write, send and parse for ten changed files.
    """
    root = args.get("root") or workspace_dir()
    started = time.time()
    if not os.path.isdir(root):
        tracker.forget(root)
        return {"epoch": read_epoch(), "entries": [], "skipped": [], "missing": True, **summarize([])}
    watched = tracker.tracker_for(root)
    held = watched.last if args.get("delta") and watched.last is not None and watched.last.entries is not None \
        and args.get("since") == watched.last.token else None  # the caller holds this scan's manifest
    last, touched = watched.changes(args.get("since"), started,
                                    float(args.get("full_walk_seconds", FULL_WALK_SECONDS)))
    if last is not None and touched is not None and not touched[0]:
        return {"epoch": read_epoch(), "unchanged": True, "token": last.token, "skipped": last.skipped,
                "missing": False, "scan_seconds": time.time() - started, "started_at": last.started_at,
                "sparse": last.sparse, "tracking": watched.watcher.mode, "peak_rss_kb": _peak_rss_kb(),
                **last.summary}
    try:
        result = _look(root, watched, last, touched, started=started, use_cache=bool(args.get("use_cache", True)))
    except BaseException:
        watched.last = None  # the changes heard of went with this scan: the next one must walk
        raise
    now = watched.last.entries if watched.last is not None else None
    if held is not None and held.entries is not None and now is not None:
        changed = [entry for name, entry in now.items() if held.entries.get(name) != entry]
        removed = [name for name in held.entries if name not in now]
        result["delta"] = {"base": held.token, "changed": changed, "removed": removed}
        del result["entries"]
    elif not result.get("walked", True):  # a rescan's entries, answered whole: in the manifest's order
        result["entries"].sort(key=lambda e: os.fsencode(e[PATH]))
    return result


def _look(root: str, watched: tracker.Tracker, last: tracker.Walk | None,
          touched: tuple[set[bytes], set[bytes]] | None, *, started: float, use_cache: bool) -> Json:
    """The scan proper: the touched paths looked at again where the watcher vouches for the rest, else a walk."""
    cache_path = os.path.join(data_dir(), "scan-cache.bin")
    cache = scancache.load(cache_path) if use_cache else {}
    if use_cache and last is not None and last.entries is not None and touched is not None:
        found = rescan.rescan(root, last.entries, touched[0], cache, made=touched[1], skipped=last.skipped,
                              sparse=last.sparse)
        if found is not None:  # the paths touched looked at again; the rest is the last scan's
            # Unsorted: answered as a delta they need no order (scan() sorts them when it answers them whole). The
            # last scan was clean (or the watcher would not vouch), so only the paths read here can be hot.
            return _scanned(watched, started, list(found.entries.values()), skipped=found.skipped, sparse=found.sparse,
                            by_path=found.entries, full=False, clean=found.clean)
    sparse: list[str] = []
    promoted = promotion.promoted_hashes() if use_cache and root == workspace_dir() else None
    entries, skipped, new_cache = scan_tree(root, promoted or no_known_hash, cache, sparse=sparse)
    if use_cache and new_cache != cache:
        scancache.save(cache_path, new_cache)
    if promoted is not None:
        promotion.promoted_hashes_used()
    clean = not any(e[KIND] == "f" and e[DATA] is None for e in entries)
    return _scanned(watched, started, entries, skipped=skipped, sparse=sparse,
                    by_path={e[PATH]: e for e in entries} if use_cache else None, full=True, clean=clean)


def _scanned(watched: tracker.Tracker, started: float, entries: list[Entry], *, skipped: list[str],
             sparse: list[str], by_path: dict[str, Entry] | None, full: bool, clean: bool) -> Json:
    """Record a scan in the workspace's tracker and answer it (``clean``: no file was changing as it was read)."""
    summary = summarize(entries)
    walk = watched.walked(started, clean, summary, skipped, sparse, entries=by_path, full=full)
    result = {"epoch": read_epoch(), "entries": entries, "skipped": skipped, "missing": False,
              "scan_seconds": time.time() - started, "started_at": started, "sparse": sparse, "token": walk.token,
              "tracking": watched.watcher.mode, "walked": full, "peak_rss_kb": _peak_rss_kb()}
    result.update(summary)
    return result


def _peak_rss_kb() -> int | None:
    """The most memory this agent process has held (Linux reports kilobytes)."""
    try:
        import resource
    except ImportError:
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def entries(args: Json) -> Json:
    """Fresh entries for ``paths`` under ``root`` (None for a path that no longer exists)."""
    root = os.fsencode(args.get("root") or workspace_dir())
    out = {}
    for name in args["paths"]:
        full = os.path.join(root, os.fsencode(name))
        try:
            out[name] = entry_for(name, full, os.lstat(full))
        except OSError:
            out[name] = None
    return {"entries": out}


def settled(args: Json) -> Json:
    """Which of ``paths`` have not changed since well before ``since`` (this host's clock), at their scanned
    size and mtime.

    A file whose last change (ctime) is older than the scan by more than a timestamp tick cannot have been
    written while it was scanned or copied afterwards, so the copy holds exactly the content the scan hashed.
    """
    root = os.fsencode(args.get("root") or workspace_dir())
    limit = (float(args["since"]) - CACHE_TRUST_SECONDS) * 1e9
    quiet = []
    for name, size, mtime in args["files"]:
        try:
            st = os.lstat(os.path.join(root, os.fsencode(name)))
        except OSError:
            continue
        if st.st_size == size and st.st_mtime_ns == mtime and st.st_ctime_ns < limit:
            quiet.append(name)
    return {"settled": quiet}


def status(args: Json) -> Json:
    """The replica store: epoch, snapshots, last pass, disk."""
    os.makedirs(data_dir(), exist_ok=True)
    result = {"epoch": read_epoch(), "snapshots": [snapshots.snapshot_info(s) for s in snapshots.list_snapshots()],
              "last_pass": snapshots.last_pass(), "candidate": promotion.candidate_seq(),
              "suspects": suspects()}
    result.update(disk_usage(data_dir()))
    return result


def manifest(args: Json) -> Json:
    """The manifest of one snapshot."""
    seq = int(args["seq"])
    found = snapshots.snapshot_manifest(seq)
    return {"seq": seq, "entries": found, "digest": manifest_digest(found)}


def verify(args: Json) -> Json:
    """Re-hash a snapshot (or any tree) fully and compare it with a manifest."""
    seq = args.get("seq")
    if seq is not None:
        root = os.path.join(snapshot_path(int(seq)), "tree")
        expected = snapshots.snapshot_manifest(int(seq))
    else:
        root, expected = args.get("root") or workspace_dir(), args["entries"]
    actual, skipped, _ = scan_tree(root, no_known_hash)
    problems = diff_entries(expected, actual) + [f"{s!r} is a special file" for s in skipped]
    return {"root": root, "ok": not problems, "problems": problems, "checked": len(actual)}


def commit(args: Json) -> Json:
    """Commit the staged pass; then refresh the promotion candidate (a standby) and drop superseded retirements."""
    resent = list(snapshots.load_stage(int(args["epoch"])).get("resend", []))
    result = snapshots.commit(args)
    if args.get("candidate", True):
        result["candidate"] = promotion.commit_candidate(int(result["seq"]), resent)
    suspected = suspects()
    kept = {e[0] for e in snapshots.snapshot_manifest(int(result["seq"]))} if suspected else set()
    scrub.clear_suspects(resent + [p for p in suspected if p not in kept])  # resent, or gone from the workspace
    result["dropped_retired"] = promotion.drop_superseded_retirements(int(args["epoch"]))
    return result


def ping(args: Json) -> Json:
    """Answer at once: the controller's liveness probe over a channel of its own (no process is started for it)."""
    return {"at": time.time()}


Operation = Callable[[Json], Json]
OPERATIONS: dict[str, Operation] = {
    "ping": ping, "info": info, "set_epoch": set_epoch, "scan": scan, "entries": entries, "settled": settled,
    "status": status, "manifest": manifest, "verify": verify,
    "stage": snapshots.stage, "inspect": snapshots.inspect, "revert": snapshots.revert,
    "commit": commit, "record_pass": snapshots.record_pass,
    "promote": promotion.promote, "take_over": promotion.take_over, "retire_workspace": promotion.retire_workspace,
    "refresh_candidate": promotion.refresh_candidate_op, "scrub": scrub.scrub, "watch": watch.watch,
    "salvage_signature": salvage.signature, "salvage_sort": salvage.sort_out,
    "verify_promoted": promotion.verify_promoted,
    "authorize_pair": pairing.authorize_pair, "revoke_pair": pairing.revoke_pair,
    "install_pair_client": pairing.install_pair_client, "push": push.push, "push_start": push.push_start,
    "push_poll": push.push_poll,
    "install_host_certificate": pairing.install_host_certificate,
}
MUTATING = {"set_epoch", "stage", "revert", "commit", "record_pass", "authorize_pair", "revoke_pair",
            "install_pair_client", "install_host_certificate", "promote", "take_over", "retire_workspace",
            "refresh_candidate", "scrub", "salvage_sort"}


def run_locked(operation: Operation, args: Json) -> Json:
    """Run a mutating operation under this host's lock, so two of them never change its data at the same instant.

    The lock is held per call, not per pass (a pass is several calls): what keeps two passes apart is that only one
    controller acts on a state directory (``core/lock.py``) and on a pair's epoch (compare-and-set in the store).
    """
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
                time.sleep(0.05)  # flock has no timeout of its own
        return operation(args)
    finally:
        os.close(fd)


def handle(line: bytes) -> bytes:
    """Answer one request line."""
    request_id = None
    try:
        request = json.loads(line)
        request_id = request.get("id")
        name = request.get("op")
        operation = OPERATIONS.get(name)
        if operation is None:
            raise Failure("UnknownOperation", f"unknown operation {name!r}")
        args = request.get("args") or {}
        result = run_locked(operation, args) if name in MUTATING else operation(args)
        response = {"id": request_id, "ok": True, "result": result}
    except Failure as failure:
        response = {"id": request_id, "ok": False, "error": {"kind": failure.kind, "message": failure.message}}
    except Exception as exc:
        response = {"id": request_id, "ok": False,
                    "error": {"kind": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"}}
    return dump_json(response) + b"\n"


def serve() -> None:
    """Answer requests until stdin closes; when the controller goes away, stop any rsync we started."""
    requests: list[bytes] = []
    ready = threading.Condition()

    def read_requests() -> None:
        for raw in sys.stdin.buffer:
            with ready:
                requests.append(raw)
                ready.notify()
        for child in list(pairing.RUNNING):
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


def main(argv: list[str]) -> None:
    """``serve`` | ``call OP < args.json`` (``entry`` runs ``receive`` and ``clean-ssh`` without this module)."""
    if argv[1:2] == ["serve"]:
        serve()
    elif argv[1:2] == ["call"] and len(argv) == 3:
        request = {"id": 0, "op": argv[2], "args": json.loads(sys.stdin.read() or "{}")}
        sys.stdout.buffer.write(handle(dump_json(request)))
    else:
        sys.stderr.write("usage: agent.pyz serve | receive EPOCH | call OP < args.json | clean-ssh SSH-ARGV...\n")
        sys.exit(2)
