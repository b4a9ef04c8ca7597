"""Readying a fresh host before first use: the tools Dumont needs, found or installed, whatever the image.

Real images are bare (``research/real-instances.md``): Vast's pytorch images have no rsync and keep python3 under
``/opt/conda/bin``, off a non-interactive SSH session's PATH; they wrap interactive logins in tmux unless
``~/.no_auto_tmux`` exists; Google's debian-12 has python3 but no rsync and refuses root, so the controller logs
in as a user with sudo. Three layers ready a host, each idempotent:

* at creation, through the provider: a Vast ``onstart`` and a GCP ``startup-script`` (:func:`boot_script`) that
  turn the automatic tmux off and install rsync as root while the machine boots;
* over SSH, on every host the controller adopts, rents or creates (:func:`ready_host`): one POSIX shell script
  that finds a Python >= 3.8 (the PATH, conda prefixes, /usr/bin), installs rsync with the host's package manager
  when it is still missing (with ``sudo -n`` when the login is not root), and makes sure the workspace and the
  agent's data directory exist and belong to the login user. Each step has a deadline; what it found comes back as
  framed lines (``DUMONT-READY key=value``), so a login banner or ``.bashrc`` chatter cannot be mistaken for it;
* the provider's own key attachment (adoption), which lives in the providers.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from dumont.errors import DumontError, HostNotReady
from dumont.transport.ssh import SshTarget, SshTransport

MARK = "DUMONT-READY"
STEP_TIMEOUT = 300  # seconds one package-manager step may take (apt-get update on a slow mirror)
MIN_PYTHON = (3, 8)  # what the host agent needs (vermin checks it)
PYTHON_CANDIDATES = (
    "python3", "/opt/conda/bin/python3", "/opt/conda/bin/python", "/usr/local/bin/python3", "/usr/bin/python3",
    "$HOME/miniconda3/bin/python3", "$HOME/anaconda3/bin/python3", "/opt/miniconda3/bin/python3",
    "/usr/bin/python3.12", "/usr/bin/python3.11", "/usr/bin/python3.10", "/usr/bin/python3.9", "/usr/bin/python3.8",
)


@dataclass(frozen=True)
class HostReadiness:
    """What a host offers the agent once readied."""

    python: str  # absolute path of a Python >= 3.8
    python_version: str
    rsync: str  # absolute path of rsync
    installed: tuple[str, ...]  # packages this bootstrap installed
    user: str  # who the controller logs in as
    fresh: bool = True  # readied by this call (False: answered from memory)


def boot_script() -> str:
    """What a new instance runs as root while it boots (Vast onstart, GCP startup-script); never fails the boot."""
    return "\n".join([
        "#!/bin/sh",
        "# Dumont: no automatic tmux for SSH logins (Vast), and rsync for replication.",
        'touch "${HOME:-/root}/.no_auto_tmux" 2>/dev/null || true',
        "if ! command -v rsync >/dev/null 2>&1; then",
        "  if command -v apt-get >/dev/null 2>&1; then",
        f"    export DEBIAN_FRONTEND=noninteractive; timeout {STEP_TIMEOUT} apt-get update -qq || true",
        f"    timeout {STEP_TIMEOUT} apt-get install -y -qq rsync || true",
        f"  elif command -v dnf >/dev/null 2>&1; then timeout {STEP_TIMEOUT} dnf install -y rsync || true",
        f"  elif command -v apk >/dev/null 2>&1; then timeout {STEP_TIMEOUT} apk add rsync || true",
        "  fi",
        "fi",
        "",
    ])


def readiness_script(*, as_root: bool) -> str:
    """The shell script :func:`ready_host` runs on the host (POSIX sh; prints framed ``key=value`` lines)."""
    sudo = "" if as_root else "sudo -n "
    candidates = " ".join(f'"{c}"' if c.startswith("$") else shlex.quote(c) for c in PYTHON_CANDIDATES)
    minimum = f"({MIN_PYTHON[0]}, {MIN_PYTHON[1]})"
    return f"""
say() {{ printf '{MARK} %s=%s\\n' "$1" "$(printf '%s' "$2" | tr '\\n' ' ' | cut -c1-400)"; }}
fail() {{ say error "$1"; say detail "$2"; exit 1; }}
touch "$HOME/.no_auto_tmux" 2>/dev/null || true
say user "${{USER:-$(id -un 2>/dev/null || echo unknown)}}"
install() {{
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    timeout {STEP_TIMEOUT} {sudo}apt-get update -qq >/dev/null 2>&1
    out=$(timeout {STEP_TIMEOUT} {sudo}apt-get install -y -qq "$1" 2>&1) ||
      {{ reason="{sudo}apt-get: $out"; return 1; }}
  elif command -v dnf >/dev/null 2>&1; then
    out=$(timeout {STEP_TIMEOUT} {sudo}dnf install -y "$1" 2>&1) || {{ reason="{sudo}dnf: $out"; return 1; }}
  elif command -v apk >/dev/null 2>&1; then
    out=$(timeout {STEP_TIMEOUT} {sudo}apk add "$1" 2>&1) || {{ reason="{sudo}apk: $out"; return 1; }}
  else
    reason="no package manager (apt-get, dnf or apk) was found"; return 1
  fi
  say installed "$1"
}}
check='import sys; print("%d.%d.%d" % sys.version_info[:3]); sys.exit(sys.version_info < {minimum})'
find_python() {{
  for candidate in {candidates}; do
    found=$(command -v "$candidate" 2>/dev/null) || continue
    version=$("$found" -c "$check" 2>/dev/null) || continue
    say python "$found"; say python_version "$version"; return 0
  done
  return 1
}}
if ! find_python; then
  install python3 || fail python3 "$reason"
  find_python || fail python3 "python3 was installed but no Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} answers"
fi
if ! command -v rsync >/dev/null 2>&1; then
  install rsync || fail rsync "$reason"
  command -v rsync >/dev/null 2>&1 || fail rsync "rsync was installed but is not on the PATH"
fi
say rsync "$(command -v rsync)"
for dir in "${{DUMONT_WORKSPACE:-/workspace}}" "${{DUMONT_DATA_DIR:-/var/lib/dumont}}"; do
  if [ ! -d "$dir" ]; then {sudo}mkdir -p "$dir" 2>/dev/null || fail directory "cannot create $dir"; fi
  if [ ! -w "$dir" ]; then
    {sudo}chown "$(id -u):$(id -g)" "$dir" 2>/dev/null || fail directory "$dir is not writable by $(id -un)"
  fi
done
say done yes
"""


def parse_readiness(alias: str, text: str) -> dict[str, list[str]]:
    """The framed ``key=value`` lines of a readiness run (everything else the host printed is ignored)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith(MARK + " "):
            continue
        key, sep, value = line[len(MARK) + 1:].partition("=")
        if sep and key.isidentifier():
            found.setdefault(key, []).append(value.strip())
    return found


async def ready_host(transport: SshTransport, target: SshTarget, *, timeout: float) -> HostReadiness:
    """Find Python, install rsync when missing, prepare the workspace; raise HostNotReady naming what is missing."""
    as_root = target.user == "root"
    try:
        result = await transport.run(target, ["sh", "-c", readiness_script(as_root=as_root)], timeout=timeout,
                                     check=False)
    except DumontError as exc:
        raise HostNotReady(f"{target.alias}: could not be readied for Dumont: {exc.message}",
                           hint=exc.hint or "check that the host answers SSH") from exc
    found = parse_readiness(target.alias, result.text)
    if "error" in found or "done" not in found:
        raise _not_ready(target, found, result.returncode, result.text)
    return HostReadiness(python=found["python"][-1], python_version=found["python_version"][-1],
                         rsync=found["rsync"][-1], installed=tuple(found.get("installed", ())),
                         user=(found.get("user") or [target.user])[-1])


def _not_ready(target: SshTarget, found: dict[str, list[str]], returncode: int, text: str) -> HostNotReady:
    missing = (found.get("error") or ["?"])[-1]
    detail = (found.get("detail") or [""])[-1]
    how = "as root" if target.user == "root" else "with sudo -n"
    fixes = {
        "rsync": f"install rsync in the image (apt-get install -y rsync), or let {target.user} run the package "
                 f"manager {how}",
        "python3": "use an image with Python 3.8 or newer (or install python3 there)",
        "directory": f"create the workspace and /var/lib/dumont for {target.user}, or give it passwordless sudo",
    }
    if missing == "?":
        tail = " | ".join(text.strip().splitlines()[-3:]) or "nothing"
        return HostNotReady(f"{target.alias}: the readiness check stopped (exit {returncode}) and printed: {tail}",
                            hint="a login shell that prints or exits early breaks it; run the check by hand")
    return HostNotReady(f"{target.alias}: {missing} is missing and could not be set up ({detail or 'no detail'})",
                        hint=fixes.get(missing, "see the detail"))
