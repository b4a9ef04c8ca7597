"""Shared fixtures: a local cloud of real sshd hosts, an SSH transport that trusts them, agents and pairs."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dumont.agent.common import snapshot_name
from dumont.localcloud.hosts import LocalHost
from dumont.localcloud.pool import HostPool
from dumont.replication.engine import ReplicationPolicy, Replicator
from dumont.replication.hostagent import HostAgent
from dumont.replication.pairing import pair_hosts
from dumont.transport.keys import KnownHosts, generate_keypair
from dumont.transport.ssh import SshTransport
from tests.postgres import PostgresServer, start_server

REQUIRED_TOOLS = ("ssh", "ssh-keygen", "rsync")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration tests need OpenSSH and rsync; fail loudly (never skip) when the machine lacks them."""
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if not any(Path(p).exists() for p in ("/usr/sbin/sshd", "/usr/bin/sshd")) and not shutil.which("sshd"):
        missing.append("sshd")
    if missing and any("integration" in str(i.fspath) for i in items):
        raise pytest.UsageError(f"integration tests need {', '.join(missing)}; run `make deps` (Debian)")


@dataclass
class Cloud:
    """A pool of local hosts plus the controller-side SSH setup that reaches them."""

    root: Path
    pool: HostPool
    transport: SshTransport
    known_hosts: KnownHosts
    user_key: Path
    user_public_key: str

    async def host(self, name: str, role: str = "") -> LocalHost:
        """Create and start a host that trusts the user key; pin its host key."""
        host = await self.pool.create(name, authorized_keys=[self.user_public_key], role=role)
        self.known_hosts.pin(name, host.host_public_key)
        return host

    def agent(self, host: LocalHost) -> HostAgent:
        """An agent client for ``host``."""
        return HostAgent(self.transport, host.target())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session (tests/postgres.py); each test makes its own database."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A fresh local cloud in a directory with a space in its name; torn down with a leak check."""
    root = tmp_path / "local cloud"
    root.mkdir()
    public = generate_keypair(root / "user_key", "dumont-test-user")
    known = KnownHosts(root / "known_hosts")
    pool = HostPool(root / "state")
    transport = SshTransport(identity=root / "user_key", known_hosts=known)
    cloud = Cloud(root, pool, transport, known, root / "user_key", public)
    try:
        yield cloud
    finally:
        await transport.close()
        await pool.shutdown()
        leftovers = pool.leftover_processes()
        assert not leftovers, f"processes of the local cloud survived teardown: {sorted(leftovers)}"


@dataclass
class Pair:
    """A primary and a standby with their agents, paired for direct mode at epoch 1."""

    cloud: Cloud
    primary: LocalHost
    standby: LocalHost
    primary_agent: HostAgent
    standby_agent: HostAgent

    def replicator(self, **policy: object) -> Replicator:
        """A replicator for this pair (relay mode runs through the cloud's transport)."""
        return Replicator(
            "test", self.primary_agent, self.standby_agent, ReplicationPolicy(**policy),  # type: ignore[arg-type]
            transport=self.cloud.transport, relay_dir=self.cloud.root / "relay",
        )

    def snapshot_tree(self, seq: int) -> Path:
        """Where snapshot ``seq`` lives on the standby."""
        return self.standby.data_dir / "snapshots" / snapshot_name(seq) / "tree"


@pytest.fixture
async def pair(cloud: Cloud) -> AsyncIterator[Pair]:
    """gpu-1 (primary, epoch 1) and cpu-1 (standby), paired for direct mode."""
    gpu, cpu = await cloud.host("gpu-1", "gpu"), await cloud.host("cpu-1", "cpu")
    primary, standby = cloud.agent(gpu), cloud.agent(cpu)
    generate_keypair(cloud.root / "pair_key", "dumont-pair-test")
    await primary.set_epoch(1)
    await pair_hosts(pair="test", epoch=1, primary=primary, standby=standby, standby_address=cpu.target(),
                     standby_host_key=cpu.host_public_key, pair_key=cloud.root / "pair_key")
    try:
        yield Pair(cloud, gpu, cpu, primary, standby)
    finally:
        await primary.close()
        await standby.close()


@pytest.fixture
def tree_digest() -> Callable[[Path], dict[bytes, tuple[object, ...]]]:
    """Describe a tree exactly (type, mode, size, mtime, content or link target, hard-link group) by raw path."""
    return describe_tree


def describe_tree(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Every path under ``root`` with what replication must preserve about it."""
    import hashlib
    import stat

    out: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[int, list[bytes]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_mtime_ns)
            else:
                with open(full, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
                out[rel] = ("file", mode, st.st_size, st.st_mtime_ns, digest)
    for paths in inodes.values():
        leader = min(paths) if len(paths) > 1 else None
        for rel in paths:
            out[rel] = (*out[rel], leader)  # hard-link group, as seen inside this tree only
    return out


@pytest.fixture
def fill() -> Iterator[Callable[[Path, dict[str, bytes]], None]]:
    """Write files (parents created) into a workspace."""

    def write(root: Path, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    yield write


async def eventually(
    check: Callable[[], Awaitable[None]], *, timeout: float, retry_on: tuple[type[BaseException], ...]
) -> None:
    """Run ``check`` until it stops raising ``retry_on``, for at most ``timeout`` seconds.

    For conditions that nothing announces (an sshd re-reading its keys): the one polling loop of the test suite.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await check()
            return
        except retry_on:
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.05)
