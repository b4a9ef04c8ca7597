"""The drill's secret check finds a copy of the pair's CA key on a host, and not another key of the same kind."""

from pathlib import Path

from dumont.drill.checks import hosts_holding_key
from dumont.transport.keys import generate_keypair


def test_only_the_host_holding_the_key_itself_is_named(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "ca", "dumont-pair-main-host-ca")
    for host in ("gcp-standby-1", "vast-1", "vast-2"):
        (tmp_path / "hosts" / host / "etc").mkdir(parents=True)
        generate_keypair(tmp_path / "hosts" / host / "etc" / "ssh_host_ed25519_key", host)  # same kind, not it
    (tmp_path / "hosts" / "vast-2" / "workspace").mkdir()
    (tmp_path / "hosts" / "vast-2" / "workspace" / "stolen").write_bytes((tmp_path / "ca").read_bytes())
    assert hosts_holding_key(tmp_path / "hosts", tmp_path / "ca") == ["vast-2"]
