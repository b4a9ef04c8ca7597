"""VM metadata as Google's guest agent applies it on a debian-12 VM: login users, OS Login, the startup script.

* ``ssh-keys`` (instance metadata, plus the project's unless the instance sets ``block-project-ssh-keys=TRUE``):
  each ``user:key`` line makes ``user`` a login with that key and passwordless sudo. A ``root`` line is skipped:
  Google's images refuse root over SSH (``PermitRootLogin`` is ``no`` or ``prohibit-password``,
  https://cloud.google.com/compute/docs/connect/root-ssh), so the key would let nobody in. Lines that are not
  ``user:public-key`` are skipped, as the agent skips them.
* ``enable-oslogin=TRUE`` (any case; the instance's value wins over the project's) switches metadata keys off:
  the agent removes the accounts it made from them (guest-agent ``non_windows_accounts.go``), so no key logs in.
* ``startup-script`` (the instance's, else the project's) runs as root at every boot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

ROOT = "root"
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")  # what the agent accepts as a Linux user name
_PUBLIC_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+")


def as_dict(items: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Metadata items as a dict (later items win, like the server keeps one value per key)."""
    return {str(i["key"]): str(i.get("value", "")) for i in items if isinstance(i, Mapping) and i.get("key")}


def is_true(value: str | None) -> bool:
    """A metadata boolean as the agent reads it."""
    return (value or "").strip().lower() in ("true", "1", "yes", "y")


def key_lines(value: str) -> dict[str, list[str]]:
    """The ``user:key`` lines of an ``ssh-keys`` value, by user (root included), keys in order."""
    users: dict[str, list[str]] = {}
    for line in value.splitlines():
        user, sep, key = line.strip().partition(":")
        key = key.strip()
        if sep and _USER.fullmatch(user) and _PUBLIC_KEY.match(key):
            keys = users.setdefault(user, [])
            if key not in keys:
                keys.append(key)
    return users


def oslogin_enabled(instance: Mapping[str, str], project: Mapping[str, str]) -> bool:
    """Whether OS Login is on for the VM (its own ``enable-oslogin`` wins over the project's)."""
    value = instance.get("enable-oslogin", project.get("enable-oslogin"))
    return is_true(value)


def login_users(instance: Mapping[str, str], project: Mapping[str, str]) -> dict[str, list[str]]:
    """Who may log in to the VM with which public keys, as the guest agent sets it up (root never)."""
    if oslogin_enabled(instance, project):
        return {}
    users: dict[str, list[str]] = {}
    sources = [instance.get("ssh-keys", "")]
    if not is_true(instance.get("block-project-ssh-keys")):
        sources.append(project.get("ssh-keys", ""))
    for source in sources:
        for user, keys in key_lines(source).items():
            if user != ROOT:
                users.setdefault(user, []).extend(k for k in keys if k not in users.get(user, []))
    return users


def startup_script(instance: Mapping[str, str], project: Mapping[str, str]) -> str | None:
    """The script the VM runs as root at each boot, or None."""
    script = instance.get("startup-script", project.get("startup-script"))
    return script if script and script.strip() else None
