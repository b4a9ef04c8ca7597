"""The user's SSH session outlives the controller: its endpoint runs in a process of its own.

Through the real command lines only: `dumont local up`, `dumont run`, a real `ssh` through the endpoint running a
command loop, the controller stopped with SIGTERM and then SIGKILL and started again each time; then a GPU kill
fails over through the restarted controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def dumont(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dumont", *args,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "DUMONT_LOCAL_VAST_DELAY_SECONDS": "0.3"})
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    state = tmp_path / "local"
    code, out, err = await dumont("local", "up", "--state-dir", str(state), "--json")
    assert code == 0, err
    try:
        yield json.loads(out)
    finally:
        code, _, err = await dumont("local", "down", "--state-dir", str(state))
        assert code == 0, err


async def start_controller(config: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "dumont", "run", "--config", config,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)


async def pair_status(config: str) -> dict[str, Any]:
    code, out, err = await dumont("status", "--config", config, "--json", timeout=30)
    assert code == 0, err
    pair: dict[str, Any] = json.loads(out)["pairs"][0]
    return pair


async def wait_for(config: str, what: str, check: Any, timeout: float = 120) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    async def satisfied() -> None:
        status = await pair_status(config)
        seen.append(status)
        assert check(status), f"waiting for {what}: {status['state']} ({status.get('reason')})"

    await eventually(satisfied, timeout=timeout, retry_on=(AssertionError,))
    return seen[-1]


@contextlib.asynccontextmanager
async def session(ssh_config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A user's long SSH session through the endpoint, printing a counter every 0.2 s."""
    loop = 'i=0; while true; do i=$((i+1)); echo "tick $i $DUMONT_HOST"; sleep 0.2; done'
    proc = await asyncio.create_subprocess_exec(
        "ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "-o", "ServerAliveInterval=2", "dumont-main", loop,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def still_ticking(proc: asyncio.subprocess.Process, lines: int = 5) -> list[str]:
    """The session's next lines: it is alive and answering."""
    assert proc.stdout is not None
    got = []
    async with asyncio.timeout(30):
        for _ in range(lines):
            line = (await proc.stdout.readline()).decode().strip()
            assert line.startswith("tick "), f"the session ended: {line!r}"
            got.append(line)
    return got


async def test_a_session_survives_the_controller_stopped_and_killed_then_a_failover_works(
        local: dict[str, Any]) -> None:
    config = local["config"]
    controller = await start_controller(config)
    try:
        await wait_for(config, "the first pass", lambda s: s["state"] == "syncing" and s["last_sync"] is not None)
        ssh_config = Path(local["state_dir"]) / "controller" / "ssh" / "main" / "config"
        async with session(ssh_config) as user:
            before = await still_ticking(user)
            controller.send_signal(signal.SIGTERM)
            async with asyncio.timeout(90):
                assert await controller.wait() == 0
            during = await still_ticking(user, 10)  # no controller at all: the endpoint keeps relaying
            controller = await start_controller(config)
            await wait_for(config, "the restarted controller", lambda s: s["state"] == "syncing")
            controller.send_signal(signal.SIGKILL)
            await controller.wait()
            after = await still_ticking(user, 10)
            numbers = [int(line.split()[1]) for line in before + during + after]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "no answer lost or repeated"
            controller = await start_controller(config)
            status = await wait_for(config, "the controller back", lambda s: s["state"] == "syncing")
            gpu = status["primary"]["instance_id"]
            code, _, err = await dumont("local", "kill", gpu, "--state-dir", local["state_dir"])
            assert code == 0, err
            failed_over = await wait_for(config, "the failover", lambda s: s["primary"]["role"] == "cpu", 60)
            assert failed_over["epoch"] >= 2
        code, out, err = await asyncio.wait_for(_login(ssh_config), 60)
        assert code == 0 and out.strip() == failed_over["primary"]["ssh_user"], err
    finally:
        if controller.returncode is None:
            controller.send_signal(signal.SIGTERM)
            async with asyncio.timeout(90):
                await controller.wait()


async def _login(ssh_config: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec("ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "dumont-main",
                                                "echo $USER", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_restarted_controller_answers_at_once_though_its_gpu_does_not(local: dict[str, Any]) -> None:
    """hostile-review.md #8: start-up waited 60 s per unreachable host before the API and the endpoint listened.
    Hosts are reached in the background now: a partitioned GPU holds nothing up."""
    config = local["config"]
    controller = await start_controller(config)
    try:
        status = await wait_for(config, "the first pass", lambda s: s["state"] == "syncing"
                                and s["last_sync"] is not None)
        controller.send_signal(signal.SIGTERM)
        async with asyncio.timeout(90):
            assert await controller.wait() == 0
        code, _, err = await dumont("local", "partition", f"vast-{status['primary']['instance_id']}",
                                    "--state-dir", local["state_dir"])
        assert code == 0, err
        started = time.monotonic()
        controller = await start_controller(config)
        await wait_for(config, "the restarted controller's API", lambda s: True, timeout=30)
        answered = time.monotonic() - started
        print(f"the API answered {answered:.2f} s after the restart")
        assert answered < 20, f"the API answered only after {answered:.1f} s"
    finally:
        if controller.returncode is None:
            controller.send_signal(signal.SIGTERM)
            async with asyncio.timeout(90):
                await controller.wait()
