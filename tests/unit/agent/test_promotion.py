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


def commit_source_without_candidate(host: Path, seq: int) -> None:
    """A commit whose candidate refresh did not happen (as when it failed)."""
    real = promotion.refresh_candidate
    promotion.refresh_candidate = lambda seq, force=None: {"seq": None}  # type: ignore[assignment]
    try:
        commit_source(host, seq)
    finally:
        promotion.refresh_candidate = real  # type: ignore[assignment]


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
    with pytest.raises(common.Failure, match="neither a complete candidate nor a complete snapshot"):
        promotion.promote({"epoch": 1, "mode": "candidate"})


def test_a_complete_candidate_is_promoted_even_with_every_snapshot_gone(host: Path) -> None:
    """hostile-review.md #5: `rm -rf snapshots/` with the candidate intact used to refuse the failover."""
    build(host / "source")
    commit_source(host, 1)
    expected = describe_tree(Path(promotion.candidate_dir()))
    shutil.rmtree(Path(common.data_dir()) / "snapshots")
    result = promotion.promote({"epoch": 2, "mode": "candidate"})
    assert (result["mode"], result["seq"], result["files"]) == ("candidate", 1, 3)
    assert describe_tree(host / "workspace") == expected and common.read_epoch() == 2


def test_a_stale_candidate_is_never_copied_at_failover_the_snapshot_is_taken_whole(host: Path) -> None:
    """hostile-review.md #1: promotion rebuilt the candidate at the worst moment (a full disk); now no copy."""
    build(host / "source")
    commit_source(host, 1)
    (host / "source" / "sub" / "notes.txt").write_text("v2")
    commit_source_without_candidate(host, 2)
    expected = describe_tree(Path(common.snapshot_path(2)) / "tree")
    result = promotion.promote({"epoch": 2, "mode": "candidate"})
    assert (result["mode"], result["seq"]) == ("take", 2)
    assert describe_tree(host / "workspace") == expected
    assert snapshots.list_snapshots() == [], "snapshots sharing inodes with the live tree are dropped"


def test_a_failed_promotion_leaves_the_epoch_where_it_was(host: Path) -> None:
    """hostile-review.md #5: the standby used to take the new epoch before a promotion that then failed."""
    common.write_epoch(3)
    with pytest.raises(common.Failure):
        promotion.take_over({"pair": "main", "epoch": 4})
    assert common.read_epoch() == 3


def test_take_over_revokes_the_pair_key_then_promotes_then_takes_the_epoch(
        host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = host / "authorized_keys"
    keys.write_text('command="x receive 1",restrict ssh-ed25519 AAAA dumont-pair=main\nssh-ed25519 BBBB user\n')
    monkeypatch.setenv("DUMONT_AUTHORIZED_KEYS", str(keys))
    build(host / "source")
    commit_source(host, 1)
    result = promotion.take_over({"pair": "main", "epoch": 2})
    assert result["removed"] == 1 and result["mode"] == "candidate"
    assert keys.read_text() == "ssh-ed25519 BBBB user\n"
    assert common.read_epoch() == 2
    with pytest.raises(common.Failure, match="older than this host's epoch 2"):
        promotion.take_over({"pair": "main", "epoch": 1})


def test_a_commit_stands_when_the_candidate_cannot_be_refreshed(
        host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(host / "source")

    def full_disk(seq: int, force: list[str] | None = None) -> dict[str, object]:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(promotion, "refresh_candidate", full_disk)
    result = commit_source(host, 1)
    assert result["seq"] == 1 and "No space left" in result["candidate"]["error"]
    assert promotion.candidate_seq() is None and snapshots.list_snapshots() == [1]


def test_a_stale_candidate_is_brought_up_to_date_on_request(host: Path) -> None:
    build(host / "source")
    commit_source_without_candidate(host, 1)
    assert promotion.candidate_seq() is None
    assert promotion.refresh_candidate_op({})["seq"] == 1
    assert promotion.candidate_seq() == 1
    assert promotion.refresh_candidate_op({})["copied_bytes"] == 0


def test_a_pass_that_does_not_fit_prunes_old_snapshots_first_then_refuses(
        host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC §4.6: old snapshots go before a pass is refused; the refusal names the disk setting."""
    build(host / "source")
    for seq in (1, 2, 3):
        (host / "source" / "sub" / "notes.txt").write_text(f"v{seq}")
        commit_source(host, seq)
    free = {"value": 10_000}

    def usage(path: str) -> dict[str, int]:
        return {"free_bytes": free["value"] + 5_000 * (3 - len(snapshots.list_snapshots())), "total_bytes": 100_000}
    monkeypatch.setattr(snapshots, "disk_usage", usage)
    snapshots.stage({"epoch": 1, "base_seq": 3, "replace": [], "delete": [], "needed_bytes": 9_000,
                     "min_free_fraction": 0.05})
    assert snapshots.list_snapshots() == [2, 3], "the oldest went first, and only as many as needed"
    with pytest.raises(common.Failure, match=r"standby.disk_gb"):
        snapshots.stage({"epoch": 1, "base_seq": 3, "replace": [], "delete": [], "needed_bytes": 90_000,
                         "min_free_fraction": 0.05})
    assert snapshots.list_snapshots() == [3], "the base is never pruned"


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


@pytest.mark.parametrize("mode", ["candidate", "take"])
def test_the_first_scan_after_a_promotion_takes_the_promoted_hashes_and_drops_them(
        host: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build(host / "source")
    commit_source(host, 1)
    promotion.promote({"epoch": 2, "mode": mode})
    assert Path(promotion.promoted_manifest_path()).exists()
    monkeypatch.setattr(promotion, "CACHE_TRUST_SECONDS", -3600.0)  # the files count as written long before
    hashed: list[bytes] = []
    real = server.scan_tree.__globals__["hash_file"]
    monkeypatch.setitem(server.scan_tree.__globals__, "hash_file",
                        lambda path, st: hashed.append(path) or real(path, st))
    first = server.scan({})
    assert hashed == [] and not Path(promotion.promoted_manifest_path()).exists()
    monkeypatch.setitem(server.scan_tree.__globals__, "hash_file", real)
    assert first["entries"] == server.scan({"use_cache": False})["entries"]  # the hashes it took are right


def test_a_promoted_hash_is_refused_for_a_file_changed_since_the_promotion(host: Path) -> None:
    build(host / "source")
    commit_source(host, 1)
    promotion.promote({"epoch": 2, "mode": "candidate"})
    live = Path(common.workspace_dir()) / "sub" / "notes.txt"
    before = live.stat()
    live.write_text("v9")  # same size, and the old mtime put back: only the ctime tells
    os.utime(live, ns=(before.st_atime_ns, before.st_mtime_ns))
    meta = common.read_json(os.path.join(common.data_dir(), "promoted.json"))
    assert isinstance(meta, dict)
    for at, trusted in ((live.stat().st_ctime_ns / 1e9 + 10, True), (before.st_ctime_ns / 1e9 + 1, False)):
        common.write_atomic(os.path.join(common.data_dir(), "promoted.json"), common.dump_json({**meta, "at": at}))
        lookup = promotion.promoted_hashes()
        assert lookup is not None
        assert (lookup("sub/notes.txt", live.stat()) is not None) is trusted


def test_without_a_working_cp_the_first_candidate_is_copied_entry_by_entry(
        host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    failed = subprocess.CompletedProcess(["cp"], 1, b"", b"cp: unsupported")
    monkeypatch.setattr(promotion.subprocess, "run", lambda *a, **k: failed)
    build(host / "source")
    commit_source(host, 1)
    candidate, snapshot = Path(promotion.candidate_dir()), Path(common.snapshot_path(1)) / "tree"
    assert promotion.candidate_seq() == 1
    assert describe_tree(candidate) == describe_tree(snapshot)
    assert not inodes(candidate) & inodes(snapshot)


def test_a_failover_right_after_a_failback_promotes_the_retired_workspace_not_an_older_snapshot(host: Path) -> None:
    """A chaos finding: the new GPU outbid before its first pass to the CPU; the CPU's snapshots predate the first
    failover, so promoting one would roll back everything written on the CPU meanwhile."""
    build(host / "source")
    commit_source(host, 1)  # the CPU as a standby, before the first failover
    promotion.promote({"epoch": 2, "mode": "candidate"})  # the first failover: the CPU serves
    (host / "workspace" / "sub" / "notes.txt").write_text("written on the CPU")
    promotion.retire_workspace({"epoch": 3})  # the failback: the new GPU serves, the CPU is the standby again
    result = promotion.take_over({"epoch": 4, "pair": "main"})  # the new GPU is lost before any pass
    assert (result["mode"], result["seq"], result["files"]) == ("retired", None, 3)
    assert (host / "workspace" / "sub" / "notes.txt").read_text() == "written on the CPU"
    assert common.read_epoch() == 4 and not list(Path(common.data_dir()).glob("retired-*"))


def test_a_retirement_superseded_by_a_later_snapshot_is_not_promoted(host: Path) -> None:
    build(host / "source")
    commit_source(host, 1)
    promotion.promote({"epoch": 2, "mode": "candidate"})
    promotion.retire_workspace({"epoch": 3})
    (Path(common.data_dir()) / "kept").mkdir()
    os.rename(Path(common.data_dir()) / "retired-2", Path(common.data_dir()) / "kept" / "retired-2")
    (host / "source" / "sub" / "notes.txt").write_text("from the new GPU")
    commit_source(host, 2, epoch=3)  # the new GPU's first pass
    os.rename(Path(common.data_dir()) / "kept" / "retired-2", Path(common.data_dir()) / "retired-2")  # not dropped
    assert promotion.take_over({"epoch": 4, "pair": "main"})["mode"] != "retired"
    assert (host / "workspace" / "sub" / "notes.txt").read_text() == "from the new GPU"
