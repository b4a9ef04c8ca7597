"""Given the stable endpoint in its own process, a user's SSH session outlives the controller: stopped with SIGTERM,
killed with SIGKILL, started again; a failover still works afterwards, and the endpoint process itself, stopped
and started, serves the last published route at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dumont.endpoint import ensure_endpoint_daemon, stop_endpoint_daemon
from dumont.endpoint.control import request
from dumont.endpoint.launch import is_alive, wait_for_exit
from dumont.errors import EndpointError
from dumont.localcloud.hosts import LocalHost
from dumont.transport.ssh import run_local
from tests.conftest import Cloud, eventually
from tests.integration.test_endpoint import hosts_with_pair_key, user_ssh_argv, write_user_config

REPO = Path(__file__).resolve().parents[2]
WAIT = 20.0  # the bound of every wait here; each step takes well under a second


def processes_mentioning(text: str) -> set[int]:
    """Live processes whose command line contains ``text`` (the endpoint directory names ours)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes() and is_alive(int(entry.name)):
                    found.add(int(entry.name))
    return found


@dataclass
class FakeController:
    """A controller stand-in process (tests/integration/endpoint_controller.py) that publishes one route."""

    process: asyncio.subprocess.Process
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.ready["address"]
        return host, port

    async def command(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(self.process.stdout.readline(), WAIT))
        assert answer["ok"], answer
        return answer

    async def stop(self, sig: signal.Signals) -> int:
        """Send ``sig`` and return the exit status."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), WAIT)


@dataclass
class World:
    """An endpoint directory and every controller started on it; torn down with a check for leftovers."""

    root: Path
    controllers: list[FakeController] = field(default_factory=list)

    async def controller(self, target: tuple[str, int], epoch: int, **options: str) -> FakeController:
        argv = [sys.executable, "-m", "tests.integration.endpoint_controller", "--dir", str(self.root),
                "--target", f"{target[0]}:{target[1]}", "--epoch", str(epoch)]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", value]
        with (self.root.parent / "controllers.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
        controller = FakeController(process)
        self.controllers.append(controller)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), WAIT)
        assert line, f"the controller exited: {(self.root.parent / 'controllers.log').read_text()}"
        controller.ready = json.loads(line)
        return controller

    async def status(self) -> dict[str, Any]:
        return await request(self.root / "control.sock", {"op": "status"}, timeout=WAIT, what="test")

    async def cli(self, *args: str) -> tuple[int, str, str]:
        result = await run_local([sys.executable, "-m", "dumont", "endpoint", *args, "--dir", str(self.root)],
                                 timeout=60, what="dumont endpoint")
        return result.returncode, result.text, result.stderr.decode(errors="replace")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path / "endpoint")
    try:
        yield world
    finally:
        for controller in world.controllers:
            if controller.process.returncode is None:
                await controller.stop(signal.SIGKILL)
        await stop_endpoint_daemon(world.root)
        leftovers = processes_mentioning(str(world.root))
        assert not leftovers, f"processes of the endpoint test survived teardown: {sorted(leftovers)}"


@dataclass
class CommandLoop:
    """A user's interactive session through the endpoint that answers every line with its host's name."""

    process: asyncio.subprocess.Process
    answers: list[str] = field(default_factory=list)
    failure: str = ""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls, config: Path) -> CommandLoop:
        remote = 'while read -r line; do echo "$DUMONT_HOST $line"; done'
        process = await asyncio.create_subprocess_exec(
            *user_ssh_argv(config, remote), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        return cls(process)

    async def run(self) -> None:
        """Send a numbered line every 50 ms (a pace, not a synchronisation) and check each answer."""
        assert self.process.stdin is not None and self.process.stdout is not None
        number = 0
        try:
            while True:
                self.process.stdin.write(f"{number}\n".encode())
                await self.process.stdin.drain()
                line = (await asyncio.wait_for(self.process.stdout.readline(), WAIT)).decode()
                if not line:
                    self.failure = "the session ended"
                    return
                self.answers.append(line.strip())
                self._changed.set()
                number += 1
                await asyncio.sleep(0.05)
        except (OSError, TimeoutError) as exc:
            self.failure = f"the session broke: {exc!r}"
        finally:
            self._changed.set()

    async def wait_for_more(self, count: int) -> list[str]:
        """Wait until ``count`` more lines were answered; fail at once if the session ends."""
        goal = len(self.answers) + count
        async with asyncio.timeout(WAIT):
            while len(self.answers) < goal:
                assert not self.failure, self.failure
                self._changed.clear()
                await self._changed.wait()
        return self.answers[goal - count : goal]


async def hostname_through(config: Path) -> str:
    result = await run_local(user_ssh_argv(config, "printenv", "DUMONT_HOST"), timeout=WAIT, what="ssh")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.text.strip()


def at(host: LocalHost) -> tuple[str, int]:
    return "127.0.0.1", host.port


async def test_a_session_survives_the_controller_stopped_killed_and_restarted_and_then_a_failover(
    cloud: Cloud, world: World
) -> None:
    """Given a session running a command loop through the endpoint process on gpu-1, when the controller is
    stopped with SIGTERM, started, killed with SIGKILL and started again, then the loop never misses an answer;
    the restarted controller's failover sends new sessions to cpu-1, and the endpoint process stopped with
    `dumont endpoint stop` and started again serves cpu-1 on the same address from routes.json."""
    gpu, cpu = await hosts_with_pair_key(cloud)
    first = await world.controller(at(gpu), epoch=1)
    daemon = first.ready["daemon"]
    config = write_user_config(cloud, "config", *first.address, gpu.user)
    loop = await CommandLoop.open(config)
    running = asyncio.get_running_loop().create_task(loop.run())
    try:
        assert (await loop.wait_for_more(1))[0].startswith("gpu-1 ")

        assert await first.stop(signal.SIGTERM) == 0
        await loop.wait_for_more(5)
        second = await world.controller(at(gpu), epoch=1)
        assert second.ready["daemon"] == daemon and second.address == first.address
        await loop.wait_for_more(5)
        assert await second.stop(signal.SIGKILL) == -signal.SIGKILL
        await loop.wait_for_more(5)
        assert is_alive(daemon)

        third = await world.controller(at(gpu), epoch=1)
        assert third.ready["daemon"] == daemon
        await third.command(op="point_to", target=list(at(cpu)), epoch=2, reason="failover: gpu-1 unreachable")
        assert await hostname_through(config) == "cpu-1"
        assert all(a.startswith("gpu-1 ") for a in await loop.wait_for_more(3))  # open sessions stay until closed
        numbers = [int(a.split()[1]) for a in loop.answers]
        assert numbers == list(range(len(numbers))), "the command loop missed or repeated an answer"

        assert (await third.command(op="close_existing", reason="gpu-1 is fenced"))["closed"] == 1
        assert await asyncio.wait_for(loop.process.wait(), WAIT) == 255
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        with contextlib.suppress(ProcessLookupError):
            loop.process.kill()
        await asyncio.wait_for(loop.process.communicate(), WAIT)

    code, out, err = await world.cli("stop")
    assert (code, out.strip()) == (0, f"stopped endpoint process {daemon}"), err
    restarted = await ensure_endpoint_daemon(world.root, timeout=WAIT)
    assert restarted != daemon
    assert await hostname_through(config) == "cpu-1"  # the same address, from routes.json
    assert await third.stop(signal.SIGTERM) == 0


async def test_status_says_when_no_controller_is_heard_and_a_second_process_is_refused(world: World) -> None:
    """Given a controller that holds the endpoint and is killed, the endpoint releases the hold once the
    controller's heartbeats are overdue and says "no controller"; a second endpoint process on the directory
    refuses and names the first."""
    controller = await world.controller(("127.0.0.1", 9), epoch=1, expect_within="1")
    daemon = controller.ready["daemon"]
    await controller.command(op="hold")
    status = await world.status()
    assert (status["controller"], status["controller_present"]) == (controller.ready["pid"], True)
    assert status["pairs"]["train"]["held"] is True

    assert await controller.stop(signal.SIGKILL) == -signal.SIGKILL

    async def controller_is_gone() -> None:
        status = await world.status()
        assert not status["controller_present"] and not status["pairs"]["train"]["held"]

    await eventually(controller_is_gone, timeout=WAIT, retry_on=(AssertionError,))
    code, out, err = await world.cli("status")
    assert code == 0, err
    pid = controller.ready["pid"]
    assert re.search(rf"^no controller for \d+ s \(last: pid {pid}\); serving the last published routes$", out, re.M)
    assert re.search(r"^train: 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:9, epoch 1; 0 active, 0 parked", out, re.M), out

    second = await run_local([sys.executable, "-m", "dumont.endpoint.daemon", "--dir", str(world.root)],
                             timeout=WAIT, what="a second endpoint process")
    assert second.returncode == 1
    assert f"another endpoint process (pid {daemon}) already serves {world.root}" in second.stderr.decode()
    assert (await world.status())["pid"] == daemon

    os.kill(daemon, signal.SIGTERM)
    assert await asyncio.to_thread(wait_for_exit, daemon, WAIT)
    assert not (world.root / "control.sock").exists() and (world.root / "routes.json").exists()
    assert "got SIGTERM; stopping" in (world.root / "endpoint.log").read_text()


async def test_an_endpoint_process_that_cannot_start_is_reported_with_its_log(world: World) -> None:
    """Given a routes file that is not JSON, ensure_endpoint_daemon reports that the process exited, and why."""
    world.root.mkdir(mode=0o700)
    (world.root / "routes.json").write_text("{half a document")
    with pytest.raises(EndpointError, match=r"exited before it answered: .*routes\.json cannot be read"):
        await ensure_endpoint_daemon(world.root, timeout=WAIT)


def test_the_cli_reports_status_as_json_and_stops_the_process(tmp_path: Path) -> None:
    """`dumont endpoint status --json` shows the saved route and that no controller runs; `stop` ends the
    process, and a second `stop` says none runs."""
    from click.testing import CliRunner

    from dumont.cli import cli

    root = tmp_path / "endpoint"
    root.mkdir(mode=0o700)
    (root / "routes.json").write_text(json.dumps({"version": 1, "pairs": {"train": {
        "listen": "127.0.0.1:0", "hold_timeout": 30, "target": ["127.0.0.1", 9], "epoch": 7, "reason": "saved"}}}))
    daemon = asyncio.run(ensure_endpoint_daemon(root, timeout=WAIT))
    try:
        result = CliRunner().invoke(cli, ["endpoint", "status", "--dir", str(root), "--json"])
        assert result.exit_code == 0, result.output
        status = json.loads(result.output)
        assert (status["pid"], status["controller"], status["controller_present"]) == (daemon, None, False)
        assert status["summary"].startswith("no controller for ")
        assert (status["pairs"]["train"]["target"], status["pairs"]["train"]["epoch"]) == (["127.0.0.1", 9], 7)

        assert CliRunner().invoke(cli, ["endpoint", "stop", "--dir", str(root)]).output == \
            f"stopped endpoint process {daemon}\n"
        assert not is_alive(daemon)
        assert CliRunner().invoke(cli, ["endpoint", "stop", "--dir", str(root)]).output == \
            f"no endpoint process serves {root}\n"
    finally:
        asyncio.run(stop_endpoint_daemon(root))
        assert not processes_mentioning(str(root))
