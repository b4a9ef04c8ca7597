"""The Vast emulator's account keys: ids, duplicates, refusals, the documented shapes, and persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from dumont.errors import LocalCloudError
from dumont.localcloud.emulators import vast_instances as records
from dumont.localcloud.emulators.vast_http import Refused
from dumont.localcloud.emulators.vast_keys import AccountKeys, checked_public_key

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA a@host"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB b@host"


def test_ids_grow_are_never_reused_and_a_duplicate_is_the_same_key() -> None:
    """Deleting the newest key does not hand its id to the next one; adding a held key changes nothing."""
    keys = AccountKeys.seeded([KEY_A])
    assert keys.add(KEY_A).id == 1
    second = keys.add(KEY_B)
    assert second.id == 2
    keys.delete(2)
    assert keys.add(KEY_B).id == 3
    assert keys.public_keys() == [KEY_A, KEY_B]


def test_answers_have_the_shapes_of_the_api_reference() -> None:
    """show ssh-keys names the key ``key``; create and update name it ``public_key``; times are ISO UTC."""
    key = AccountKeys().add(KEY_A, now=0.0)
    assert key.as_listed() == {"id": 1, "user_id": 1, "key": KEY_A, "created_at": "1970-01-01T00:00:00Z",
                               "deleted_at": None}
    assert key.as_created() == {"id": 1, "user_id": 1, "public_key": KEY_A, "created_at": "1970-01-01T00:00:00Z",
                                "deleted_at": None}


def test_a_missing_key_id_and_a_non_key_are_refused_with_400() -> None:
    """Updating or deleting a key the account lacks is no_ssh_key; a body without a public key is invalid_args."""
    keys = AccountKeys()
    for action in (lambda: keys.delete(9), lambda: keys.update(9, KEY_A)):
        with pytest.raises(Refused) as refused:
            action()
        assert (refused.value.status, refused.value.code) == (400, "no_ssh_key")
    for bad in (None, "", "/home/me/.ssh/id_ed25519.pub", "ssh-ed25519", f"{KEY_A}\n{KEY_B}", 7):
        with pytest.raises(Refused) as refused:
            checked_public_key(bad)
        assert refused.value.code == "invalid_args"
    assert checked_public_key(f"  {KEY_A}\n") == KEY_A


def test_keys_persist_with_the_instance_records(tmp_path: Path) -> None:
    """The records file keeps the account's keys and their next id; an old file without them has none saved."""
    path = tmp_path / "instances.json"
    keys = AccountKeys.seeded([KEY_A, KEY_B])
    keys.delete(2)
    records.save(path, records.Saved({}, 30_000_005, keys))
    saved = records.load(path, 30_000_001)
    assert saved.next_id == 30_000_005 and saved.account_keys is not None
    assert saved.account_keys.listed() == keys.listed()
    assert saved.account_keys.add(KEY_B).id == 3

    path.write_text('{"next_id": 7, "instances": []}')
    assert records.load(path, 1).account_keys is None
    path.write_text('{"next_id": 7, "instances": [], "account_keys": {"keys": [{"id": "x"}]}}')
    with pytest.raises(LocalCloudError, match="cannot be read"):
        records.load(path, 1)
