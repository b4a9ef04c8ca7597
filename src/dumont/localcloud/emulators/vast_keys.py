"""The Vast emulator's account SSH keys: what ``vastai create/show/update/delete ssh-key`` manage.

Vast copies an account's keys into an instance only when the instance is *created*; a key added to the account
later does not reach instances that already exist (they need ``attach ssh``), and deleting or changing an
account key does not take it off them either (docs: guides/instances/connect/ssh, "Adding a key to your account
keys only applies to new instances"). The API reference's create page says the opposite ("added to all your
current instances automatically"); the emulator follows the guide, which is the stricter of the two.

Shapes, from the API reference (api-reference/accounts/*-ssh-key): ``POST /api/v0/ssh/`` answers
``{"success": true, "key": {id, user_id, public_key, created_at, deleted_at}}``; ``GET /api/v0/ssh/`` answers a
bare list of ``{id, user_id, key, created_at, deleted_at}`` (that page names the field ``key``, the create page
``public_key``: each answer uses its own page's word); ``PUT /api/v0/ssh/{id}/`` answers ``{"success": true,
"key": {...}}``; ``DELETE /api/v0/ssh/{id}/`` answers ``{"success": true}``, and a key that is not the
account's gets 400 ``no_ssh_key``. Adding a key the account already holds returns the existing record (Vast
does not document this case).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from dumont.localcloud.emulators.vast_http import Refused, text

USER_ID = 1  # the emulator's one account (GET /api/v0/users/current)


@dataclass
class AccountKey:
    """One public key of the account."""

    id: int
    public_key: str
    created_at: float

    def _common(self) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(self.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"id": self.id, "user_id": USER_ID, "created_at": stamp, "deleted_at": None}

    def as_listed(self) -> dict[str, Any]:
        """As ``show ssh-keys`` lists it."""
        return {**self._common(), "key": self.public_key}

    def as_created(self) -> dict[str, Any]:
        """As ``create ssh-key`` and ``update ssh-key`` return it."""
        return {**self._common(), "public_key": self.public_key}


def checked_public_key(value: object) -> str:
    """One OpenSSH public key line from a request body; 400 ``invalid_args`` otherwise."""
    key = text(value)
    if key is None or not key.startswith("ssh") or len(key.split()) < 2 or "\n" in key:
        raise Refused(400, "invalid_args", "ssh_key must be one OpenSSH public key line (ssh-ed25519 AAAA... comment),"
                                           f" not {str(value)[:60]!r}")
    return key


class AccountKeys:
    """The account's keys, in the order they were added; ids are never reused."""

    def __init__(self, keys: list[AccountKey] | None = None, next_id: int = 1) -> None:
        self._keys = {k.id: k for k in keys or []}
        self._next_id = max([next_id, *(k.id + 1 for k in self._keys.values())])

    @classmethod
    def seeded(cls, public_keys: list[str]) -> AccountKeys:
        """A new account holding ``public_keys`` (a person's account has their key)."""
        keys = cls()
        for key in public_keys:
            keys.add(key)
        return keys

    def public_keys(self) -> list[str]:
        """What a new instance is given."""
        return [k.public_key for k in self._keys.values()]

    def listed(self) -> list[dict[str, Any]]:
        """``GET /api/v0/ssh/``."""
        return [k.as_listed() for k in self._keys.values()]

    def add(self, public_key: str, now: float | None = None) -> AccountKey:
        """Add a key (an exact duplicate returns the key already there)."""
        found = next((k for k in self._keys.values() if k.public_key == public_key), None)
        if found is not None:
            return found
        key = AccountKey(self._next_id, public_key, time.time() if now is None else now)
        self._keys[key.id] = key
        self._next_id += 1
        return key

    def update(self, key_id: int, public_key: str) -> AccountKey:
        """Replace the key with id ``key_id``; 400 ``no_ssh_key`` when the account has none."""
        key = self._get(key_id)
        key.public_key = public_key
        return key

    def delete(self, key_id: int) -> AccountKey:
        """Remove the key with id ``key_id``; 400 ``no_ssh_key`` when the account has none."""
        return self._keys.pop(self._get(key_id).id)

    def _get(self, key_id: int) -> AccountKey:
        key = self._keys.get(key_id)
        if key is None:
            raise Refused(400, "no_ssh_key", f"No ssh key {key_id} on this account (see vastai show ssh-keys).")
        return key

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, for the emulator's records file."""
        return {"next_id": self._next_id, "keys": [asdict(k) for k in self._keys.values()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountKeys:
        """The keys :meth:`as_json` saved (KeyError/TypeError/ValueError on a damaged file)."""
        return cls([AccountKey(**k) for k in data["keys"]], int(data["next_id"]))
