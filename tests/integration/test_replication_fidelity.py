"""Given awkward workspaces, when a pass runs over real SSH and rsync, then the snapshot is an exact copy."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Pair

ODD_NAMES = {
    "with space.txt": b"space",
    "new\nline.txt": b"newline",
    "-leading-dash": b"dash",
    "--also-an-option": b"double dash",
    "ünïcødé/ファイル.txt": b"unicode",
    "quote'single\"double": b"quotes",
    "$(touch pwned)": b"not run by any shell",
    "a\tb\\c": b"tab and backslash",
}


def build_awkward_workspace(ws: Path, outside: Path) -> None:
    """Names, links, holes and modes that replication has to carry over exactly."""
    for name, data in ODD_NAMES.items():
        path = ws / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    raw = os.path.join(os.fsencode(ws), b"latin1-\xe9t\xe9\xff.bin")
    with open(raw, "wb") as handle:
        handle.write(b"not utf-8 name")
    os.makedirs(os.path.join(os.fsencode(ws), b"dir-\xfe"))
    with open(os.path.join(os.fsencode(ws), b"dir-\xfe", b"inner"), "wb") as handle:
        handle.write(b"inside a non-utf-8 directory")
    (ws / "empty dir" / "nested empty").mkdir(parents=True)
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("must never be copied through a link")
    os.symlink(str(outside), ws / "link-to-outside-dir")
    os.symlink(str(outside / "secret.txt"), ws / "link-to-outside-file")
    os.symlink("with space.txt", ws / "relative link")
    os.symlink("does/not/exist", ws / "dangling")
    (ws / "hard-a").write_bytes(b"shared inode" * 100)
    os.link(ws / "hard-a", ws / "hard-b")
    os.link(ws / "hard-a", ws / "empty dir" / "hard-c")
    with open(ws / "sparse.img", "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
        handle.seek(32 * 1024 * 1024)
        handle.write(b"island in a hole")
    (ws / "large.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    (ws / "private.key").write_bytes(b"0600")
    os.chmod(ws / "private.key", 0o600)
    (ws / "script.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(ws / "script.sh", 0o755)
    (ws / "read-only").mkdir()
    (ws / "read-only" / "frozen.txt").write_bytes(b"ro")
    os.chmod(ws / "read-only" / "frozen.txt", 0o444)
    os.chmod(ws / "read-only", 0o555)
    os.utime(ws / "script.sh", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


@pytest.mark.parametrize("mode", ["direct", "relay", "direct in 3 streams"])
async def test_awkward_workspace_is_replicated_exactly(
    pair: Pair, mode: str, tmp_path: Path, tree_digest: Callable[[Path], dict[bytes, tuple[object, ...]]]
) -> None:
    """Given names with spaces/newlines/odd bytes, links, holes and modes, then the snapshot matches exactly."""
    ws = pair.primary.workspace
    build_awkward_workspace(ws, tmp_path / "outside")
    replicator = pair.replicator(mode=mode.split(maxsplit=1)[0], streams=3 if "streams" in mode else 1)

    report = await replicator.run_pass()

    assert report.copied and report.deferred == ()
    snapshot = pair.snapshot_tree(report.seq)
    assert tree_digest(snapshot) == tree_digest(ws)
    assert os.readlink(snapshot / "link-to-outside-dir") == str(tmp_path / "outside")
    assert (snapshot / "link-to-outside-dir").is_symlink(), "a symlink must stay a link, never be followed"
    assert not list((pair.standby.base).rglob("secret.txt")), "nothing behind a link is ever copied"
    assert not (Path.cwd() / "pwned").exists()
    sparse = os.stat(snapshot / "sparse.img")
    assert sparse.st_blocks * 512 < 4 * 1024 * 1024, "a sparse file stays sparse"
    assert await pair.standby_agent.verify_snapshot(report.seq) == []
    os.chmod(ws / "read-only", 0o755)


async def test_changes_between_passes_are_replicated(
    pair: Pair, fill: Callable[[Path, dict[str, bytes]], None],
    tree_digest: Callable[[Path], dict[bytes, tuple[object, ...]]],
) -> None:
    """Given a synced standby, when files are added, changed, deleted and retyped, then the next snapshot follows."""
    ws = pair.primary.workspace
    fill(ws, {f"dir{i}/file{j}.txt": f"{i}-{j}".encode() for i in range(5) for j in range(20)})
    fill(ws, {"model.pt": os.urandom(8 * 1024 * 1024), "becomes-dir": b"file first"})
    replicator = pair.replicator()
    first = await replicator.run_pass()

    (ws / "dir0" / "file0.txt").write_bytes(b"changed")
    for j in range(10):
        (ws / "dir1" / f"file{j}.txt").unlink()
    (ws / "becomes-dir").unlink()
    fill(ws, {"becomes-dir/child": b"now a directory", "dir9/new.txt": b"new"})
    with open(ws / "model.pt", "r+b") as handle:
        handle.seek(4 * 1024 * 1024)
        handle.write(os.urandom(256 * 1024))
    os.chmod(ws / "dir2" / "file3.txt", 0o640)
    second = await replicator.run_pass()

    assert second.snapshot_seq == second.seq != first.seq
    assert tree_digest(pair.snapshot_tree(second.seq)) == tree_digest(ws)
    assert second.bytes_sent < 2 * 1024 * 1024, "an in-place change to a large file travels as a delta"
    assert tree_digest(pair.snapshot_tree(first.seq))[b"dir0/file0.txt"][4] != tree_digest(ws)[b"dir0/file0.txt"][4]


async def test_retention_keeps_the_newest_snapshots_as_hard_links(
    pair: Pair, fill: Callable[[Path, dict[str, bytes]], None]
) -> None:
    """Given K=2, when four passes change one small file each, then two snapshots remain and share big files."""
    ws = pair.primary.workspace
    fill(ws, {"big.bin": os.urandom(4 * 1024 * 1024)})
    replicator = pair.replicator(keep_snapshots=2)
    seqs = []
    for i in range(4):
        fill(ws, {"counter.txt": str(i).encode()})
        seqs.append((await replicator.run_pass()).seq)

    kept = sorted(p.name for p in (pair.standby.data_dir / "snapshots").iterdir())
    assert kept == [f"{seqs[-2]:010d}", f"{seqs[-1]:010d}"]
    older, newer = (pair.snapshot_tree(s) / "big.bin" for s in seqs[-2:])
    assert os.stat(older).st_ino == os.stat(newer).st_ino, "unchanged files cost no space: they are hard links"
    assert (pair.snapshot_tree(seqs[-2]) / "counter.txt").read_bytes() == b"2"


async def test_no_change_pass_copies_nothing_and_keeps_the_snapshot(
    pair: Pair, fill: Callable[[Path, dict[str, bytes]], None]
) -> None:
    """Given a synced standby, when nothing changed, then the pass records itself without a new snapshot."""
    fill(pair.primary.workspace, {f"f{i}": b"x" * i for i in range(50)})
    replicator = pair.replicator()
    first = await replicator.run_pass()
    second = await replicator.run_pass()

    assert not second.copied and second.bytes_sent == 0
    assert second.seq == first.seq + 1 and second.snapshot_seq == first.seq
    status = await pair.standby_agent.status()
    assert status.last_pass is not None and status.last_pass["seq"] == second.seq
    assert [s.seq for s in status.snapshots] == [first.seq]


@pytest.mark.parametrize("streams", [1, 2])
async def test_a_followed_push_reports_its_bytes_as_they_move_and_ends_at_the_total(
    pair: Pair, fill: Callable[[Path, dict[str, bytes]], None],
    tree_digest: Callable[[Path], dict[bytes, tuple[object, ...]]], streams: int,
) -> None:
    """Given 24 MB to copy, when the pass is followed, then its progress never goes back and ends at 24 MB, and
    the snapshot is exact as ever."""
    fill(pair.primary.workspace, {"big.bin": os.urandom(16 << 20), "mid.bin": os.urandom(8 << 20), "s.txt": b"s"})
    seen: list[tuple[int, int]] = []
    replicator = pair.replicator(streams=streams)
    replicator.on_progress = lambda done, total: seen.append((done, total))
    report = await replicator.run_pass()
    total = (24 << 20) + 1
    assert seen and seen[-1] == (total, total)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert tree_digest(pair.snapshot_tree(report.seq)) == tree_digest(pair.primary.workspace)
