"""The stable SSH endpoint: a relay that follows the primary, the process that runs it apart from the controller,
the controller's client of that process, and the ssh_config a user reaches it with."""

from dumont.endpoint.client import EndpointClient
from dumont.endpoint.launch import ensure_endpoint_daemon, stop_endpoint_daemon
from dumont.endpoint.local import LocalEndpoint
from dumont.endpoint.ports import Endpoint
from dumont.endpoint.relay import EndpointRelay, RelayStats, Switch
from dumont.endpoint.sshconfig import host_alias, known_hosts_line, render_ssh_config, write_ssh_config

__all__ = [
    "Endpoint",
    "EndpointClient",
    "EndpointRelay",
    "LocalEndpoint",
    "RelayStats",
    "Switch",
    "ensure_endpoint_daemon",
    "host_alias",
    "known_hosts_line",
    "render_ssh_config",
    "stop_endpoint_daemon",
    "write_ssh_config",
]
