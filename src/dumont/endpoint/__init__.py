"""The stable SSH endpoint: a relay that follows the primary, and the ssh_config a user reaches it with."""

from dumont.endpoint.relay import EndpointRelay, RelayStats, Switch
from dumont.endpoint.sshconfig import host_alias, known_hosts_line, render_ssh_config, write_ssh_config

__all__ = [
    "EndpointRelay",
    "RelayStats",
    "Switch",
    "host_alias",
    "known_hosts_line",
    "render_ssh_config",
    "write_ssh_config",
]
