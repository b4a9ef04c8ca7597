"""SSH key pairs and pinned host keys.

Keys are generated with the system's ``ssh-keygen`` (ed25519, no passphrase, private part 0600). Host keys are
pinned per host *alias* in a known_hosts file of our own, so a port that is reused by another machine can never
inherit the trust given to the previous one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from dumont.errors import DumontError, UsageError

_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) [A-Za-z0-9+/=]+"
)


def check_alias(alias: str) -> str:
    """Return ``alias`` if it can name a host in an ssh_config and a known_hosts file, else raise."""
    if not _ALIAS.match(alias):
        raise UsageError(
            f"host name {alias!r} is not usable as an SSH alias",
            hint="use letters, digits, '.', '_' or '-', starting with a letter or digit, at most 63 characters",
        )
    return alias


def public_key_body(line: str) -> str:
    """Return ``"<type> <base64>"`` from a public key line, dropping any comment."""
    match = _PUBLIC_KEY.match(line.strip())
    if not match:
        raise DumontError(f"not an OpenSSH public key: {line[:40]!r}...", hint="expected 'ssh-ed25519 AAAA...'")
    return match.group(0)


def generate_keypair(path: Path, comment: str) -> str:
    """Create an ed25519 key pair at ``path`` (0600) and ``path.pub``; return the public key line.

    Refuses to overwrite an existing key: losing a pair key would lock the controller out of its hosts.
    """
    if path.exists() or path.with_suffix(path.suffix + ".pub").exists():
        raise DumontError(f"key {path} already exists", hint="remove it yourself if you really mean to replace it")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except FileNotFoundError as exc:
        raise DumontError("ssh-keygen is not installed", hint="install openssh-client") from exc
    except subprocess.CalledProcessError as exc:
        raise DumontError(f"ssh-keygen failed for {path}: {exc.stderr.decode(errors='replace').strip()}") from exc
    os.chmod(path, 0o600)
    return read_public_key(path)


def ensure_keypair(path: Path, comment: str) -> str:
    """Return the public key at ``path``, generating the pair first if it does not exist."""
    if path.exists():
        return read_public_key(path)
    return generate_keypair(path, comment)


def read_public_key(private_key: Path) -> str:
    """Return the public key line that belongs to ``private_key``."""
    pub = private_key.with_suffix(private_key.suffix + ".pub")
    return pub.read_text().strip()


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` (the file never exists with looser permissions)."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class KnownHosts:
    """A known_hosts file of our own in which every host key is pinned under the host's alias."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def pin(self, alias: str, public_key: str, *, keep_existing: bool = False) -> None:
        """Trust ``public_key`` for ``alias``; with ``keep_existing`` the old key stays trusted too."""
        check_alias(alias)
        body = public_key_body(public_key)
        with self._changing():
            entries = self._read()
            kept = entries if keep_existing else [(a, k) for a, k in entries if a != alias]
            if (alias, body) not in kept:
                kept.append((alias, body))
            self._write(kept)

    def unpin(self, alias: str, public_key: str | None = None) -> None:
        """Stop trusting ``public_key`` (or every key) for ``alias``."""
        body = public_key_body(public_key) if public_key else None
        with self._changing():
            entries = [(a, k) for a, k in self._read() if not (a == alias and (body is None or k == body))]
            self._write(entries)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Read, change and write the file as one step, also against other processes (a fleet's controllers
        share it: a pin written by one must not be lost to another's)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def keys_for(self, alias: str) -> list[str]:
        """Return the keys pinned for ``alias``."""
        with self._lock:
            return [k for a, k in self._read() if a == alias]

    def _read(self) -> list[tuple[str, str]]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            parts = line.split(" ", 1)
            if len(parts) == 2 and not line.startswith("#"):
                entries.append((parts[0], parts[1]))
        return entries

    def _write(self, entries: list[tuple[str, str]]) -> None:
        write_private(self.path, "".join(f"{a} {k}\n" for a, k in entries), mode=0o644)
