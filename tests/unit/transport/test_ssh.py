"""SSH plumbing that needs no host: error classification, quoting, the generated ssh_config."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dumont.errors import AuthRefused, HostKeyMismatch, HostUnreachable, UsageError
from dumont.transport.keys import KnownHosts, check_alias, generate_keypair, public_key_body
from dumont.transport.rsync import check_exit, parse_stats, path_list, rsync_argv
from dumont.transport.ssh import SshTarget, SshTransport, classify_ssh_failure, quote_remote


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("Host key verification failed.", HostKeyMismatch),
        ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", HostKeyMismatch),
        ("root@127.0.0.1: Permission denied (publickey).", AuthRefused),
        ("ssh: connect to host 127.0.0.1 port 2: Connection refused", HostUnreachable),
        ("ssh: connect to host 192.0.2.9 port 22: Connection timed out", HostUnreachable),
        ("kex_exchange_identification: Connection closed by remote host", HostUnreachable),
        ("", HostUnreachable),
    ],
)
def test_ssh_failures_are_classified(stderr: str, error: type[Exception]) -> None:
    assert type(classify_ssh_failure("gpu-1", stderr)) is error


def test_remote_arguments_survive_the_remote_shell() -> None:
    argv = ["printf", "%s", "a b", "$(rm -rf /)", "it's", "-n", "new\nline"]
    assert shlex.split(quote_remote(argv)) == argv


@pytest.mark.parametrize("alias", ["gpu 1", "-oProxyCommand=x", "", "a*", "x" * 64, "tab\t"])
def test_aliases_that_ssh_config_could_misread_are_refused(alias: str) -> None:
    with pytest.raises(UsageError, match="not usable as an SSH alias"):
        check_alias(alias)


def test_generated_config_pins_keys_and_never_disables_checking(tmp_path: Path) -> None:
    transport = SshTransport(identity=tmp_path / "id key", known_hosts=KnownHosts(tmp_path / "known hosts"))
    try:
        transport.add(SshTarget("gpu-1", "127.0.0.1", 2201, "root"))
        config = transport.config_path.read_text()
    finally:
        import asyncio

        asyncio.run(transport.close())
    assert "StrictHostKeyChecking yes" in config
    assert "HostKeyAlias gpu-1" in config
    assert f'UserKnownHostsFile "{tmp_path / "known hosts"}"' in config
    assert f'IdentityFile "{tmp_path / "id key"}"' in config
    assert "BatchMode yes" in config


def test_known_hosts_pins_per_alias(tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "known_hosts")
    first = generate_keypair(tmp_path / "k1", "one")
    second = generate_keypair(tmp_path / "k2", "two")
    known.pin("gpu-1", first)
    known.pin("cpu-1", first)
    known.pin("gpu-1", second)
    assert known.keys_for("gpu-1") == [public_key_body(second)]
    known.pin("gpu-1", first, keep_existing=True)
    assert len(known.keys_for("gpu-1")) == 2
    known.unpin("gpu-1")
    assert known.keys_for("gpu-1") == [] and known.keys_for("cpu-1") == [public_key_body(first)]


def test_keys_are_private_and_never_overwritten(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "pair", "pair")
    assert (tmp_path / "pair").stat().st_mode & 0o777 == 0o600
    from dumont.errors import DumontError

    with pytest.raises(DumontError, match="already exists"):
        generate_keypair(tmp_path / "pair", "again")


def test_rsync_stats_with_thousands_separators() -> None:
    text = """Number of files: 3 (reg: 3)
Number of regular files transferred: 2
Total file size: 1,245,184,000 bytes
Literal data: 10,485,760 bytes
Matched data: 939,524,096 bytes
Total bytes sent: 10,612,345
Total bytes received: 1,234
"""
    stats = parse_stats(text)
    assert (stats.bytes_sent, stats.bytes_received, stats.files_transferred) == (10_612_345, 1_234, 2)
    assert (stats.literal_bytes, stats.matched_bytes) == (10_485_760, 939_524_096)
    assert parse_stats("garbage").bytes_sent == 0


@pytest.mark.parametrize(("code", "ok"), [(0, True), (23, True), (24, True), (12, False), (255, False)])
def test_rsync_partial_transfers_are_judged_by_verification(code: int, ok: bool) -> None:
    if ok:
        check_exit(code, "", "push")
    else:
        from dumont.errors import TransportError

        with pytest.raises(TransportError, match=f"rsync exit {code}"):
            check_exit(code, "boom", "push")


def test_paths_travel_nul_separated_as_raw_bytes() -> None:
    odd = b"new\nline \xff".decode("utf-8", "surrogateescape")
    assert path_list(["a", odd]) == b"a\0new\nline \xff\0"
    argv = rsync_argv(rsh="ssh", io_timeout=30, link_dest="/base", bwlimit=100)
    assert "--ignore-times" in argv and "--from0" in argv and "--link-dest=/base" in argv
    assert "--bwlimit=100" in argv
