"""Where the local cloud keeps its files inside its state directory."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """``$DUMONT_LOCAL_STATE``, else ``$XDG_STATE_HOME/dumont/local`` (``~/.local/state/dumont/local``)."""
    explicit = os.environ.get("DUMONT_LOCAL_STATE")
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return (Path(base) / "dumont" / "local").resolve()


def ready_file(state_dir: Path) -> Path:
    """Written by the daemon once it serves; holds its pid and control URL."""
    return state_dir / "localcloud.json"


def control_token(state_dir: Path) -> Path:
    """The control API's bearer token (0600)."""
    return state_dir / "control_token"


def user_key(state_dir: Path) -> Path:
    """The key a person logs in to every local host with."""
    return state_dir / "user_key"


def known_hosts(state_dir: Path) -> Path:
    """Host keys of the local hosts, pinned by name."""
    return state_dir / "known_hosts"


def daemon_log(state_dir: Path) -> Path:
    """The daemon's log."""
    return state_dir / "daemon.log"
