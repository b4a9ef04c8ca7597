"""The scan's shortcut on a real directory: an unchanged tree is answered without a walk, and every kind of
change (a write, a new folder and a file inside it, a rename, a deletion, an attribute, the root made again)
makes the next scan walk and see it. The shortcut is never taken without inotify, for a caller holding another
scan, after a walk that met a changing file, or once the full-walk period has passed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dumont.agent import server, tracker


def scan(since: object = None, **args: object) -> dict[str, object]:
    return server.scan({"since": since, **args})


def paths(result: dict[str, object]) -> set[str]:
    return {e[0] for e in result["entries"]}  # type: ignore[attr-defined]


def test_an_unchanged_tree_is_answered_without_entries_and_with_the_same_token(workspace: Path) -> None:
    first = scan()
    assert "entries" in first and first["files"] == 2
    again = scan(first["token"])
    assert again["unchanged"] is True and again["token"] == first["token"]
    assert "entries" not in again and again["files"] == 2 and again["bytes"] == first["bytes"]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


CHANGES: dict[str, Callable[[Path], None]] = {
    "write": lambda ws: (ws / "model.pt").write_bytes(b"n" * 1000),
    "append": lambda ws: append(ws / "data" / "a.txt", b"more"),
    "new folder and file": lambda ws: ((ws / "new" / "deep").mkdir(parents=True),
                                       (ws / "new" / "deep" / "b.txt").write_text("b")),
    "rename": lambda ws: (ws / "data" / "a.txt").rename(ws / "data" / "renamed.txt"),
    "delete": lambda ws: (ws / "data" / "a.txt").unlink(),
    "mode": lambda ws: os.chmod(ws / "model.pt", 0o600),
    "symlink": lambda ws: os.symlink("model.pt", ws / "link"),
    "folder removed": lambda ws: shutil.rmtree(ws / "data"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_kind_of_change_makes_the_next_scan_walk_and_see_it(workspace: Path, change: str) -> None:
    first = scan()
    CHANGES[change](workspace)
    second = scan(first["token"])
    assert "entries" in second and second["token"] != first["token"]
    assert second["entries"] != first["entries"]
    assert scan(second["token"]).get("unchanged") is True  # and quiet again afterwards


def test_a_file_written_inside_a_folder_made_since_the_last_scan_is_seen(workspace: Path) -> None:
    token = scan()["token"]
    (workspace / "fresh").mkdir()
    token = scan(token)["token"]  # this scan sets the new folder's watch
    (workspace / "fresh" / "late.txt").write_text("late")
    result = scan(token)
    assert "fresh/late.txt" in paths(result)


def test_a_workspace_made_again_is_watched_again(workspace: Path) -> None:
    token = scan()["token"]
    shutil.rmtree(workspace)
    workspace.mkdir()
    (workspace / "only.txt").write_text("x")
    result = scan(token)
    assert paths(result) == {".", "only.txt"}
    (workspace / "second.txt").write_text("y")
    assert "second.txt" in paths(scan(result["token"]))


def test_no_shortcut_for_another_callers_token_or_after_the_full_walk_period(workspace: Path) -> None:
    token = scan()["token"]
    assert "entries" in scan("another controller's token")
    token = scan()["token"]
    assert "entries" in scan(token, full_walk_seconds=0)


def test_no_shortcut_after_a_walk_that_met_a_file_changing_while_read(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dumont.agent.scan.hash_file", lambda path, st: None)  # every file "changed while read"
    token = scan(use_cache=False)["token"]
    assert "entries" in scan(token, use_cache=False)


def test_no_shortcut_on_the_poll_fallback(workspace: Path) -> None:
    watched = tracker.tracker_for(str(workspace))
    token = scan()["token"]
    watched.watcher._fall_back("forced by the test")
    result = scan(token)
    assert "entries" in result and result["tracking"] == "poll"
