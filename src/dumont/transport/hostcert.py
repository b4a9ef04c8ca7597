"""Host certificates: how every host of a pair proves it may serve the pair's endpoint without sharing a secret.

The controller keeps a host CA per pair (an ed25519 key that never leaves it) and signs each host's *own* host key
into a short-lived certificate for the principal ``dumont-<pair>``. The user's known_hosts trusts the CA for that
alias (``@cert-authority``), so a failover changes which machine answers, never what the client trusts, and no
private key is ever copied to a rented machine (hostile-review.md #11). A former primary's key is listed as
``@revoked``, so the certificate it still holds is worth nothing. OpenSSH does the cryptography (``ssh-keygen
-s``); this module only runs it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Final

from dumont.errors import DumontError
from dumont.transport.keys import public_key_body
from dumont.transport.ssh import run_local

VALID_SECONDS: Final = 7 * 24 * 3600  # renewed at half-life by the controller; a stolen one soon expires
CLOCK_SKEW_SECONDS: Final = 300  # valid from a little before now: a host's clock may be behind ours
CERT_SUFFIX: Final = "-cert.pub"


async def sign_host_key(ca: Path, host_public_key: str, *, identity: str, principal: str,
                        valid_seconds: int = VALID_SECONDS) -> str:
    """A host certificate (one ``ssh-ed25519-cert-v01@openssh.com`` line) for ``host_public_key``."""
    with tempfile.TemporaryDirectory(prefix="dumont-cert-") as folder:
        public = Path(folder) / "host.pub"
        public.write_text(public_key_body(host_public_key) + "\n")
        argv = ["ssh-keygen", "-q", "-s", str(ca), "-h", "-I", identity, "-n", principal,
                "-V", f"-{CLOCK_SKEW_SECONDS}s:+{valid_seconds}s", str(public)]
        result = await run_local(argv, timeout=30, what="signing a host certificate")
        cert = Path(folder) / ("host" + CERT_SUFFIX)
        if result.returncode != 0 or not cert.exists():
            raise DumontError(f"ssh-keygen could not sign the host key for {identity}: "
                              f"{result.stderr.decode(errors='replace').strip()}",
                              hint="check that ssh-keygen (OpenSSH) is installed and the CA key is readable")
        return cert.read_text().strip()


def authority_line(alias: str, ca_public_key: str) -> str:
    """The known_hosts line that trusts certificates from the CA for ``alias`` (no newline)."""
    return f"@cert-authority {alias} {public_key_body(ca_public_key)}"


def revoked_line(host_public_key: str) -> str:
    """The known_hosts line that refuses ``host_public_key`` (and any certificate of it) everywhere."""
    return f"@revoked * {public_key_body(host_public_key)}"


def certificate_body(line: str) -> str:
    """``"<cert type> <base64>"`` of a certificate line."""
    parts = line.split()
    return " ".join(parts[:2]) if len(parts) >= 2 else ""
