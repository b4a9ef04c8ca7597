"""A scan that looks again only at the paths inotify named must answer what a whole walk would, on a real tree:
every kind of change, a random sequence of them, and the cases where it must walk instead (hard links, lost
events, the full-walk period)."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from dumont.agent import common, server, tracker
from dumont.agent.scan import no_known_hash, scan_tree
from tests.unit.agent.test_tracker import CHANGES


@pytest.fixture
def workspace(workspace: Path) -> Path:
    """The shared watched workspace, with a folder two levels deep."""
    (workspace / "data" / "deep").mkdir()
    (workspace / "data" / "deep" / "b.txt").write_text("b")
    return workspace


def scan(since: object = None, **args: object) -> dict[str, object]:
    return server.scan({"since": since, **args})


def walked_from_scratch(ws: Path) -> tuple[list[object], list[str]]:
    entries, skipped, _ = scan_tree(str(ws), no_known_hash)
    return entries, skipped


def assert_as_walked(result: dict[str, object], ws: Path) -> None:
    entries, skipped = walked_from_scratch(ws)
    assert result["entries"] == entries
    assert result["skipped"] == skipped


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_kind_of_change_is_seen_without_a_walk(workspace: Path, change: str) -> None:
    first = scan()
    assert first["walked"] is True
    CHANGES[change](workspace)
    second = scan(first["token"])
    assert second["walked"] is False, "only the touched paths are looked at again"
    assert_as_walked(second, workspace)


def test_a_folder_moved_inside_the_tree_and_changed_under_its_new_name(workspace: Path) -> None:
    token = scan()["token"]
    (workspace / "data").rename(workspace / "moved")
    (workspace / "moved" / "deep" / "c.txt").write_text("c")
    result = scan(token)
    assert_as_walked(result, workspace)
    (workspace / "moved" / "deep" / "b.txt").write_text("changed after the move")
    again = scan(result["token"])
    assert again["walked"] is False
    assert_as_walked(again, workspace)


def test_a_folder_made_again_under_its_old_name_is_walked(workspace: Path) -> None:
    """What is written in a folder before its watch is set was never heard of, even where a folder of the same
    name stood at the last scan (the sync bench's file-count series found it: 20,000 files written into folders
    named as the 2,000-file tree's, and the scan answered the 2,000)."""
    token = scan()["token"]
    shutil.rmtree(workspace / "data")
    (workspace / "data" / "deep").mkdir(parents=True)
    for i in range(20):
        (workspace / "data" / "deep" / f"new{i}").write_text(str(i))
    result = scan(token)
    assert result["walked"] is False
    assert_as_walked(result, workspace)


def test_a_folder_moved_in_over_a_removed_one_of_the_same_name_is_walked(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "data"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "x.txt").write_text("x")
    token = scan()["token"]
    shutil.rmtree(workspace / "data")
    outside.rename(workspace / "data")
    assert_as_walked(scan(token), workspace)


def test_a_file_becomes_a_folder_and_back(workspace: Path) -> None:
    token = scan()["token"]
    (workspace / "model.pt").unlink()
    (workspace / "model.pt").mkdir()
    (workspace / "model.pt" / "inside").write_text("i")
    result = scan(token)
    assert_as_walked(result, workspace)
    shutil.rmtree(workspace / "data")
    (workspace / "data").write_text("a file now")
    assert_as_walked(scan(result["token"]), workspace)


def test_a_hard_link_makes_the_scan_walk(workspace: Path) -> None:
    token = scan()["token"]
    os.link(workspace / "model.pt", workspace / "model.hard")
    result = scan(token)
    assert result["walked"] is True
    assert_as_walked(result, workspace)
    (workspace / "model.pt").write_bytes(b"n" * 1000)  # a member of a group: walk again
    assert scan(result["token"])["walked"] is True


def test_lost_events_make_the_scan_walk(workspace: Path) -> None:
    token = scan()["token"]
    tracker.tracker_for(str(workspace)).watcher.touched = None  # as after a queue overflow
    (workspace / "model.pt").write_bytes(b"n" * 1000)
    result = scan(token)
    assert result["walked"] is True
    assert_as_walked(result, workspace)


def test_the_full_walk_period_still_holds(workspace: Path) -> None:
    token = scan()["token"]
    (workspace / "model.pt").write_bytes(b"n" * 1000)
    token = scan(token)["token"]
    (workspace / "model.pt").write_bytes(b"o" * 1000)
    assert scan(token, full_walk_seconds=0)["walked"] is True


@pytest.mark.parametrize("seed", [20261207, 1, 2])
def test_a_random_sequence_of_changes_is_always_answered_as_a_walk_would(workspace: Path, seed: int) -> None:
    rng = random.Random(seed)
    result = scan()
    rescans = 0
    for _ in range(80):
        for _ in range(rng.randint(1, 4)):
            _random_change(workspace, rng)
        answer = scan(result["token"])
        if not answer.get("unchanged"):  # some draws change nothing (a rename onto itself, nothing to delete)
            result = answer
            rescans += result["walked"] is False
        assert_as_walked(result, workspace)
    assert rescans > 30


def _random_change(ws: Path, rng: random.Random) -> None:
    dirs = [p for p in ws.rglob("*") if p.is_dir() and not p.is_symlink()] + [ws]
    files = [p for p in ws.rglob("*") if p.is_file() and not p.is_symlink()]
    kind = rng.choice(["write", "new file", "new dir", "delete", "rmdir", "rename", "chmod", "symlink", "move dir",
                       "dir again", "hard link"])
    where = rng.choice(dirs)
    name = f"n{rng.randint(0, 10**6)} x"
    if kind == "write" and files:
        rng.choice(files).write_bytes(os.urandom(rng.randint(0, 3000)))
    elif kind == "new file":
        (where / name).write_text(name)
    elif kind == "new dir":
        (where / name / "sub").mkdir(parents=True)
        (where / name / "sub" / "f").write_text("f")
    elif kind == "delete" and files:
        rng.choice(files).unlink()
    elif kind == "rmdir" and len(dirs) > 1:
        shutil.rmtree(rng.choice(dirs[:-1]))
    elif kind == "rename" and files:
        source = rng.choice(files)
        source.rename(where / name)
    elif kind == "chmod" and files:
        os.chmod(rng.choice(files), rng.choice([0o600, 0o644, 0o755]))
    elif kind == "symlink":
        os.symlink(name, where / f"link {name}")
    elif kind == "dir again" and len(dirs) > 1:  # removed, then made again under the same name and filled
        again = rng.choice(dirs[:-1])
        shutil.rmtree(again)
        (again / "refilled").mkdir(parents=True)
        (again / "refilled" / name).write_text(name)
    elif kind == "hard link" and files and rng.random() < 0.3:  # rarer: every scan near a group walks
        os.link(rng.choice(files), where / name)
    elif kind == "move dir" and len(dirs) > 1:
        source = rng.choice(dirs[:-1])
        target = rng.choice(dirs)
        if not str(target).startswith(str(source)):
            source.rename(target / name)


@pytest.mark.parametrize("failing", ["rescan", "walk"])
def test_a_scan_that_fails_leaves_the_next_one_to_walk(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                       failing: str) -> None:
    """The changes a failed scan heard of went with it: the next scan, holding the same token, must not be told
    that nothing changed."""
    token = scan()["token"]
    (workspace / "model.pt").write_bytes(b"n" * 1000)
    if failing == "walk":
        token = scan(token, full_walk_seconds=0)["token"]
        (workspace / "model.pt").write_bytes(b"o" * 1000)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise common.Failure("UnreadablePath", "cannot list 'data': planted by the test")

    target = "dumont.agent.rescan.rescan" if failing == "rescan" else "dumont.agent.server.scan_tree"
    with monkeypatch.context() as patched:
        patched.setattr(target, broken)
        with pytest.raises(common.Failure):
            scan(token, full_walk_seconds=0 if failing == "walk" else 300)
    result = scan(token)
    assert "entries" in result and result["walked"] is True
    assert_as_walked(result, workspace)


def test_a_folder_holding_a_hard_link_removed_makes_the_scan_walk(workspace: Path) -> None:
    """Removing one name of a group changes the other's link count, an event no directory watch may see."""
    (workspace / "keep").mkdir()
    os.link(workspace / "model.pt", workspace / "keep" / "model.hard")
    token = scan()["token"]
    shutil.rmtree(workspace / "keep")
    result = scan(token)
    assert result["walked"] is True
    assert_as_walked(result, workspace)


def test_a_scan_answers_only_what_changed_against_the_scan_its_caller_holds(workspace: Path) -> None:
    """``delta``: the entries changed and the paths removed since the caller's scan, which merged into that scan's
    manifest give the one a full answer gives; a caller holding another scan gets every entry."""
    from dumont.replication.manifest import Entry, Manifest

    first = server.scan({"delta": True})
    assert "delta" not in first, "nothing held yet: a whole answer"
    held = Manifest.from_wire(first["entries"])
    (workspace / "data" / "a.txt").write_text("changed")
    (workspace / "new").mkdir()
    (workspace / "new" / "b").write_text("b")
    (workspace / "model.pt").unlink()
    second = server.scan({"since": first["token"], "delta": True})
    delta = second["delta"]
    assert delta["base"] == first["token"] and "entries" not in second
    assert sorted(delta["removed"]) == ["model.pt"]
    assert {e[0] for e in delta["changed"]} == {".", "data/a.txt", "new", "new/b"}
    merged = held.with_changes([Entry.from_wire(e) for e in delta["changed"]], delta["removed"])
    whole = server.scan({"since": None})
    assert merged == Manifest.from_wire(whole["entries"])
    assert "delta" not in server.scan({"since": "another-scan", "delta": True})
