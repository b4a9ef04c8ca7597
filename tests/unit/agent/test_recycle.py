"""The spare tree: a pruned snapshot becomes the next staging tree, patched where it differs, in-process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dumont.agent import common, promotion, recycle, server, snapshots
from tests.conftest import describe_tree

KEEP = 2


def run_pass(host: Path, seq: int) -> dict[str, object]:
    """One pass as the engine runs it: stage what changed since the newest snapshot, copy it in as rsync would
    (new inodes, hard-link groups whole), commit."""
    ws = host / "workspace"
    entries = server.scan({"use_cache": False})["entries"]
    seqs = snapshots.list_snapshots()
    base = seqs[-1] if seqs else None
    old = {e[common.PATH]: e for e in snapshots.snapshot_manifest(base)} if base is not None else {}
    new = {e[common.PATH]: e for e in entries}
    replace = {p for p, e in new.items() if p != "." and old.get(p) != e
               and not (e[common.KIND] == "d" and old.get(p, [None, None])[common.KIND] == "d")}
    for e in entries:  # a hard-link group goes whole
        leader = e[common.LINK]
        if leader is not None and (leader in replace or e[common.PATH] in replace):
            replace |= {leader, e[common.PATH]}
    delete = [p for p in old if p not in new]
    stage = snapshots.stage({"epoch": 1, "base_seq": base, "replace": sorted(replace), "delete": delete})
    tree = Path(str(stage["tree"]))
    for name in sorted(replace, key=os.fsencode):
        entry, src, dst = new[name], ws / name, tree / name
        if entry[common.KIND] == "d":
            dst.mkdir(parents=True, exist_ok=True)
        elif entry[common.KIND] == "l":
            os.symlink(os.readlink(src), dst)
        elif entry[common.LINK] is not None:
            os.link(tree / entry[common.LINK], dst)
        else:
            shutil.copy2(src, dst)
    return {"stage": stage, **snapshots.commit({"epoch": 1, "seq": seq, "entries": entries, "keep": KEEP,
                                                "record": {}})}


def snapshot_tree(seq: int) -> Path:
    return Path(common.snapshot_path(seq)) / "tree"


def test_the_pruned_snapshot_becomes_the_next_staging_tree(host: Path) -> None:
    ws = host / "workspace"
    for i in range(50):
        (ws / f"f{i:02d}").write_text(f"file {i}")
    for seq in range(1, 4):
        (ws / "f00").write_text(f"changed in pass {seq}")
        run_pass(host, seq)
    assert snapshots.list_snapshots() == [2, 3]
    assert os.path.isdir(Path(recycle.spare_dir()) / "tree"), "pruning kept snapshot 1 as the spare"
    (ws / "f01").write_text("changed in pass 4")
    result = run_pass(host, 4)
    # Only f00 (changed since snapshot 1, not by this pass) was linked again, not the 48 files that never changed.
    assert result["stage"]["linked"] == 1  # type: ignore[index]
    assert os.stat(snapshot_tree(4) / "f30").st_ino == os.stat(snapshot_tree(3) / "f30").st_ino
    assert (snapshot_tree(3) / "f01").read_text() == "file 1"
    assert describe_tree(snapshot_tree(4)) == describe_tree(ws)
    for seq in snapshots.list_snapshots():
        assert server.verify({"seq": seq})["ok"]


def test_a_recycled_tree_follows_every_kind_of_change(host: Path) -> None:
    ws = host / "workspace"
    (ws / "keep").write_text("never changes")
    (ws / "file").write_text("v1")
    (ws / "gone").write_text("deleted in step 1")
    (ws / "dir").mkdir()
    (ws / "dir" / "inner").write_text("a file in a directory that becomes a file")
    (ws / "flip").write_text("a file that becomes a directory")
    (ws / "locked").mkdir()
    (ws / "locked" / "doc").write_text("v1")
    os.symlink("file", ws / "link")
    (ws / "pair-a").write_text("linked")
    os.link(ws / "pair-a", ws / "pair-b")
    (ws / "name with spaces\nand a newline").write_text("odd")

    def step1() -> None:
        (ws / "file").write_text("v2")
        (ws / "gone").unlink()
        (ws / "locked" / "doc").write_text("v2")
        (ws / "locked").chmod(0o555)

    def step2() -> None:
        shutil.rmtree(ws / "dir")
        (ws / "dir").write_text("now a file")
        (ws / "flip").unlink()
        (ws / "flip").mkdir()
        (ws / "flip" / "child").write_text("new")
        (ws / "link").unlink()
        os.symlink("keep", ws / "link")

    def step3() -> None:
        (ws / "pair-b").unlink()
        (ws / "pair-b").write_text("no longer linked")
        (ws / "locked").chmod(0o755)
        (ws / "locked" / "doc").unlink()
        (ws / "new-dir" / "deep").mkdir(parents=True)
        (ws / "new-dir" / "deep" / "x").write_text("x")

    def step4() -> None:
        (ws / "gone").write_text("back again")
        os.link(ws / "keep", ws / "keep-too")

    def step5() -> None:
        (ws / "keep-too").unlink()
        (ws / "flip" / "child").write_text("changed")
        (ws / "dir").unlink()

    steps = [lambda: None, step1, step2, step3, step4, lambda: None, step5, lambda: None]
    for seq, change in enumerate(steps, start=1):
        change()
        run_pass(host, seq)
        assert describe_tree(snapshot_tree(seq)) == describe_tree(ws), f"pass {seq}"
        for kept in snapshots.list_snapshots():
            assert server.verify({"seq": kept})["ok"], f"snapshot {kept} after pass {seq}"


def test_a_take_promotion_drops_the_spare_with_the_snapshots(host: Path) -> None:
    ws = host / "workspace"
    (ws / "model.pt").write_bytes(b"weights")
    for seq in range(1, 4):
        (ws / "log").write_text(str(seq))
        run_pass(host, seq)
    assert os.path.isdir(recycle.spare_dir())
    shutil.rmtree(ws)
    promotion.promote({"epoch": 2, "mode": "take"})
    # Its files share inodes with the workspace now live: an in-place write there would change them.
    assert not os.path.lexists(recycle.spare_dir())


def test_a_pass_that_needs_the_room_drops_the_spare_first(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = host / "workspace"
    (ws / "a").write_text("a")
    for seq in range(1, 4):
        (ws / "b").write_text(str(seq))
        run_pass(host, seq)
    assert os.path.isdir(recycle.spare_dir())
    total = 10**9
    free = {"value": 10**8}

    def usage(_path: str) -> dict[str, int]:
        return {"total_bytes": total, "free_bytes": free["value"], "used_bytes": total - free["value"]}

    def drop() -> None:
        free["value"] = 10**9
        real_drop()

    real_drop = recycle.drop_spare
    monkeypatch.setattr(snapshots, "disk_usage", usage)
    monkeypatch.setattr(snapshots, "drop_spare", drop)
    snapshots.stage({"epoch": 1, "base_seq": 3, "replace": ["b"], "delete": [], "needed_bytes": 10**8,
                     "min_free_fraction": 0.05})
    assert snapshots.list_snapshots() == [2, 3], "the spare went, not a snapshot"
    assert not os.path.lexists(recycle.spare_dir())
