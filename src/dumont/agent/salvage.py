"""Salvage on a new primary: what a provider's copy brought over from a failed GPU, kept only where it is news.

The failed GPU's workspace is copied whole into ``<workspace>/.dumont/salvage/<epoch>/`` (the provider copies
while that GPU is paused). A file there that equals the live file at the same path is what the last pass had
already carried (or the CPU wrote the same): it is dropped. What is left is what the GPU wrote after its last
pass, or an older or other version of a file the CPU changed since: kept beside the live file, never over it.
"""

from __future__ import annotations

import filecmp
import os
import stat

from .common import Failure, Json, workspace_dir

SALVAGE_DIR = ".dumont/salvage"


def _folder(args: Json) -> str:
    rel = str(args["folder"])
    if not rel.startswith(SALVAGE_DIR + "/") or ".." in rel.split("/"):
        raise Failure("Refused", f"{rel!r} is not a salvage folder (under {SALVAGE_DIR}/)")
    return os.path.join(workspace_dir(), rel)


def signature(args: Json) -> Json:
    """How many files and bytes the salvage folder holds, and its newest change (to see a copy settle)."""
    count = size = newest = 0
    for dirpath, _, filenames in os.walk(_folder(args)):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return {"files": count, "bytes": size, "newest_ns": newest}


def sort_out(args: Json) -> Json:
    """Drop what equals the live workspace; list what is kept (path, size, mtime) and remove empty folders."""
    folder = _folder(args)
    live_root = workspace_dir()
    kept: list[dict[str, object]] = []
    dropped = 0
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            live = os.path.join(live_root, rel)
            if rel.split(os.sep)[0] == ".dumont" or _same(path, st, live):
                os.unlink(path)  # already there, or an older salvage of the failed GPU's own
                dropped += 1
            else:
                kept.append({"path": rel, "size": st.st_size, "mtime": st.st_mtime})
        for name in dirnames:
            sub = os.path.join(dirpath, name)
            if os.path.isdir(sub) and not os.path.islink(sub) and not os.listdir(sub):
                os.rmdir(sub)
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
    kept.sort(key=lambda k: str(k["path"]))
    return {"kept": kept, "dropped": dropped}


def _same(path: str, st: os.stat_result, live: str) -> bool:
    try:
        other = os.lstat(live)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode) or stat.S_ISLNK(other.st_mode):
        return stat.S_ISLNK(st.st_mode) and stat.S_ISLNK(other.st_mode) and os.readlink(path) == os.readlink(live)
    return stat.S_ISREG(other.st_mode) and other.st_size == st.st_size and filecmp.cmp(path, live, shallow=False)
