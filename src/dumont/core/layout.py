"""Where the controller keeps its files inside its ``state_dir``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dumont.config import Config


class ControllerLayout:
    """Paths of the controller's state (keys are 0600, the directory 0700). What the controllers of a fleet share
    (keys, pinned host keys, the users' snippets, the endpoint directory) lives in ``shared_dir`` when one is
    named; the rest (its database by default, its API token, its name) is this controller's own."""

    def __init__(self, state_dir: Path, shared_dir: Path | None = None) -> None:
        self.root = state_dir
        self.shared = shared_dir or state_dir

    @classmethod
    def of(cls, config: Config) -> ControllerLayout:
        """The layout ``config`` names."""
        return cls(config.state_dir, config.controller.shared_dir)

    @property
    def database(self) -> Path:
        """The SQLite state."""
        return self.root / "dumont.db"

    @property
    def controller_key(self) -> Path:
        """The key the controller logs in to every host with."""
        return self.shared / "keys" / "controller"

    def pair_key(self, pair: str) -> Path:
        """The key a primary pushes to its standby with (direct mode)."""
        return self.shared / "keys" / f"pair-{pair}"

    def pair_host_ca(self, pair: str) -> Path:
        """The CA that certifies each host of the pair for its endpoint (never leaves the controller)."""
        return self.shared / "keys" / f"pair-{pair}-host-ca"

    def revoked_host_keys(self, pair: str) -> Path:
        """Host keys of former primaries, refused for the pair's endpoint whatever certificate they hold."""
        return self.shared / "keys" / f"pair-{pair}-revoked"

    @property
    def known_hosts(self) -> Path:
        """Host keys pinned per host alias."""
        return self.shared / "known_hosts"

    @property
    def api_token(self) -> Path:
        """The API's bearer token (when the config names no token file)."""
        return self.root / "api_token"

    @property
    def controller_id(self) -> Path:
        """This controller's name in a fleet, made once (its leases and events carry it)."""
        return self.root / "controller_id"

    @property
    def ready(self) -> Path:
        """Written while the controller runs: its pid and API URL."""
        return self.root / "controller.json"

    def ssh_dir(self, pair: str) -> Path:
        """The user's ssh_config snippet and known_hosts for the pair's endpoint."""
        return self.shared / "ssh" / pair

    @property
    def endpoint_dir(self) -> Path:
        """The endpoint process's directory (socket, routes, log) when the config names none."""
        return self.shared / "endpoint"

    @property
    def own_endpoint_dir(self) -> Path:
        """This controller's own endpoint process's directory (a fleet's controllers each run one)."""
        return self.root / "endpoint"

    def relay_dir(self, pair: str) -> Path:
        """The relay mode's copy of the workspace."""
        return self.root / "relay" / pair
