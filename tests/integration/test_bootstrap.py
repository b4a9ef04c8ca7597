"""Readying a fresh host: whatever the image lacks, the controller finds or installs it, or says what is missing."""

from __future__ import annotations

import pytest

from dumont.core.bootstrap import ready_host
from dumont.errors import HostNotReady
from dumont.localcloud.hosts import LocalHost
from tests.conftest import Cloud

pytestmark = pytest.mark.integration


async def _host(cloud: Cloud, name: str, image: str, user: str) -> LocalHost:
    host = await cloud.pool.create(name, authorized_keys=[], image=image,
                                   login_users={user: [cloud.user_public_key]})
    cloud.known_hosts.pin(name, host.host_public_key)
    return host


async def test_a_vast_pytorch_host_gets_rsync_and_its_conda_python(cloud: Cloud) -> None:
    """Given a bare Vast pytorch host, readying finds python under /opt/conda and installs rsync; twice is a no-op."""
    host = await _host(cloud, "vast-1", "vast-pytorch", "root")
    first = await ready_host(cloud.transport, host.target(), timeout=120)
    assert first.python.endswith("/opt/conda/bin/python3") and first.installed == ("rsync",)
    assert first.rsync.endswith("/rsync")
    again = await ready_host(cloud.transport, host.target(), timeout=120)
    assert again.installed == () and again.python == first.python
    assert (host.files.home("root") / ".no_auto_tmux").exists()


async def test_a_debian_vm_is_readied_through_sudo_as_its_own_user(cloud: Cloud) -> None:
    """On Google's image the controller is a sudoer, not root: rsync comes through sudo -n apt-get."""
    host = await _host(cloud, "gcp-1", "debian-12", "dumont")
    ready = await ready_host(cloud.transport, host.target(), timeout=120)
    assert ready.user == "dumont" and ready.installed == ("rsync",)
    assert ready.python.endswith("/python3")


async def test_a_host_that_cannot_install_rsync_is_named_with_the_fix(cloud: Cloud) -> None:
    """When the package manager refuses (no sudo), the error names the host, rsync, what apt said, and the fix."""
    host = await _host(cloud, "gcp-2", "debian-12", "dumont")
    (host.files.bin_dir / "sudo").write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    with pytest.raises(HostNotReady) as caught:
        await ready_host(cloud.transport, host.target(), timeout=120)
    text = str(caught.value)
    assert "gcp-2" in text and "rsync is missing" in text and "password is required" in text
    assert "sudo -n" in text


async def test_a_chatty_login_shell_does_not_confuse_readying(cloud: Cloud) -> None:
    """Lines printed by ~/.bashrc (a banner) are ignored: only framed answers count."""
    host = await _host(cloud, "vast-2", "vast-pytorch", "root")
    bashrc = host.files.home("root") / ".bashrc"
    bashrc.write_text("echo 'Welcome to your Vast.ai GPU'\necho 'python=/nowhere'\n" + bashrc.read_text())
    ready = await ready_host(cloud.transport, host.target(), timeout=120)
    assert ready.python.endswith("/opt/conda/bin/python3")
