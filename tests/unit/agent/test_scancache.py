"""The scan cache's compact form: what is stored comes back, names with any byte included, and a damaged or
foreign file is an empty cache (everything hashed again), never an error or a wrong hash."""

from __future__ import annotations

import os
from pathlib import Path

from dumont.agent import scancache

CACHE = {
    "a.txt": [12, 1_700_000_000_123_456_789, 1_700_000_000_223_456_789, 42, "00112233445566778899aabbccddeeff"],
    os.fsdecode(b"odd \xff\nname"): [0, 1, 2, 3, "ffeeddccbbaa99887766554433221100"],
}


def test_what_is_saved_loads_back_from_disk_and_memory(tmp_path: Path) -> None:
    path = str(tmp_path / "scan-cache.bin")
    scancache.save(path, dict(CACHE))
    assert scancache.load(path) == CACHE  # from memory
    scancache._MEMORY.clear()
    assert scancache.load(path) == CACHE  # from disk
    assert scancache.decode(scancache.encode(CACHE)) == CACHE


def test_a_damaged_or_foreign_cache_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "scan-cache.bin"
    good = scancache.encode(CACHE)
    for damaged in (b"", b"{}", good[: len(scancache.MAGIC) + 5], scancache.MAGIC + b"not zlib"):
        path.write_bytes(damaged)
        scancache._MEMORY.clear()
        assert scancache.load(str(path)) == {}
    assert scancache.load(str(tmp_path / "missing.bin")) == {}


def test_a_file_changed_behind_the_memory_copy_is_read_again(tmp_path: Path) -> None:
    path = str(tmp_path / "scan-cache.bin")
    scancache.save(path, dict(CACHE))
    smaller = {"a.txt": CACHE["a.txt"]}
    Path(path).write_bytes(scancache.encode(smaller))  # another agent process wrote it
    assert scancache.load(path) == smaller
