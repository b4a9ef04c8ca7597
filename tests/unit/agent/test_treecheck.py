"""The commit's check of a staged tree: what it reads again and what it refuses, in-process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dumont.agent import common, server, snapshots, treecheck
from tests.unit.agent.test_recycle import run_pass


def staged_pass(host: Path, replace: list[str]) -> tuple[Path, list[common.Entry]]:
    """Stage a pass on snapshot 1 replacing ``replace`` (copied in), and return its tree and expected entries."""
    ws = host / "workspace"
    entries = server.scan({"use_cache": False})["entries"]
    stage = snapshots.stage({"epoch": 1, "base_seq": 1, "replace": replace, "delete": []})
    tree = Path(str(stage["tree"]))
    for name in replace:
        shutil.copy2(ws / name, tree / name)
    return tree, entries


def commit(entries: list[common.Entry]) -> None:
    snapshots.commit({"epoch": 1, "seq": 2, "entries": entries, "keep": 3, "record": {}})


@pytest.fixture
def one_snapshot(host: Path) -> Path:
    ws = host / "workspace"
    (ws / "a").write_text("same text")
    (ws / "b").write_text("same text")
    os.utime(ws / "b", ns=(os.stat(ws / "a").st_mtime_ns,) * 2)
    (ws / "sub").mkdir()
    (ws / "sub" / "c").write_text("c")
    run_pass(host, 1)
    return host


def test_a_name_the_manifest_does_not_hold_is_refused(one_snapshot: Path) -> None:
    tree, entries = staged_pass(one_snapshot, [])
    (tree / "sub" / ".c.XyZ").write_text("an rsync temporary left behind")
    with pytest.raises(common.Failure, match=r"'sub/.c.XyZ' is not in the manifest"):
        commit(entries)
    assert snapshots.list_snapshots() == [1]


def test_a_missing_name_is_refused(one_snapshot: Path) -> None:
    tree, entries = staged_pass(one_snapshot, [])
    (tree / "sub" / "c").unlink()
    with pytest.raises(common.Failure, match=r"'sub/c' is missing"):
        commit(entries)


def test_a_file_that_is_not_the_bases_inode_is_read_again(one_snapshot: Path) -> None:
    tree, entries = staged_pass(one_snapshot, [])
    st = os.stat(tree / "sub" / "c")
    os.unlink(tree / "sub" / "c")
    (tree / "sub" / "c").write_text("x")  # same size and mtime as the snapshot's, other content
    os.utime(tree / "sub" / "c", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(common.Failure, match=r"'sub/c' differs in content"):
        commit(entries)


def test_a_copied_file_linked_to_another_path_is_refused(one_snapshot: Path) -> None:
    tree, entries = staged_pass(one_snapshot, ["a"])
    os.unlink(tree / "a")
    os.link(tree / "b", tree / "a")  # same content, mode and time as a: only the shared inode is wrong
    with pytest.raises(common.Failure, match=r"shares its inode with paths outside its hard-link group"):
        commit(entries)


def test_an_unchanged_tree_reads_again_only_its_directories(one_snapshot: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _, entries = staged_pass(one_snapshot, [])
    read: list[str] = []
    real = treecheck.scan_paths

    def recording(root: str, names: list[str], lookup: treecheck.HashLookup) -> object:
        read.extend(names)
        return real(root, names, lookup)

    monkeypatch.setattr(treecheck, "scan_paths", recording)
    commit(entries)
    assert sorted(read) == [".", "sub"]
    assert server.verify({"seq": 2})["ok"]
