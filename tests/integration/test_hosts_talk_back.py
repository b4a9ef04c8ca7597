"""Hosts that talk back (hostile-review.md #3, #4): a login banner, a chatty ~/.bashrc, an agent that answers
garbage. Replication works through the first two; the third is a clear error naming the host, nothing cached."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dumont.errors import AgentError
from dumont.replication.modes import DIRECT, RELAY
from dumont.replication.pairing import pair_hosts
from dumont.transport.keys import generate_keypair
from tests.conftest import Cloud, Pair

BANNER = "Welcome to your cloud VM\nTip: run `nvidia-smi` to see your GPU"


@pytest.fixture
async def chatty_pair(cloud: Cloud) -> Pair:
    """gpu-1 and cpu-1 whose ~/.bashrc prints two lines for every login, paired for direct mode."""
    cloud.pool.login_banner = BANNER
    gpu, cpu = await cloud.host("gpu-1", "gpu"), await cloud.host("cpu-1", "cpu")
    assert "Welcome to your cloud VM" in (gpu.base / "home" / ".bashrc").read_text()
    primary, standby = cloud.agent(gpu), cloud.agent(cpu)
    generate_keypair(cloud.root / "pair_key", "dumont-pair-test")
    await primary.set_epoch(1)
    await pair_hosts(pair="test", epoch=1, primary=primary, standby=standby, standby_address=cpu.target(),
                     standby_host_key=cpu.host_public_key, pair_key=cloud.root / "pair_key")
    return Pair(cloud, gpu, cpu, primary, standby)


async def test_the_banner_really_reaches_a_plain_ssh_command(chatty_pair: Pair) -> None:
    """The fixture is as hostile as the review's: `ssh host cmd` gets the banner ahead of the command's output."""
    result = await chatty_pair.cloud.transport.run(chatty_pair.primary.target(), ["echo", "answer"], timeout=30)
    assert result.text.splitlines() == [*BANNER.splitlines(), "answer"]


@pytest.mark.parametrize("mode", [DIRECT, RELAY])
async def test_replication_through_chatty_logins_is_exact(
        chatty_pair: Pair, mode: str, fill: Callable[[Path, dict[str, bytes]], None],
        tree_digest: Callable[[Path], dict[bytes, tuple[object, ...]]]) -> None:
    """Both transfer modes: rsync's protocol never sees the banner, and the snapshot matches the workspace."""
    try:
        fill(chatty_pair.primary.workspace, {"data/a.bin": b"a" * 70_000, "notes with space.txt": b"hello\n"})
        report = await chatty_pair.replicator(mode=mode).run_pass()
        assert report.copied and report.files_copied == 2
        assert tree_digest(chatty_pair.snapshot_tree(report.snapshot_seq or 0)) == \
            tree_digest(chatty_pair.primary.workspace)
    finally:
        await chatty_pair.primary_agent.close()
        await chatty_pair.standby_agent.close()


async def test_an_agent_that_answers_garbage_is_an_error_naming_the_host_and_nothing_is_cached(
        chatty_pair: Pair) -> None:
    """The review's #3: the agent replaced by a script that says it is ready, then answers HTML."""
    agent = chatty_pair.standby_agent
    try:
        info = await agent.info()
        installed = Path(info.data_dir) / "agent"
        pyz = next(installed.glob("agent-*.pyz"))
        good = pyz.read_bytes()
        await agent.close()
        pyz.write_text('import sys\nprint(\'{"ready": true}\', flush=True)\n'
                       'for line in sys.stdin:\n    print("<html>garbage</html>", flush=True)\n')
        with pytest.raises(AgentError) as caught:
            await agent.info()
        assert "cpu-1" in caught.value.message and "<html>garbage</html>" in caught.value.message
        pyz.write_bytes(good)
        assert (await agent.info()).epoch == info.epoch, "the channel is reopened and the path looked up again"
    finally:
        await chatty_pair.primary_agent.close()
        await agent.close()
