"""Renting the replacement GPU: limits respected, bad offers cleaned up, nothing ever left running or rented twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dumont.core.layout import ControllerLayout
from dumont.endpoint.launch import stop_endpoint_daemon
from dumont.localcloud.emulators.vast import VastEmulator
from dumont.localcloud.ready import controller_dir
from dumont.providers.vast.offers import expand_region
from tests.integration.stack import Stack, build_stack, running_stack

pytestmark = pytest.mark.slow

QUICK_RENT = {"ssh_wait_timeout": 6, "vast": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 1}}


def synced(status: dict[str, Any]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


def on_new_gpu(old_id: str) -> Callable[[dict[str, Any]], bool]:
    """The pair is synced again, on a GPU other than ``old_id``."""
    return lambda s: synced(s) and s["primary"]["instance_id"] != old_id


def stays_on_cpu(stack: Stack) -> Callable[[dict[str, Any]], bool]:
    """The pair is back to failed over after a recovery attempt, with an alert raised."""
    return lambda s: s["state"] == "failed_over" and bool(stack.events("alert"))


async def wait_destroyed(stack: Stack, instance_id: str) -> None:
    """Wait for the controller's clean-up of a failed GPU (it runs right after the failback)."""
    await stack.wait_for(f"instance {instance_id} destroyed", lambda _: any(
        e["data"].get("instance_id") == instance_id for e in stack.events("instance_destroyed")), 60)


def vast_of(stack: Stack) -> VastEmulator:
    emulator = next(e for e in stack.cloud.emulators if e.name == "vast")
    assert isinstance(emulator, VastEmulator)
    return emulator


def live_instances(stack: Stack) -> set[str]:
    """Instance ids the Vast emulator still has (not destroyed)."""
    return {str(i) for i in vast_of(stack).instances}


async def test_bad_offers_are_destroyed_and_the_next_one_is_used(tmp_path: Path) -> None:
    """Given a failed-over pair, when the first offer vanishes at create and the second never answers SSH, then both
    are cleaned up, the third is used, and the new GPU respects the price, regions and failed machine."""
    async for stack in running_stack(tmp_path, QUICK_RENT):
        await stack.wait_for("the first pass", synced, 120)
        old_id = stack.status()["primary"]["instance_id"]
        market = stack.controller.ctx.market("vast")
        old_machine = (await market.get(old_id)).machine_id
        vast = vast_of(stack)
        vast.faults.vanish_next, vast.faults.nossh_next = 1, 1
        await stack.cloud.pool.kill(stack.host(old_id).name)
        status = await stack.wait_for("the recovery", on_new_gpu(old_id), 180)
        failures = stack.events("offer_failed")
        assert len(failures) == 2, failures
        assert "not available" in failures[0]["reason"] and "SSH" in failures[1]["reason"]
        new_id = status["primary"]["instance_id"]
        new = await market.get(new_id)
        allowed = {c for r in stack.config.gpu_preferred_regions for c in expand_region(r)}
        assert new.machine_id != old_machine
        assert new.price_per_hour is not None and new.price_per_hour <= stack.config.gpu_max_price
        assert new.country in allowed
        await wait_destroyed(stack, old_id)
        assert live_instances(stack) == {new_id}, "the failed GPU and the unusable one are gone"


async def test_when_every_offer_fails_the_pair_stays_on_the_cpu(tmp_path: Path) -> None:
    """Given a failed-over pair, when no offer can be rented, then an alert is raised, the pair stays on the CPU,
    and no instance is left rented."""
    overrides = {**QUICK_RENT, "vast": {**QUICK_RENT["vast"], "max_attempts": 3},
                 "controller": {"max_recoveries_per_day": 1}}
    async for stack in running_stack(tmp_path, overrides):
        await stack.wait_for("the first pass", synced, 120)
        old_id = stack.status()["primary"]["instance_id"]
        vast_of(stack).faults.vanish_next = 1000
        await stack.cloud.pool.kill(stack.host(old_id).name)
        status = await stack.wait_for("the failed recovery", stays_on_cpu(stack), 120)
        assert status["primary"]["role"] == "cpu"
        alerts = [e for e in stack.events("alert") if e["data"]["alert"] == "recovery_failed"]
        assert alerts and "every attempt to rent a GPU failed" in alerts[0]["reason"]
        assert live_instances(stack) == {old_id}, "nothing rented during the recovery is left behind"
        ssh = await stack.endpoint_ssh("printenv", "DUMONT_HOST")
        assert ssh.last_line == stack.host(status["primary"]["instance_id"]).name


async def test_a_controller_killed_mid_recovery_resumes_with_the_same_instance(tmp_path: Path) -> None:
    """Given a recovery that has rented a GPU but not restored it, when the controller is killed (SIGKILL) and
    started again, then it resumes with that same instance, rents nothing more and leaves nothing behind."""
    os.environ["DUMONT_LOCAL_VAST_DELAY_SECONDS"] = "4"  # the new GPU boots slowly: room to kill mid-wait
    try:
        stack = await build_stack(tmp_path, {"ssh_wait_timeout": 60})
    finally:
        del os.environ["DUMONT_LOCAL_VAST_DELAY_SECONDS"]
    try:
        first = await ControllerProcess.start(stack)
        await first.wait_for(synced, 120)
        old_id = (await first.status())["primary"]["instance_id"]
        await stack.cloud.pool.kill(stack.host(old_id).name)
        status = await first.wait_for(lambda s: (s["operation"] or {}).get("step") == "waiting_ssh", 60)
        rented = set(live_instances(stack)) - {old_id}
        assert len(rented) == 1, rented
        first.kill()
        second = await ControllerProcess.start(stack)
        status = await second.wait_for(on_new_gpu(old_id), 180)
        assert {status["primary"]["instance_id"]} == rented, "the restarted controller used the same instance"
        assert live_instances(stack) == rented, "nothing more was rented and the failed GPU was destroyed"
        second.stop()
        await second.wait()
    finally:
        # The endpoint process outlives a killed controller by design: stop it as `dumont local down` does.
        await stop_endpoint_daemon(stack.config.controller.endpoint_dir or controller_dir(stack.root) / "endpoint")
        await stack.cloud.stop_emulators()
        await stack.cloud.pool.shutdown()
        assert not stack.cloud.pool.leftover_processes()


class ControllerProcess:
    """`dumont run --config` as a real separate process, driven through its API."""

    def __init__(self, stack: Stack, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.stack = stack
        self.proc = proc
        self.log = log
        host, port = stack.config.controller.api_listen.rsplit(":", 1)
        self.url = f"http://{host}:{port}"

    @classmethod
    async def start(cls, stack: Stack) -> ControllerProcess:
        log = stack.root / f"controller-{len(list(stack.root.glob('controller-*.log')))}.log"
        with log.open("wb") as out:  # kept for a failure's message: what the controller said it was doing
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dumont", "run", "--config", str(stack.config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
        process = cls(stack, proc, log)
        ready = ControllerLayout(stack.config.state_dir).ready
        await process.wait_until(lambda: ready.exists() and json.loads(ready.read_text())["pid"] == proc.pid, 60)
        return process

    def token(self) -> str:
        return ControllerLayout(self.stack.config.state_dir).api_token.read_text().strip()

    async def status(self) -> dict[str, Any]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {self.token()}"}) as http:
            response = await http.get(f"{self.url}/api/status", timeout=10)
        pairs: list[dict[str, Any]] = response.json()["pairs"]
        return pairs[0]

    async def wait_until(self, check: Any, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            assert self.proc.returncode is None, f"the controller exited with {self.proc.returncode}"
            assert loop.time() < deadline, "the controller did not get ready in time"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 0.2)  # returns early only if it died

    async def wait_for(self, predicate: Any, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.status()
            if predicate(status):
                return status
            assert self.proc.returncode is None, f"the controller exited with {self.proc.returncode}"
            assert loop.time() < deadline, f"timed out; status: {status}\n{await self.recent_events()}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 0.5)  # returns early only if it died

    async def recent_events(self) -> str:
        """The newest events and the tail of the controller's log, for a failure's message."""
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {self.token()}"}) as http:
            response = await http.get(f"{self.url}/api/events", params={"last": 40}, timeout=10)
        events = "\n".join(f"{e['at']:.1f} {e['kind']}: {e['reason']}" for e in response.json()["events"])
        return f"events:\n{events}\nlog:\n{self.log.read_text(errors='replace')[-4000:]}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        return await asyncio.wait_for(self.proc.wait(), 60)


async def test_pausing_a_recovery_stops_it_and_resuming_continues_with_the_same_instance(tmp_path: Path) -> None:
    """Given a recovery waiting for its new GPU, when the pair is paused, the recovery stops (its instance is kept);
    when resumed, it continues with that instance and rents nothing more."""
    os.environ["DUMONT_LOCAL_VAST_DELAY_SECONDS"] = "3"  # the new GPU boots slowly: room to pause mid-wait
    try:
        generator = running_stack(tmp_path, {"ssh_wait_timeout": 60})
        stack = await generator.__anext__()
    finally:
        del os.environ["DUMONT_LOCAL_VAST_DELAY_SECONDS"]
    try:
        await stack.wait_for("the first pass", synced, 120)
        old_id = stack.status()["primary"]["instance_id"]
        await stack.cloud.pool.kill(stack.host(old_id).name)
        await stack.wait_for("the new GPU rented", lambda s: (s["operation"] or {}).get("step") == "waiting_ssh", 60)
        rented = live_instances(stack) - {old_id}
        stack.controller.ctx.store.add_intent("main", "pause")
        stack.controller.wake()
        await stack.wait_for("paused", lambda s: s["state"] == "paused" and s["operation"] is None, 30)
        stack.controller.ctx.store.add_intent("main", "resume")
        stack.controller.wake()
        status = await stack.wait_for("the resumed recovery", on_new_gpu(old_id), 120)
        assert {status["primary"]["instance_id"]} == rented
        await wait_destroyed(stack, old_id)
        assert live_instances(stack) == rented
        assert any(e["kind"] == "recovery_resumed" for e in stack.events())
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await generator.__anext__()
