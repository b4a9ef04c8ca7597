"""Scanning a tree into a manifest: every path, never following links, hashing only what it must."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .common import DATA, KIND, LINK, MODE, MTIME, PATH, SIZE, Entry, Failure, Json, dump_json

HASH_NAME = "blake2b-128"
CACHE_TRUST_SECONDS = 2.0  # a file changed this recently may change again within the same timestamp tick
CHUNK = 1 << 20

StatKey = Tuple[int, int, int, int]
HashLookup = Callable[[str, os.stat_result], Optional[str]]
ScanResult = Tuple[List[Entry], List[str], Dict[str, List[Any]]]


def stat_key(st: os.stat_result) -> StatKey:
    """What must stay equal for a file to be unchanged: size, mtime, ctime, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


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


def walk(root: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
    """Yield (relative path, lstat) for every entry under ``root``, never following links."""
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
            raise Failure("UnreadablePath", f"cannot list {os.fsdecode(full)!r}: {exc.strerror}") from exc
        for entry in entries:
            child = os.path.join(rel, entry.name) if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)


def entry_for(name: str, full: bytes, st: os.stat_result, digest: str | None = None) -> Entry | None:
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


SPARSE_MIN_BYTES = 1 << 20  # smaller files are cheap to send whatever they hold


def scan_tree(root: str, hashes: HashLookup, cache: dict[str, list[Any]] | None = None,
              trust_all: bool = False, sparse: list[str] | None = None) -> ScanResult:
    """Return (entries, skipped, new_cache) for the tree at ``root``.

    ``hashes(rel, st)`` may return a known hash for a file (None: look in ``cache``, else hash it). Files whose
    hash could not be taken consistently get hash None ("hot"): a pass keeps the standby's previous version.
    ``new_cache`` holds the hashes that may be reused next time: only those of files whose last change is older
    than the racy window (or all, with ``trust_all``, for trees nobody else writes).
    """
    broot = os.fsencode(root)
    entries: list[Entry] = []
    skipped: list[str] = []
    new_cache: dict[str, list[Any]] = {}
    groups: dict[tuple[int, int], list[Entry]] = {}
    by_inode: dict[tuple[int, ...], str | None] = {}
    for rel, st in walk(broot):
        name = os.fsdecode(rel)
        digest, cached = known_hash(name, st, hashes, cache, by_inode)
        entry = entry_for(name, os.path.join(broot, rel), st, digest)
        if entry is None:
            skipped.append(name)
            continue
        entries.append(entry)
        if entry[KIND] != "f":
            continue
        if sparse is not None and st.st_size >= SPARSE_MIN_BYTES and st.st_blocks * 512 < st.st_size // 2:
            sparse.append(name)  # mostly holes: the pass sends it compressed (from the walk's own stat)
        # A hash is reusable only if no write can have landed in the same timestamp tick after we read.
        trusted = trust_all or cached or st.st_ctime_ns < (time.time() - CACHE_TRUST_SECONDS) * 1e9
        if entry[DATA] is not None and trusted:
            new_cache[name] = [*stat_key(st), entry[DATA]]
        if st.st_nlink > 1:
            groups.setdefault((st.st_dev, st.st_ino), []).append(entry)
            by_inode[(st.st_dev, *stat_key(st))] = entry[DATA]
    entries.sort(key=lambda e: os.fsencode(e[PATH]))
    _mark_hard_links(groups)
    return entries, skipped, new_cache


def scan_paths(root: str, names: list[str], hashes: HashLookup) -> ScanResult:
    """Like :func:`scan_tree` for ``names`` under ``root`` only (a path that is not there has no entry); hard-link
    groups are found among these paths alone, so a group must be named whole."""
    broot = os.fsencode(root)
    entries: list[Entry] = []
    skipped: list[str] = []
    fresh: dict[str, list[Any]] = {}
    groups: dict[tuple[int, int], list[Entry]] = {}
    by_inode: dict[tuple[int, ...], str | None] = {}
    for name in sorted(set(names), key=os.fsencode):
        full = os.path.join(broot, os.fsencode(name))
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        digest, _ = known_hash(name, st, hashes, None, by_inode)
        entry = entry_for(name, full, st, digest)
        if entry is None:
            skipped.append(name)
            continue
        entries.append(entry)
        if entry[KIND] == "f" and entry[DATA] is not None:
            fresh[name] = [*stat_key(st), entry[DATA]]
            if st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(entry)
                by_inode[(st.st_dev, *stat_key(st))] = entry[DATA]
    _mark_hard_links(groups)
    return entries, skipped, fresh


def known_hash(name: str, st: os.stat_result, hashes: HashLookup, cache: dict[str, list[Any]] | None,
                by_inode: dict[tuple[int, ...], str | None]) -> tuple[str | None, bool]:
    """A hash we already have for this file, and whether it came from the cache."""
    if not stat.S_ISREG(st.st_mode):
        return None, False
    digest = hashes(name, st)
    if digest is None and cache is not None:
        hit = cache.get(name)
        if hit is not None and tuple(hit[:4]) == stat_key(st):
            return hit[4], True
    if digest is None and st.st_nlink > 1:
        digest = by_inode.get((st.st_dev, *stat_key(st)))  # another name of a file already hashed
    return digest, False


def _mark_hard_links(groups: dict[tuple[int, int], list[Entry]]) -> None:
    """Point every member of a hard-link group inside the tree at its leader (first path in byte order)."""
    for group in groups.values():
        if len(group) > 1:
            group.sort(key=lambda e: os.fsencode(e[PATH]))
            for entry in group[1:]:
                entry[LINK] = group[0][PATH]


def no_known_hash(_name: str, _st: os.stat_result) -> str | None:
    """A lookup that knows nothing: hash everything (or use the cache)."""
    return None


def summarize(entries: list[Entry]) -> Json:
    """How many files, bytes and paths a manifest holds."""
    files = [e for e in entries if e[KIND] == "f"]
    return {"files": len(files), "bytes": sum(e[SIZE] for e in files), "paths": len(entries)}


def manifest_digest(entries: list[Entry]) -> str:
    """SHA-256 of the canonical JSON of a manifest; equal manifests have equal digests."""
    return hashlib.sha256(dump_json(entries)).hexdigest()


def diff_entries(expected: list[Entry], actual: list[Entry]) -> list[str]:
    """Readable differences between two manifests."""
    want = {e[PATH]: e for e in expected}
    have = {e[PATH]: e for e in actual}
    problems = []
    for name in sorted(set(want) | set(have)):
        a, b = want.get(name), have.get(name)
        if a is None:
            problems.append(f"{name!r} is not in the manifest")
        elif b is None:
            problems.append(f"{name!r} is missing")
        elif a != b:
            fields = [f for f, i in (("kind", KIND), ("mode", MODE), ("size", SIZE), ("mtime", MTIME),
                                     ("content", DATA), ("hard link", LINK)) if a[i] != b[i]]
            problems.append(f"{name!r} differs in {', '.join(fields)}")
    return problems
