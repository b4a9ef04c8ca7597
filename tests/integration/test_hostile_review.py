"""The hostile review's findings that only real hosts can show (hostile-review.md #1, #5, #9).

A standby whose root is a small tmpfs (as root; skipped with the reason elsewhere) refuses a pass that would
fill it instead of running out of space half-way, and still fails over by renaming its candidate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dumont.errors import InsufficientSpace
from tests.conftest import Pair

FREE_MB = 15


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[Path, int], None]]:
    """Put a directory on a tmpfs of its own with ``free_mb`` free beyond what it already holds."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small filesystem needs root (mount -t tmpfs); this run is not root")
    mounted: list[Path] = []

    def shrink(folder: Path, free_mb: int) -> None:
        stash = tmp_path / "stash"
        subprocess.run(["cp", "-a", f"{folder}/.", str(stash)], check=True)
        shutil.rmtree(folder)
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        subprocess.run(["cp", "-a", f"{stash}/.", str(folder)], check=True)
        usage = shutil.disk_usage(folder)
        size = usage.total - usage.free + free_mb * 2**20
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)
        free = shutil.disk_usage(folder).free
        assert abs(free - free_mb * 2**20) < 2**20, f"the tmpfs has {free} bytes free, not {free_mb} MB"

    try:
        yield shrink
    finally:
        for folder in reversed(mounted):
            subprocess.run(["umount", "-l", str(folder)], check=False)


async def test_a_nearly_full_standby_refuses_the_pass_and_still_fails_over_by_rename(
        pair: Pair, small_disk: Callable[[Path, int], None], fill: Callable[[Path, dict[str, bytes]], None],
        tree_digest: Callable[[Path], dict[bytes, tuple[object, ...]]]) -> None:
    """hostile-review.md #1: 15 MB free and a 12 MB change filled the standby (the candidate's copy was not
    counted), and the failover then died on ENOSPC. Now the pass is refused before anything is written."""
    fill(pair.primary.workspace, {"data/small.bin": os.urandom(200_000), "notes.txt": b"v1\n"})
    first = await pair.replicator().run_pass()
    expected = tree_digest(pair.snapshot_tree(first.snapshot_seq or 0))
    await pair.standby_agent.close()
    await pair.cloud.pool.stop(pair.standby.name)
    small_disk(pair.standby.base, FREE_MB)
    await pair.cloud.pool.start(pair.standby.name)

    fill(pair.primary.workspace, {"data/big.bin": os.urandom(12 * 10**6)})
    with pytest.raises(InsufficientSpace, match=r"standby\.disk_gb") as refused:
        await pair.replicator().run_pass()
    usage = shutil.disk_usage(pair.standby.base)
    print(f"refused: {refused.value.message}; {usage.free} bytes still free")
    assert usage.free > (FREE_MB - 1) * 2**20, "nothing of the refused pass was left on the standby"
    status = await pair.standby_agent.status()
    assert status.candidate == first.snapshot_seq, "the candidate is still complete"

    started = time.monotonic()
    promoted = await pair.standby_agent.take_over(pair="test", epoch=2)
    took = time.monotonic() - started
    print(f"take_over on the nearly full standby: {took:.3f} s, mode {promoted['mode']}")
    assert promoted["mode"] == "candidate" and promoted["seq"] == first.snapshot_seq
    assert tree_digest(pair.standby.workspace) == expected
    assert (await pair.standby_agent.info()).epoch == 2


async def test_a_failback_leaves_a_complete_candidate_even_when_nothing_changed(
        pair: Pair, fill: Callable[[Path, dict[str, bytes]], None]) -> None:
    """hostile-review.md #9: after a failback the candidate stayed invalid until the next change, so the next
    failover copied the whole tree. An unchanged pass now brings a stale candidate up to date."""
    fill(pair.primary.workspace, {"model.pt": os.urandom(300_000)})
    first = await pair.replicator(keep_candidate=False).run_pass()  # as a GPU being restored gets its passes
    assert (await pair.standby_agent.status()).candidate is None
    unchanged = await pair.replicator().run_pass()
    assert not unchanged.copied
    assert (await pair.standby_agent.status()).candidate == first.snapshot_seq
    promoted = await pair.standby_agent.take_over(pair="test", epoch=2)
    assert promoted["mode"] == "candidate"


def spoil(path: Path) -> None:
    """7 bytes changed in place, size and mtime kept: what no scan notices (hostile-review.md #6)."""
    st = path.stat()
    with open(path, "r+b") as handle:
        handle.write(b"CORRUPT")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def test_a_corrupt_stored_copy_is_found_by_the_scrub_and_never_reaches_a_promoted_workspace(
        pair: Pair, fill: Callable[[Path, dict[str, bytes]], None],
        tree_digest: Callable[[Path], dict[bytes, tuple[object, ...]]]) -> None:
    fill(pair.primary.workspace, {"data/f1.bin": os.urandom(300_000), "data/f2.bin": os.urandom(1000)})
    first = await pair.replicator().run_pass()
    fill(pair.primary.workspace, {"notes.txt": b"a second pass links data/ from the first\n"})
    second = await pair.replicator().run_pass()
    newest = pair.snapshot_tree(second.snapshot_seq or 0)
    spoil(newest / "data" / "f1.bin")  # the inode snapshot 1 shares

    [found] = (await pair.standby_agent.scrub(budget_bytes=1 << 30))["corrupt"]
    assert found["path"] == "data/f1.bin" and found["repaired_from"] == "candidate", found
    assert tree_digest(newest) == tree_digest(pair.snapshot_tree(first.snapshot_seq or 0)) | {
        b"notes.txt": tree_digest(newest)[b"notes.txt"]}
    assert (newest / "data" / "f1.bin").read_bytes() == (pair.primary.workspace / "data" / "f1.bin").read_bytes()

    # Every copy spoiled: the path is sent again by the next pass, and the candidate is never promoted wrong.
    spoil(newest / "data" / "f1.bin")
    spoil(pair.standby.data_dir / "candidate" / "data" / "f1.bin")
    found = (await pair.standby_agent.scrub(budget_bytes=1 << 30))["corrupt"]
    assert {f["repaired_from"] for f in found} == {None}
    assert (await pair.standby_agent.status()).suspects == ("data/f1.bin",)
    resend = await pair.replicator().run_pass()
    assert resend.copied and resend.files_copied == 1
    assert (await pair.standby_agent.status()).suspects == ()
    promoted = await pair.standby_agent.take_over(pair="test", epoch=2)
    assert promoted["mode"] == "candidate"
    assert tree_digest(pair.standby.workspace) == tree_digest(pair.primary.workspace)


def make_sparse(path: Path, size: int, data: bytes) -> None:
    """A file of ``size`` bytes that is one hole but for ``data`` in its middle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.seek(size // 2)
        handle.write(data)
        handle.truncate(size)


@pytest.mark.parametrize("mode", ["direct", "relay"])
async def test_a_sparse_file_stays_sparse_on_the_wire_and_in_the_candidate(
        pair: Pair, mode: str, tree_digest: Callable[[Path], dict[bytes, tuple[object, ...]]]) -> None:
    """hostile-review.md #10: a 5 GB sparse file became a dense candidate and 5.37 GB on the wire."""
    size = 256 << 20
    make_sparse(pair.primary.workspace / "data" / "big.sparse", size, os.urandom(64 << 10))
    if os.lstat(pair.primary.workspace / "data" / "big.sparse").st_blocks * 512 > size // 2:
        pytest.skip("this filesystem does not keep holes")
    report = await pair.replicator(mode=mode).run_pass()
    print(f"{mode}: a {size >> 20} MB sparse file with 64 KB of data sent {report.bytes_sent} bytes")
    assert report.bytes_sent < 4 << 20, f"{report.bytes_sent} bytes on the wire for 64 KB of data"
    candidate = pair.standby.data_dir / "candidate" / "data" / "big.sparse"
    assert candidate.stat().st_size == size and candidate.stat().st_blocks * 512 < 4 << 20, "the candidate is dense"
    assert tree_digest(pair.snapshot_tree(report.snapshot_seq or 0)) == tree_digest(pair.primary.workspace)
