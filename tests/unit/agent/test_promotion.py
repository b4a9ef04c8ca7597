"""Promotion on a host, in-process: the candidate is an independent copy, and user writes never reach snapshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dumont.agent import common, promotion, server, snapshots
from tests.conftest import describe_tree


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "source").mkdir()
    monkeypatch.setenv("DUMONT_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("DUMONT_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def commit_source(host: Path, seq: int, epoch: int = 1) -> dict[str, object]:
    """Stage a pass that copies the whole source tree, and commit it (candidate refreshed, as a standby does)."""
    base = snapshots.list_snapshots()
    source = host / "source"
    entries = server.scan({"root": str(source), "use_cache": False})["entries"]
    names = [e[common.PATH] for e in entries if e[common.PATH] != "."]
    snapshots.stage({"epoch": epoch, "base_seq": base[-1] if base else None, "replace": names, "delete": []})
    tree = Path(common.incoming_dir(epoch)) / "tree"
    shutil.rmtree(tree)
    shutil.copytree(source, tree, symlinks=True)
    for entry in entries:  # hard links, as rsync -H would recreate them
        if entry[common.LINK]:
            os.unlink(tree / entry[common.PATH])
            os.link(tree / entry[common.LINK], tree / entry[common.PATH])
    return server.commit({"epoch": epoch, "seq": seq, "entries": entries, "keep": 3, "record": {}})


def inodes(root: Path) -> set[int]:
    return {p.lstat().st_ino for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def build(source: Path) -> None:
    (source / "model.pt").write_bytes(b"weights v1" * 1000)
    (source / "sub").mkdir(exist_ok=True)
    (source / "sub" / "notes.txt").write_text("v1")
    os.link(source / "model.pt", source / "model.hard")
    os.symlink("model.pt", source / "latest")


def test_the_candidate_is_an_exact_independent_copy(host: Path) -> None:
    build(host / "source")
    commit_source(host, 1)
    candidate = Path(promotion.candidate_dir())
    snapshot = Path(common.snapshot_path(1)) / "tree"
    assert describe_tree(candidate) == describe_tree(snapshot)
    assert not inodes(candidate) & inodes(snapshot), "no inode may be shared with a snapshot"
    (host / "source" / "sub" / "notes.txt").write_text("v2")
    (host / "source" / "new.txt").write_text("new")
    (host / "source" / "latest").unlink()
    commit_source(host, 2)
    assert describe_tree(candidate) == describe_tree(Path(common.snapshot_path(2)) / "tree")


def test_failover_promotion_renames_the_candidate_and_protects_snapshots(host: Path) -> None:
    build(host / "source")
    commit_source(host, 1)
    result = promotion.promote({"epoch": 2, "mode": "candidate"})
    workspace = host / "workspace"
    assert result["seq"] == 1 and not Path(promotion.candidate_dir()).exists()
    with open(workspace / "model.pt", "r+b") as handle:  # an in-place write, as torch.save does
        handle.write(b"CORRUPTED BY THE USER")
    assert (Path(common.snapshot_path(1)) / "tree" / "model.pt").read_bytes().startswith(b"weights v1")
    assert common.read_epoch() == 2


def test_a_restored_gpu_takes_its_snapshot_and_keeps_no_history(host: Path) -> None:
    build(host / "source")
    commit_source(host, 1)
    (host / "source" / "sub" / "notes.txt").write_text("v2")
    commit_source(host, 2)
    expected = describe_tree(Path(common.snapshot_path(2)) / "tree")
    promotion.promote({"epoch": 3, "mode": "take"})
    assert describe_tree(host / "workspace") == expected
    assert snapshots.list_snapshots() == []


def test_whatever_was_at_the_workspace_path_is_moved_aside_not_deleted(host: Path) -> None:
    build(host / "source")
    commit_source(host, 1)
    (host / "workspace").mkdir()
    (host / "workspace" / "precious.txt").write_text("do not delete")
    result = promotion.promote({"epoch": 2, "mode": "candidate"})
    assert Path(result["displaced"], "precious.txt").read_text() == "do not delete"


def test_retiring_a_workspace_keeps_it_until_a_later_snapshot(host: Path) -> None:
    (host / "workspace").mkdir()
    (host / "workspace" / "a").write_text("cpu-side write")
    retired = promotion.retire_workspace({"epoch": 4})["retired"]
    assert Path(retired, "a").read_text() == "cpu-side write"
    assert Path(retired).name == "retired-3"
    assert promotion.drop_superseded_retirements(3) == []
    assert promotion.drop_superseded_retirements(4) == ["retired-3"]


def test_nothing_to_promote_is_refused(host: Path) -> None:
    with pytest.raises(common.Failure, match="no complete snapshot"):
        promotion.promote({"epoch": 1, "mode": "candidate"})


def test_a_changed_large_file_is_refreshed_in_place_chunk_by_chunk(host: Path) -> None:
    source = host / "source"
    (source / "model.pt").write_bytes(os.urandom(4 * 1024 * 1024))
    commit_source(host, 1)
    candidate = Path(promotion.candidate_dir()) / "model.pt"
    inode = candidate.stat().st_ino
    with open(source / "model.pt", "r+b") as handle:
        handle.seek(2 * 1024 * 1024 + 10)
        handle.write(b"new weights")
    committed = commit_source(host, 2)
    assert committed["candidate"]["copied_bytes"] == 1024 * 1024, "only the changed chunk is written"  # type: ignore[index]
    refreshed = promotion.refresh_candidate(2)  # nothing left to change
    assert refreshed["copied_bytes"] == 0
    assert candidate.read_bytes() == (source / "model.pt").read_bytes()
    assert candidate.stat().st_ino == inode, "rewritten in place, not copied whole"
    assert candidate.stat().st_mtime_ns == (source / "model.pt").stat().st_mtime_ns
    (source / "model.pt").write_bytes(b"shrunk")
    commit_source(host, 3)
    assert candidate.read_bytes() == b"shrunk"
