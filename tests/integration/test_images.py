"""The local cloud's images: a host booted from one has what the real image has, and lacks what it lacks."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from dumont.localcloud import images
from dumont.localcloud.hosts import LocalHost
from dumont.transport.ssh import run_local
from tests.conftest import Cloud, eventually

pytestmark = pytest.mark.integration
NAMESPACE = images.can_use_namespace()


async def ssh(cloud: Cloud, host: LocalHost, user: str, command: str, *, stdin: bytes = b"",
              tty: bool = False, timeout: float = 20) -> tuple[int, str, str]:
    """Run ``command`` on ``host`` as ``user`` with the user key; return (returncode, stdout, stderr)."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3", "-i", str(cloud.user_key), "-p", str(host.port)]
    argv += ["-tt"] if tty else ["-T"]
    argv.append(f"{user}@{host.address}")
    if command:
        argv.append(command)
    result = await run_local(argv, input=stdin, timeout=timeout, what=f"ssh {user}@{host.name}")
    return result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")


async def vast_host(cloud: Cloud, name: str = "vast-1", boot: str | None = None) -> LocalHost:
    return await cloud.pool.create(name, authorized_keys=[cloud.user_public_key], image="vast-pytorch",
                                   provider="vast", boot_script=boot)


async def gcp_host(cloud: Cloud, users: dict[str, list[str]], name: str = "gcp-1",
                   boot: str | None = None) -> LocalHost:
    return await cloud.pool.create(name, authorized_keys=[], image="debian-12", provider="gcp",
                                   login_users=users, boot_script=boot)


@pytest.mark.parametrize("own_namespace", [True, False], ids=["namespace", "path-only"])
async def test_a_vast_pytorch_host_has_no_rsync_and_python_only_under_conda(
        cloud: Cloud, own_namespace: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a Vast pytorch host, rsync is nowhere and python3 is only under the conda prefix, off the PATH."""
    if own_namespace and not NAMESPACE:
        pytest.skip("mount namespaces need root here; the PATH-only form is tested below")
    monkeypatch.setenv(images.NO_NAMESPACE_ENV, "0" if own_namespace else "1")
    host = await vast_host(cloud)
    assert host.user == "root" and host.namespace == own_namespace
    conda = "/opt/conda" if own_namespace else str(host.base / "opt" / "conda")
    code, out, err = await ssh(cloud, host, "root", 'command -v rsync || echo no-rsync; '
                               'command -v python3 || echo no-python3; '
                               f'"{conda}/bin/python3" -c "import sys; print(sys.version_info[0])"')
    assert code == 0, err
    assert out.split() == ["no-rsync", "no-python3", "3"]
    if own_namespace:  # where hosts get their own /usr/bin, the machine's tools are gone at their absolute paths too
        code, out, _ = await ssh(cloud, host, "root", "test -e /usr/bin/rsync || test -e /usr/bin/python3 || echo gone")
        assert out.strip() == "gone"


async def test_apt_get_install_gives_rsync_to_that_host_only(cloud: Cloud) -> None:
    """When rsync is installed on one Vast host with apt-get, it runs there, and another host still lacks it."""
    one, other = await vast_host(cloud, "vast-1"), await vast_host(cloud, "vast-2")
    code, out, err = await ssh(cloud, one, "root", "apt-get update -qq && apt-get install -y -qq rsync && "
                                                   "rsync --version | head -1")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("rsync  version")
    code, out, _ = await ssh(cloud, other, "root", "command -v rsync || echo no-rsync")
    assert out.strip() == "no-rsync"
    code, _, err = await ssh(cloud, other, "root", "apt-get install -y no-such-package")
    assert code == 100 and "Unable to locate package no-such-package" in err
    await cloud.pool.stop("vast-1")
    await cloud.pool.start("vast-1")
    code, out, _ = await ssh(cloud, one, "root", "command -v rsync")
    assert code == 0 and out.strip().endswith("/rsync"), "an installed package survives a restart (the disk keeps it)"


async def test_an_interactive_vast_login_lands_in_tmux_unless_no_auto_tmux(cloud: Cloud) -> None:
    """Vast wraps an interactive SSH login in tmux; `touch ~/.no_auto_tmux` turns that off."""
    host = await vast_host(cloud)
    socket_dir = host.tmux_dir
    login = await asyncio.create_subprocess_exec(
        "ssh", "-tt", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-i", str(cloud.user_key), "-p", str(host.port), f"root@{host.address}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def tmux_started() -> None:
        assert any(socket_dir.glob("tmux-*/default")), "no tmux server yet"

    try:
        await eventually(tmux_started, timeout=15, retry_on=(AssertionError,))
    finally:
        if login.returncode is None:
            login.kill()
        _, err = await login.communicate()
    assert login.returncode is not None, err
    await ssh(cloud, host, "root", "tmux kill-server; touch ~/.no_auto_tmux")
    _, out, _ = await ssh(cloud, host, "root", "", tty=True, stdin=b"echo NOTMUX=${TMUX:-none}; exit\n")
    assert "NOTMUX=none" in out


async def test_the_boot_script_runs_as_root_at_every_start(cloud: Cloud) -> None:
    """A Vast onstart (or GCP startup-script) runs as root each time the machine starts."""
    host = await vast_host(cloud, boot='echo "boot as $USER" >> "$HOME/boots"')
    boots = host.files.home("root") / "boots"

    async def booted(times: int) -> None:
        assert boots.exists() and boots.read_text().count("boot as root") == times

    await eventually(lambda: booted(1), timeout=10, retry_on=(AssertionError,))
    await cloud.pool.stop(host.name)
    await cloud.pool.start(host.name)
    await eventually(lambda: booted(2), timeout=10, retry_on=(AssertionError,))


async def test_a_debian_vm_refuses_root_and_gives_its_metadata_users_sudo(cloud: Cloud) -> None:
    """Given a GCP debian-12 VM, root cannot log in; a metadata user can, and sudo makes apt-get work."""
    host = await gcp_host(cloud, {"dumont": [cloud.user_public_key], "root": [cloud.user_public_key]})
    assert host.user == "dumont" and host.login_users == ["dumont"]
    code, _, err = await ssh(cloud, host, "root", "true")
    assert code == 255 and "Permission denied" in err
    code, out, err = await ssh(cloud, host, "dumont", "echo $USER; command -v python3; command -v rsync || echo none")
    assert code == 0, err
    assert out.split() == ["dumont", "/usr/bin/python3" if NAMESPACE else f"{host.files.bin_dir}/python3", "none"]
    code, _, err = await ssh(cloud, host, "dumont", "apt-get install -y rsync")
    assert code == 100 and "are you root?" in err
    code, out, err = await ssh(cloud, host, "dumont", "sudo -n apt-get install -y rsync >/dev/null && rsync --version")
    assert code == 0 and out.startswith("rsync  version"), err


async def test_metadata_users_change_while_the_vm_runs(cloud: Cloud, tmp_path: Path) -> None:
    """New metadata users can log in at once; removed ones (OS Login: none at all) cannot."""
    host = await gcp_host(cloud, {"alice": [cloud.user_public_key]})
    assert (await ssh(cloud, host, "alice", "true"))[0] == 0
    cloud.pool.set_login_users(host.name, {"bob": [cloud.user_public_key]})
    assert (await ssh(cloud, host, "bob", "true"))[0] == 0
    assert (await ssh(cloud, host, "alice", "true"))[0] == 255
    cloud.pool.set_login_users(host.name, {})
    assert (await ssh(cloud, host, "bob", "true"))[0] == 255


async def test_a_forced_command_key_survives_a_metadata_change(cloud: Cloud) -> None:
    """A key a program on the VM added itself stays when the metadata users are rewritten (Google's guest agent)."""
    host = await gcp_host(cloud, {"dumont": [cloud.user_public_key]})
    keys = host.authorized_keys_of("dumont")
    keys.write_text(keys.read_text() + 'command="true" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOST added-on-host\n')
    cloud.pool.set_login_users(host.name, {"dumont": [cloud.user_public_key]})
    assert "added-on-host" in keys.read_text()


async def test_a_closed_firewall_lets_no_new_connection_in(cloud: Cloud) -> None:
    """With its firewall closed a VM keeps running but SSH never answers; opened, it answers again."""
    host = await gcp_host(cloud, {"dumont": [cloud.user_public_key]})
    await cloud.pool.set_reachable(host.name, False)
    code, _, err = await ssh(cloud, host, "dumont", "true", timeout=30)
    assert code == 255 and "timed out" in err.lower()
    await cloud.pool.set_reachable(host.name, True)
    assert (await ssh(cloud, host, "dumont", "true"))[0] == 0


async def test_a_restart_may_bring_a_host_back_on_another_address(cloud: Cloud) -> None:
    """After a restart with a new address the host answers there with the same host key."""
    host = await vast_host(cloud)
    before = (host.address, host.port)
    await cloud.pool.stop(host.name)
    await cloud.pool.start(host.name, new_address=True)
    assert (host.address, host.port) != before
    code, out, _ = await ssh(cloud, host, "root", "cat \"$DUMONT_SSHD_HOST_KEY.pub\"")
    assert code == 0 and out.split()[:2] == host.host_public_key.split()[:2]


def test_every_image_names_what_it_lacks() -> None:
    """The images are unkind on purpose: each one lacks rsync, and Google's refuses root."""
    assert images.VAST_PYTORCH.lacks("rsync") and images.VAST_PYTORCH.lacks("python3.11")
    assert not images.VAST_PYTORCH.lacks("tmux")
    assert images.DEBIAN_12.lacks("rsync") and not images.DEBIAN_12.lacks("python3")
    assert not images.DEBIAN_12.root_login
    assert os.path.isabs(images.nss_wrapper())
