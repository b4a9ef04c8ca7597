"""Real instances on the local cloud: bare images, keys the controller must attach, VMs that never come up.

Every host here boots from the image a real instance has (Vast pytorch: no rsync, python under /opt/conda,
root only; GCP debian-12: no rsync, root refused), so each test meets what a real cloud would do to Dumont.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

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


async def test_a_gpu_that_holds_only_the_users_key_is_readied_and_protected(stack: Stack) -> None:
    """Given a GPU rented as a person does (only the account's key), when `dumont run` adopts it, then it attaches
    its key through the Vast API, installs rsync on both bare hosts, finds the conda Python, and syncs."""
    status = await stack.wait_for("the first pass", synced, 180)
    vast = emulator(stack, "vast")
    gpu = vast.instances[int(status["primary"]["instance_id"])]
    controller_key = stack.controller.ctx.controller_public_key().split()[1]
    assert any(controller_key in key for key in gpu.keys.values()), "the controller's key was attached by the API"
    readied = {e["data"]["host"]: e["data"] for e in stack.events("host_readied")}
    gpu_alias, cpu_alias = status["primary"]["alias"], status["standby"]["alias"]
    assert readied[gpu_alias]["installed"] == ["rsync"] and readied[gpu_alias]["python"] == "/opt/conda/bin/python3"
    assert readied[cpu_alias]["installed"] == ["rsync"]


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
    assert login.stdout.strip() == "dumont"


async def test_a_standby_that_never_answers_is_deleted_before_the_next_attempt(stack: Stack) -> None:
    """Given standby creation that fails five times in a row (VMs whose SSH never answers), at the end the only
    VMs that exist are the healthy one, listed with google-cloud-compute, and the failure was alerted once."""
    await stack.stop_controller()
    await fault(stack, "gcp", "nossh", {"next": 5})
    await stack.start_controller()
    await stack.wait_for("a standby at last", synced, 240)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    client = compute_v1.InstancesClient(credentials=AnonymousCredentials(), transport="rest",  # type: ignore[no-untyped-call]
                                        client_options=ClientOptions(api_endpoint=stack.cloud.urls["gcp_url"]))
    names = await asyncio.to_thread(lambda: [vm.name for vm in client.list(project="dumont-local", zone="local-a")])
    assert names == [stack.status()["standby"]["instance_id"]]
    assert len(stack.events("standby_deleted")) == 5
    alerts = [e for e in stack.events("alert") if e["data"].get("alert") == "standby_replace_failed"]
    assert len(alerts) == 1


async def test_rentals_that_never_answer_leave_nothing_rented(stack: Stack) -> None:
    """Given a recovery whose first five rentals never answer SSH, each is destroyed before the next, the pair
    recovers with the sixth, and the Vast account holds exactly the pair's two machines' GPU."""
    await stack.wait_for("the first pass", synced, 180)
    await fault(stack, "vast", "nossh", {"next": 5})
    gpu = stack.host(stack.status()["primary"]["instance_id"])
    await stack.cloud.pool.kill(gpu.name)
    status = await stack.wait_for("the recovery", lambda s: s["state"] == "syncing"
                                  and s["primary"]["instance_id"] != gpu.instance_id, 300)
    vast = emulator(stack, "vast")
    assert sorted(vast.instances) == [int(status["primary"]["instance_id"])]
    assert len([e for e in stack.events("instance_destroyed")]) >= 6  # five unusable rentals and the dead GPU
    alerts = [e for e in stack.events("alert") if e["data"].get("alert") == "recovery_failed"]
    assert len(alerts) <= 1


async def test_an_unpublished_image_is_refused_quickly_with_its_name(tmp_path: Path) -> None:
    """Given a gpu_image that is not published, a rental fails at once naming the image, not after the wait."""
    async for stack in running_stack(tmp_path, {**QUICK_FAILURES, "gpu_image": "pytorch/pytorch:9.9.9-nope",
                                                "vast": {"max_attempts": 1, "launch_timeout_seconds": 600}}):
        await stack.wait_for("the first pass", synced, 180)
        gpu = stack.host(stack.status()["primary"]["instance_id"])
        killed = time.monotonic()
        await stack.cloud.pool.kill(gpu.name)
        await stack.wait_for("the failed rental", lambda _, s=stack: bool(s.events("offer_failed")), 60)
        assert time.monotonic() - killed < 30
        reason = stack.events("offer_failed")[0]["reason"]
        assert "pytorch/pytorch:9.9.9-nope" in reason


async def test_a_standby_stopped_and_started_on_a_new_address_is_followed(stack: Stack) -> None:
    """Given a synced pair, when the standby VM is stopped and started (a new ephemeral address), replication
    resumes there with no manual step and no host-key warning."""
    status = await stack.wait_for("the first pass", synced, 180)
    old = (status["standby"]["ssh_host"], status["standby"]["ssh_port"])
    gcp = emulator(stack, "gcp")
    name = status["standby"]["instance_id"]
    from dumont.providers.gcp.provider import GcpStandbyCloud

    cloud = stack.controller.ctx.standby_cloud
    assert isinstance(cloud, GcpStandbyCloud) and gcp is not None
    await cloud.stop(name)
    await cloud.start(name)
    seq = stack.status()["last_sync"]["seq"]
    moved = await stack.wait_for("a pass at the new address", lambda s: s["state"] == "syncing"
                                 and s["last_sync"]["seq"] > seq + 1, 120)
    assert (moved["standby"]["ssh_host"], moved["standby"]["ssh_port"]) != old
    assert moved["standby"]["instance_id"] == name, "the same VM, not a replacement"
    assert not stack.events("standby_created")[1:], "no new VM was created"
