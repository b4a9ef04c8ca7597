"""Fixtures the agent's in-process tests share: a fake host, and a workspace under the scan's watcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dumont.agent import tracker


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake host: its workspace and data dir, found by the agent through its environment."""
    (tmp_path / "workspace").mkdir()
    monkeypatch.setenv("DUMONT_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("DUMONT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DUMONT_AUTHORIZED_KEYS", str(tmp_path / "authorized_keys"))
    return tmp_path


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A small workspace (``data/a.txt``, ``model.pt``) whose scans are tracked by inotify, which Linux always has
    (the agent's hosts and this suite's machines): a tracker that fell back to a poll fails the test."""
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "a.txt").write_text("a")
    (ws / "model.pt").write_bytes(b"m" * 1000)
    monkeypatch.setenv("DUMONT_WORKSPACE", str(ws))
    monkeypatch.setenv("DUMONT_DATA_DIR", str(tmp_path / "data"))
    watcher = tracker.tracker_for(str(ws)).watcher
    assert watcher.mode == "inotify", f"the scan's watcher fell back to a poll: {watcher.reason}"
    yield ws
    tracker.forget(str(ws))
