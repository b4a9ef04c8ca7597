"""Where the endpoint process keeps its control socket, routes, lock and log inside its directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dumont.errors import UsageError

# sun_path holds 108 bytes including the terminating NUL (unix(7)).
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class EndpointLayout:
    """The files of one endpoint directory (``--dir``); one endpoint process serves it at a time."""

    root: Path

    @property
    def control_socket(self) -> Path:
        """The Unix socket the controller and the CLI talk JSON lines on (0600)."""
        return self.root / "control.sock"

    @property
    def routes(self) -> Path:
        """Every pair's last published route, rewritten atomically on each change."""
        return self.root / "routes.json"

    @property
    def lock(self) -> Path:
        """Held with flock by the running process, and holding its pid."""
        return self.root / "endpoint.lock"

    @property
    def log(self) -> Path:
        """Where a process started by ``ensure_endpoint_daemon`` writes its log."""
        return self.root / "endpoint.log"

    def create(self) -> None:
        """Create the directory (0700) or tighten an existing one to 0700; check the socket path fits."""
        self.check_socket_path()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def check_socket_path(self) -> None:
        """Raise UsageError when the control socket's path is too long for a Unix socket."""
        length = len(os.fsencode(self.control_socket))
        if length > _MAX_SOCKET_PATH:
            raise UsageError(
                f"the endpoint directory {str(self.root)!r} is too deep: its control socket path has {length} bytes "
                f"and a Unix socket allows {_MAX_SOCKET_PATH}",
                hint="pass a shorter --dir, such as /var/lib/dumont/endpoint",
            )
