"""The command line as a user runs it: real processes, real exit codes, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dumont.localcloud import procs

pytestmark = pytest.mark.integration


def dumont(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a separate process, with no standard input, like CI does."""
    return subprocess.run([sys.executable, "-m", "dumont", *args], check=False, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A local cloud state dir (with a space in it), always brought down afterwards."""
    directory = tmp_path / "cloud state"
    yield directory
    dumont("local", "down", "--state-dir", str(directory))
    cloud_id = (directory / "cloud_id").read_text().strip() if (directory / "cloud_id").exists() else None
    if cloud_id:
        assert procs.marked_processes(cloud_id, directory / "hosts") == set()


def test_local_cloud_lifecycle_leaves_nothing_behind(state_dir: Path) -> None:
    """Given no local cloud, when it is brought up twice, faulted and brought down, then no process remains."""
    first = dumont("local", "up", "--state-dir", str(state_dir), "--json")
    assert first.returncode == 0, first.stderr
    up = json.loads(first.stdout)
    assert up["state_dir"] == str(state_dir) and not up["already_running"]
    again = json.loads(dumont("local", "up", "--state-dir", str(state_dir), "--json").stdout)
    assert again["already_running"] and again["pid"] == up["pid"]
    assert [(h["name"], h["ssh_port"]) for h in again["hosts"]] == [(h["name"], h["ssh_port"]) for h in up["hosts"]]

    assert up["config"] == str(state_dir / "dumont.toml") and (state_dir / "dumont.toml").exists()
    assert up["vast_url"].startswith("http://127.0.0.1:") and up["gcp_url"].startswith("http://127.0.0.1:")
    assert dumont("config", "check", up["config"]).returncode == 0
    assert dumont("local", "add", "cpu-1", "--role", "cpu", "--state-dir", str(state_dir)).returncode == 0
    hosts = json.loads(dumont("local", "hosts", "--state-dir", str(state_dir), "--json").stdout)
    assert {h["provider"] for h in hosts} == {"vast", "local"} and len(hosts) == 2
    for field in ("name", "role", "provider", "ssh_port", "pids", "workspace", "state"):
        assert all(field in h for h in hosts), field
    assert all(h["state"] == "running" and h["pids"] for h in hosts)
    assert (state_dir / "user_key").stat().st_mode & 0o077 == 0

    gpu = next(h for h in hosts if h["provider"] == "vast")
    assert gpu["instance_id"] and gpu["role"] == "gpu"
    killed = dumont("local", "kill", gpu["instance_id"], "--state-dir", str(state_dir), "--json")
    assert killed.returncode == 0 and json.loads(killed.stdout)["state"] == "killed"
    cloud_id = (state_dir / "cloud_id").read_text().strip()

    down = dumont("local", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert procs.marked_processes(cloud_id, state_dir / "hosts") == set()
    assert not procs.is_alive(up["pid"])


def test_interrupting_the_daemon_stops_every_host(state_dir: Path) -> None:
    """Given a running local cloud, when its daemon gets Ctrl-C (SIGINT), then it ends every host and exits."""
    up = json.loads(dumont("local", "up", "--state-dir", str(state_dir), "--json").stdout)
    cloud_id = (state_dir / "cloud_id").read_text().strip()
    assert procs.marked_processes(cloud_id, state_dir / "hosts")
    os.kill(up["pid"], 2)
    assert procs.wait_for_exit(up["pid"], 30)
    assert procs.marked_processes(cloud_id, state_dir / "hosts") == set()


def up_with_plain_hosts(state_dir: Path) -> None:
    """A local cloud with two plain hosts, gpu-1 and cpu-1, for one-off passes."""
    dumont("local", "up", "--state-dir", str(state_dir))
    for name in ("gpu-1", "cpu-1"):
        dumont("local", "add", name, "--state-dir", str(state_dir))


def test_sync_and_verify_through_the_cli(state_dir: Path) -> None:
    """Given a local cloud, when a workspace is synced and verified, then both succeed; an emptied source is
    refused with exit 1 and the standby keeps its files."""
    up_with_plain_hosts(state_dir)
    workspace = state_dir / "hosts" / "gpu-1" / "workspace"
    (workspace / "notes.txt").write_text("hello")
    synced = dumont("sync", "--from", "gpu-1", "--to", "cpu-1", "--state-dir", str(state_dir), "--json")
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert report["copied"] and report["files_scanned"] == 1

    verified = dumont("verify", "cpu-1", "--state-dir", str(state_dir))
    assert verified.returncode == 0 and "ok" in verified.stdout
    against = dumont("verify", "gpu-1", "--workspace", "--against", "cpu-1", "--state-dir", str(state_dir))
    assert against.returncode == 0, against.stdout + against.stderr

    (workspace / "notes.txt").unlink()
    refused = dumont("sync", "--from", "gpu-1", "--to", "cpu-1", "--state-dir", str(state_dir))
    assert refused.returncode == 1
    assert "refusing to sync" in refused.stderr and "--allow-empty-source" in refused.stderr
    snapshot = state_dir / "hosts" / "cpu-1" / "var" / "lib" / "dumont" / "snapshots"
    assert [p.read_text() for p in snapshot.glob("*/tree/notes.txt")] == ["hello"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sync", "--from", "gpu-1", "--to", "nowhere"], "--to 'nowhere': no such local host"),
        (["sync", "--from", "gpu-1", "--to", "gpu-1"], "--from and --to are both 'gpu-1'"),
        (["sync", "--from", "gpu-1", "--to", "cpu-1", "--mode", "carrier-pigeon"], "'carrier-pigeon' is not one of"),
        (["sync", "--from", "gpu-1", "--to", "cpu-1", "--keep", "0"], "0 is not in the range x>=1"),
        (["sync", "--to", "cpu-1"], "--from and --to go together"),
        (["verify", "gpu-1", "--workspace"], "--workspace needs --against"),
        (["local", "kill", "gpu-9"], "no local host 'gpu-9'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_bad_input_is_refused_with_exit_2_and_changes_nothing(state_dir: Path, args: list[str], message: str) -> None:
    """Given a running local cloud, when the CLI gets bad input, then it names the problem and exits 2."""
    up_with_plain_hosts(state_dir)
    before = sorted(p.name for p in (state_dir / "hosts" / "cpu-1" / "var" / "lib" / "dumont").iterdir())
    result = dumont(*args, "--state-dir", str(state_dir)) if args[0] != "frobnicate" else dumont(*args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert message in result.stderr
    after = sorted(p.name for p in (state_dir / "hosts" / "cpu-1" / "var" / "lib" / "dumont").iterdir())
    assert before == after


def test_commands_without_a_running_cloud_say_how_to_start_one(tmp_path: Path) -> None:
    """Given no local cloud, when a command needs one, then it says so and how to start it (exit 1)."""
    result = dumont("local", "hosts", "--state-dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "no local cloud is running" in result.stderr and "dumont local up" in result.stderr


def test_a_hosts_link_is_changed_from_the_cli_at_run_time(state_dir: Path) -> None:
    """Given a local cloud started with links, `dumont local link` changes one (and says so), refuses what it
    cannot read naming it; a host keeps its link across a restart of the cloud, and a host made without one
    says how to get one."""
    up = dumont("local", "up", "--link", "lan", "--state-dir", str(state_dir), "--json")
    assert up.returncode == 0, up.stderr
    host = json.loads(up.stdout)["hosts"][0]
    assert host["link"] is not None and host["ssh_port"] != host["sshd_port"]
    changed = dumont("local", "link", host["name"], "--rtt", "120ms", "--rate", "50mbit", "--state-dir",
                     str(state_dir), "--json")
    assert changed.returncode == 0, changed.stderr
    link = json.loads(changed.stdout)["link"]
    assert link["rtt"] == pytest.approx(0.12) and link["rate"] == pytest.approx(50e6 / 8)
    held = dumont("local", "link", host["name"], "--blackhole", "--state-dir", str(state_dir))
    assert held.returncode == 0 and "blackholed" in held.stdout
    healed = dumont("local", "link", host["name"], "--heal", "--state-dir", str(state_dir))
    assert healed.stdout.strip().endswith("120 ms RTT, 50 Mbit/s")
    bad = dumont("local", "link", host["name"], "--rtt", "soon", "--state-dir", str(state_dir))
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr
    dumont("local", "down", "--state-dir", str(state_dir))
    dumont("local", "up", "--state-dir", str(state_dir))  # no --link: its hosts keep theirs
    again = json.loads(dumont("local", "hosts", "--state-dir", str(state_dir), "--json").stdout)
    assert next(h for h in again if h["name"] == host["name"])["link"]["rtt"] == pytest.approx(0.12)
    assert dumont("local", "add", "plain-1", "--state-dir", str(state_dir)).returncode == 0
    plain = dumont("local", "link", "plain-1", "--rtt", "50ms", "--state-dir", str(state_dir))
    assert plain.returncode != 0 and "dumont local up --link" in plain.stderr
