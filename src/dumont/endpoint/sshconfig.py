"""The ``Host dumont-<pair>`` ssh_config block and known_hosts line a user reaches a pair's endpoint with.

Every host of a pair presents a certificate of its own host key from the pair's host CA, so the CA is trusted
once under the alias ``dumont-<pair>`` (``HostKeyAlias``) rather than under an address: a failover changes where
the relay forwards, never what the client must trust. ``StrictHostKeyChecking`` is always ``yes``.

A fleet serves each pair from every controller's endpoint: the block then connects through ``fallthrough.py``
(a ``ProxyCommand`` beside the snippet), which tries the endpoints in order and takes the first that serves.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from dumont.errors import UsageError
from dumont.transport.keys import check_alias, public_key_body, write_private

_HOSTNAME = re.compile(r"^[A-Za-z0-9._:-]+$")  # names, IPv4 and IPv6 literals; no ssh_config tokens (%h)
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$")
# ssh_config reads a backslash as an escape and a double quote as the end of the value, and would end the
# line at a line break; a path holding one cannot be written safely.
_UNSAFE_IN_PATH = ('"', "\\", "\n", "\r", "\0", "${")


def host_alias(pair: str) -> str:
    """The SSH alias a pair is reached by: ``dumont-<pair>``."""
    return check_alias(f"dumont-{pair}")


def render_ssh_config(  # noqa: PLR0917 - the signature the controller was promised; all six are required
    pair: str, host: str, port: int, user: str, identity_file: Path | None, known_hosts: Path, *,
    fall_through: Sequence[tuple[str, int]] = (), proxy: Path | None = None,
) -> str:
    """Return the ``Host dumont-<pair>`` block that reaches the pair's endpoint at ``host:port``; with two or more
    ``fall_through`` endpoints, through the ``proxy`` script that tries them in order."""
    alias = host_alias(pair)
    for checked_host, checked_port in [(host, port), *fall_through]:
        _check_endpoint(checked_host, checked_port)
    if not _USER.match(user):
        raise UsageError(f"SSH user {user!r} cannot be written into an ssh_config", hint="use a plain login name")
    lines = [
        "# Written by Dumont Standby; it is rewritten whole, so local edits are lost.",
        f"Host {alias}",
        f"  HostName {host}",
        f"  Port {port}",
        f"  User {user}",
    ]
    if len(fall_through) > 1:
        if proxy is None:
            raise UsageError(f"the ssh_config of {pair} names {len(fall_through)} endpoints but no fall-through "
                             "script", hint="write fallthrough.py beside the snippet and pass its path")
        _quote_path(proxy)  # the same characters are refused as in the other paths
        endpoints = " ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in fall_through)
        # ssh expands %-tokens, then has sh exec it: "%" is doubled, the path quoted for sh.
        command = f"python3 {shlex.quote(str(proxy))} {endpoints}".replace("%", "%%")
        lines.append(f"  ProxyCommand {command}")
    if identity_file is not None:
        lines += [f"  IdentityFile {_quote_path(identity_file)}", "  IdentitiesOnly yes"]
    lines += [
        f"  HostKeyAlias {alias}",
        f"  UserKnownHostsFile {_quote_path(known_hosts)}",
        "  StrictHostKeyChecking yes",
        # Only the pair's CA is trusted; learning one machine's own keys would tie the alias to it.
        "  UpdateHostKeys no",
    ]
    return "\n".join(lines) + "\n"


def _check_endpoint(host: str, port: int) -> None:
    if not _HOSTNAME.match(host):
        raise UsageError(
            f"endpoint host {host!r} cannot be written into an ssh_config", hint="use a host name or an IP address"
        )
    if not 0 < port < 65536:
        raise UsageError(f"endpoint port {port} is out of range", hint="use the port the relay is bound to (1-65535)")


def write_ssh_config(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (0644): a reader sees the old file or the new, never half."""
    write_private(path, text, mode=0o644)


def known_hosts_line(pair: str, host_public_key: str) -> str:
    """The known_hosts line (no newline) that trusts ``host_public_key`` for ``dumont-<pair>``; comments dropped."""
    return f"{host_alias(pair)} {public_key_body(host_public_key)}"


def _quote_path(path: Path) -> str:
    text = str(path)
    if not path.is_absolute():
        raise UsageError(
            f"path {text!r} in an ssh_config must be absolute",
            hint="ssh would resolve it against the user's working directory",
        )
    if any(bad in text for bad in _UNSAFE_IN_PATH):
        raise UsageError(
            f"path {text!r} cannot be written into an ssh_config",
            hint='move it to a path without quotes, backslashes, line breaks or "${"',
        )
    # '%' starts a token (%d, %h) in IdentityFile and UserKnownHostsFile; '%%' is a literal one.
    return '"' + text.replace("%", "%%") + '"'
