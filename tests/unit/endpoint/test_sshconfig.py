"""The ssh_config block and known_hosts line a user reaches a pair's endpoint with."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dumont.endpoint import host_alias, known_hosts_line, render_ssh_config, write_ssh_config
from dumont.errors import DumontError, UsageError
from dumont.transport.keys import generate_keypair


def options(text: str) -> dict[str, str]:
    """The block's options as ``{keyword: value}`` (comments and the Host line left out)."""
    pairs = (line.strip().split(" ", 1) for line in text.splitlines() if line.startswith("  "))
    return {key: value for key, value in pairs}


def test_the_block_pins_the_pair_key_under_the_alias_and_never_trusts_blindly() -> None:
    text = render_ssh_config("train", "127.0.0.1", 2222, "root", Path("/keys/id"), Path("/state/known_hosts"))
    assert "\nHost dumont-train\n" in text
    assert options(text) == {
        "HostName": "127.0.0.1",
        "Port": "2222",
        "User": "root",
        "IdentityFile": '"/keys/id"',
        "IdentitiesOnly": "yes",
        "HostKeyAlias": "dumont-train",
        "UserKnownHostsFile": '"/state/known_hosts"',
        "StrictHostKeyChecking": "yes",
        "UpdateHostKeys": "no",
    }


def test_without_an_identity_file_the_user_s_own_keys_are_used() -> None:
    text = render_ssh_config("train", "::1", 22, "ubuntu", None, Path("/k"))
    assert "IdentityFile" not in text and "IdentitiesOnly" not in text
    assert options(text)["HostName"] == "::1"


def test_paths_with_spaces_are_quoted_and_percent_signs_kept_literal() -> None:
    text = render_ssh_config("p", "127.0.0.1", 2222, "root", Path("/my keys/id 1"), Path("/state dir/100%/kh"))
    assert options(text)["IdentityFile"] == '"/my keys/id 1"'
    assert options(text)["UserKnownHostsFile"] == '"/state dir/100%%/kh"'


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pair": "a b"}, "not usable as an SSH alias"),
        ({"host": "evil\n  ProxyCommand sh"}, "endpoint host"),
        ({"host": "%h"}, "endpoint host"),
        ({"port": 0}, "endpoint port 0 is out of range"),
        ({"user": "root\nHost *"}, "SSH user"),
        ({"identity_file": Path('/a"b')}, "cannot be written into an ssh_config"),
        ({"known_hosts": Path("/a/${HOME}/kh")}, "cannot be written into an ssh_config"),
        ({"known_hosts": Path("relative/kh")}, "must be absolute"),
    ],
)
def test_values_that_would_change_the_config_s_meaning_are_refused(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "pair": "p",
        "host": "127.0.0.1",
        "port": 2222,
        "user": "root",
        "identity_file": Path("/id"),
        "known_hosts": Path("/kh"),
    }
    args.update(change)
    with pytest.raises(UsageError, match=message):
        render_ssh_config(**args)  # type: ignore[arg-type]


def test_the_config_is_written_whole_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "ssh dir" / "config"
    write_ssh_config(path, "first\n")
    write_ssh_config(path, "second\n")
    assert path.read_text() == "second\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["config"], "no temporary file is left behind"


def test_the_known_hosts_line_names_the_alias_and_drops_the_comment(tmp_path: Path) -> None:
    public = generate_keypair(tmp_path / "pair_host_key", "a comment that must go")
    line = known_hosts_line("train", public)
    alias, kind, body = line.split(" ")
    assert (alias, kind) == ("dumont-train", "ssh-ed25519")
    assert public.startswith(f"{kind} {body} ")
    assert host_alias("train") == "dumont-train"
    with pytest.raises(DumontError, match="not an OpenSSH public key"):
        known_hosts_line("train", "AAAA only a body")


def test_a_fleet_s_block_connects_through_the_fall_through_script_to_every_endpoint_in_order(tmp_path: Path) -> None:
    """controller.endpoint_hosts: ssh itself runs the block's ProxyCommand (here a stand-in script at the path that
    records its arguments) on the endpoints in the order given, the 100% in the path kept literal through ssh's
    %-tokens and sh's quoting."""
    import json
    import subprocess

    proxy = tmp_path / "100% it's" / "fallthrough.py"
    proxy.parent.mkdir()
    proxy.write_text(f"import json, sys\nopen({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv))\n")
    text = render_ssh_config("train", "127.0.0.2", 2222, "root", None, tmp_path / "known_hosts",
                             fall_through=[("127.0.0.2", 2222), ("127.0.0.3", 2222), ("::1", 2222)], proxy=proxy)
    config = tmp_path / "config"
    write_ssh_config(config, text)
    subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "dumont-train", "true"], capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=30, check=False)  # fails: the stand-in serves nothing
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == [str(proxy), "127.0.0.2:2222", "127.0.0.3:2222", "[::1]:2222"]
    with pytest.raises(UsageError, match="names 2 endpoints but no fall-through script"):
        render_ssh_config("train", "127.0.0.2", 2222, "root", None, tmp_path / "k",
                          fall_through=[("127.0.0.2", 2222), ("127.0.0.3", 2222)])
    with pytest.raises(UsageError, match="endpoint host 'a b' cannot be written"):
        render_ssh_config("train", "127.0.0.2", 2222, "root", None, tmp_path / "k",
                          fall_through=[("127.0.0.2", 2222), ("a b", 2222)], proxy=proxy)
