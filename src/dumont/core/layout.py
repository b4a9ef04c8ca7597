"""Where the controller keeps its files inside its ``state_dir``."""

from __future__ import annotations

from pathlib import Path


class ControllerLayout:
    """Paths of the controller's state (keys are 0600, the directory 0700)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir

    @property
    def database(self) -> Path:
        """The SQLite state."""
        return self.root / "dumont.db"

    @property
    def controller_key(self) -> Path:
        """The key the controller logs in to every host with."""
        return self.root / "keys" / "controller"

    def pair_key(self, pair: str) -> Path:
        """The key a primary pushes to its standby with (direct mode)."""
        return self.root / "keys" / f"pair-{pair}"

    def pair_host_ca(self, pair: str) -> Path:
        """The CA that certifies each host of the pair for its endpoint (never leaves the controller)."""
        return self.root / "keys" / f"pair-{pair}-host-ca"

    def revoked_host_keys(self, pair: str) -> Path:
        """Host keys of former primaries, refused for the pair's endpoint whatever certificate they hold."""
        return self.root / "keys" / f"pair-{pair}-revoked"

    @property
    def known_hosts(self) -> Path:
        """Host keys pinned per host alias."""
        return self.root / "known_hosts"

    @property
    def api_token(self) -> Path:
        """The API's bearer token (when the config names no token file)."""
        return self.root / "api_token"

    @property
    def ready(self) -> Path:
        """Written while the controller runs: its pid and API URL."""
        return self.root / "controller.json"

    def ssh_dir(self, pair: str) -> Path:
        """The user's ssh_config snippet and known_hosts for the pair's endpoint."""
        return self.root / "ssh" / pair

    @property
    def endpoint_dir(self) -> Path:
        """The endpoint process's directory (socket, routes, log) when the config names none."""
        return self.root / "endpoint"

    def relay_dir(self, pair: str) -> Path:
        """The relay mode's copy of the workspace."""
        return self.root / "relay" / pair
