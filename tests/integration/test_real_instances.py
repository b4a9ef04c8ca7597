"""Real instances on the local cloud: bare images, keys the controller must attach, VMs that never come up.

Every host here boots from the image a real instance has (Vast pytorch: no rsync, python under /opt/conda,
root only; GCP debian-12: no rsync, root refused), so each test meets what a real cloud would do to Dumont.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dumont.config import load_config, to_toml
from dumont.drill.stack import build_stack, tear_down
from dumont.transport.ssh import run_local
from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.slow

QUICK_FAILURES = {"ssh_wait_timeout": 4, "vast": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.5},
                  "controller": {"max_standby_attempts_per_hour": 10}}


def synced(status: dict[str, Any]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


def emulator(stack: Stack, name: str) -> Any:
    return next(e for e in stack.cloud.emulators if e.name == name)


async def fault(stack: Stack, name: str, action: str, body: dict[str, Any]) -> None:
    """Arm a fault of the Vast or GCP emulator through its own fault route."""
    url = stack.cloud.urls[f"{name}_url"]
    key = (stack.root / "vast_api_key").read_text().strip()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        response = await client.post(f"/_dumont/faults/{action}", json=body)
    assert response.status_code == 200, response.text


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in running_stack(tmp_path, QUICK_FAILURES):
        yield s


@contextlib.asynccontextmanager
async def faulty_stack(tmp_path: Path, emulator_name: str, action: str, body: dict[str, Any]) -> AsyncIterator[Stack]:
    """A stack whose emulator has a fault armed before the controller first starts."""
    stack = await build_stack(tmp_path, QUICK_FAILURES)
    try:
        await fault(stack, emulator_name, action, body)
        await stack.start_controller()
        yield stack
    finally:
        leftovers = await tear_down(stack)
        assert not leftovers, f"processes of the local cloud survived teardown: {sorted(leftovers)}"


async def test_a_gpu_that_holds_only_the_users_key_is_readied_and_protected(stack: Stack) -> None:
    """Given a GPU rented as a person does (only the account's key), when `dumont run` adopts it, then it attaches
    its key through the Vast API, installs rsync on both bare hosts, finds the conda Python, and syncs."""
    status = await stack.wait_for("the first pass", synced, 180)
    vast = emulator(stack, "vast")
    gpu = vast.instances[int(status["primary"]["instance_id"])]
    controller_key = stack.controller.ctx.controller_public_key().split()[1]
    assert any(controller_key in key for key in gpu.keys.values()), "the controller's key was attached by the API"
    readied: dict[str, dict[str, Any]] = {}
    for event in stack.events("host_readied"):
        readied.setdefault(event["data"]["host"], event["data"])  # the first time each host was readied
    gpu_alias, cpu_alias = status["primary"]["alias"], status["standby"]["alias"]
    assert readied[gpu_alias]["installed"] == ["rsync"] and readied[gpu_alias]["python"] == "/opt/conda/bin/python3"
    # Google's image has no rsync either: the standby's startup script installed it as root while it booted.
    assert readied[cpu_alias]["user"] == "dumont" and readied[cpu_alias]["rsync"].endswith("/rsync")
    cpu = stack.host(status["standby"]["instance_id"])
    assert "rsync" in cpu.files.installed.read_text().split()


async def test_the_standby_refuses_root_and_replicates_as_its_own_user(stack: Stack) -> None:
    """On the GCP standby root cannot log in; replication runs as the VM's metadata user, through the endpoint
    the user reaches the CPU after a failover as that user, with no host-key warning."""
    status = await stack.wait_for("the first pass", synced, 180)
    standby = status["standby"]
    assert standby["ssh_user"] == "dumont"
    key = stack.root / "user_key"
    refused = await run_local(["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                               "-o", "UserKnownHostsFile=/dev/null", "-p", str(standby["ssh_port"]),
                               f"root@{standby['ssh_host']}", "true"], timeout=30, what="ssh as root")
    assert refused.returncode == 255 and b"Permission denied" in refused.stderr
    stack.controller.ctx.store.add_intent("main", "failover")
    stack.controller.wake()
    await stack.wait_for("the failover", lambda s: s["state"] in ("failed_over", "recovering"), 60)
    login = await stack.endpoint_ssh("sh", "-c", "echo $USER")
    assert login.returncode == 0, login.stderr
    assert login.last_line == "dumont"


async def test_a_standby_that_never_answers_is_deleted_before_the_next_attempt(tmp_path: Path) -> None:
    """Given standby creation that fails three times in a row (VMs whose SSH never answers), at the end the only
    VMs that exist are the healthy one, listed with google-cloud-compute, and the failure was alerted once."""
    async with faulty_stack(tmp_path, "gcp", "nossh", {"next": 3}) as stack:
        await stack.wait_for("a standby at last", synced, 240)
        await _only_the_healthy_standby_is_left(stack)


async def _only_the_healthy_standby_is_left(stack: Stack) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    client = compute_v1.InstancesClient(credentials=AnonymousCredentials(), transport="rest",  # type: ignore[no-untyped-call]
                                        client_options=ClientOptions(api_endpoint=stack.cloud.urls["gcp_url"]))
    names = await asyncio.to_thread(lambda: [vm.name for vm in client.list(project="dumont-local", zone="local-a")])
    assert names == [stack.status()["standby"]["instance_id"]]
    assert len(stack.events("standby_deleted")) == 3
    alerts = [e for e in stack.events("alert") if e["data"].get("alert") == "standby_replace_failed"]
    assert len(alerts) == 1


async def test_rentals_that_never_answer_leave_nothing_rented(stack: Stack) -> None:
    """Given a recovery whose first three rentals never answer SSH, each is destroyed before the next, the pair
    recovers with the fourth, and the Vast account holds exactly the pair's two machines' GPU."""
    await stack.wait_for("the first pass", synced, 180)
    await fault(stack, "vast", "nossh", {"next": 3})
    gpu = stack.host(stack.status()["primary"]["instance_id"])
    await stack.cloud.pool.kill(gpu.name)
    status = await stack.wait_for("the recovery and its clean-up", lambda s: s["state"] == "syncing"
                                  and s["primary"]["role"] == "gpu" and s["primary"]["instance_id"] != gpu.instance_id
                                  and (s["operation"] is None or s["operation"]["finished"]), 300)
    vast = emulator(stack, "vast")
    assert sorted(vast.instances) == [int(status["primary"]["instance_id"])]
    assert len([e for e in stack.events("instance_destroyed")]) >= 4  # three unusable rentals and the dead GPU
    alerts = [e for e in stack.events("alert") if e["data"].get("alert") == "recovery_failed"]
    assert len(alerts) <= 1


async def test_an_unpublished_image_is_refused_quickly_with_its_name(stack: Stack) -> None:
    """Given a gpu_image the market does not have (changed after the pair was adopted: doctor refuses it before),
    a rental fails at once with an error naming the image, not after the launch wait."""
    await stack.wait_for("the first pass", synced, 180)
    await stack.stop_controller()
    data = tomllib.loads(stack.config_path.read_text())
    data["gpu_image"] = "pytorch/pytorch:9.9.9-nope"
    data["vast"].update(max_attempts=1, launch_timeout_seconds=600)
    stack.config_path.write_text(to_toml(data))
    stack.config = load_config(stack.config_path)
    await stack.start_controller()
    gpu = stack.host(stack.status()["primary"]["instance_id"])
    killed = time.monotonic()
    await stack.cloud.pool.kill(gpu.name)
    await stack.wait_for("the failed rental", lambda _: bool(stack.events("offer_failed")), 60)
    assert time.monotonic() - killed < 30
    reason = stack.events("offer_failed")[0]["reason"]
    assert "pytorch/pytorch:9.9.9-nope" in reason and "will never run" in reason
    vast = emulator(stack, "vast")
    assert all(i.image != "pytorch/pytorch:9.9.9-nope" for i in vast.instances.values()), "the rental was destroyed"


async def test_a_standby_stopped_and_started_on_a_new_address_is_followed(stack: Stack) -> None:
    """Given a synced pair, when the standby VM is stopped and started (a new ephemeral address), replication
    resumes there with no manual step and no host-key warning."""
    status = await stack.wait_for("the first pass", synced, 180)
    old = (status["standby"]["ssh_host"], status["standby"]["ssh_port"])
    gcp = emulator(stack, "gcp")
    name = status["standby"]["instance_id"]
    from dumont.providers.gcp.provider import GcpStandbyCloud

    cloud = stack.controller.ctx.cloud("gcp")
    assert isinstance(cloud, GcpStandbyCloud) and gcp is not None
    await cloud.stop(name)
    await cloud.start(name)
    seq = stack.status()["last_sync"]["seq"]
    moved = await stack.wait_for("a pass at the new address", lambda s: s["state"] == "syncing"
                                 and s["last_sync"]["seq"] > seq + 1, 120)
    assert (moved["standby"]["ssh_host"], moved["standby"]["ssh_port"]) != old
    assert moved["standby"]["instance_id"] == name, "the same VM, not a replacement"
    assert not stack.events("standby_created")[1:], "no new VM was created"
