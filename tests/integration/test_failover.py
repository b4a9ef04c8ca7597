"""The product story on the local cloud: the GPU dies, the user keeps working on the CPU, a new GPU takes over."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.slow


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in running_stack(tmp_path):
        yield s


def synced(status: dict[str, object]) -> bool:
    return status["state"] == "syncing" and status["standby"] is not None and status["last_sync"] is not None


async def test_gpu_killed_fails_over_fast_and_recovers_with_cpu_writes(stack: Stack) -> None:
    """Given a synced pair with fast probes, when the GPU host is killed, then the failover is decided within 5 s,
    the endpoint serves the CPU within 1 s of the decision with the same host key, the workspace matches the last
    manifest, files written through the endpoint on the CPU reach the new GPU, and the failed GPU is destroyed."""
    await stack.wait_for("the first pass to the new standby", synced, 120)
    gpu_id = stack.status()["primary"]["instance_id"]
    gpu = stack.host(gpu_id)
    (gpu.workspace / "model.pt").write_bytes(b"weights" * 10_000)
    first = await stack.endpoint_ssh("printenv", "DUMONT_HOST")
    assert first.last_line == gpu.name, first.stderr
    before = stack.status()["last_sync"]["seq"]
    await stack.wait_for("a pass with model.pt", lambda s: s["last_sync"]["seq"] > before + 1, 30)

    killed_at = time.time()
    await stack.cloud.pool.kill(gpu.name)
    status = await stack.wait_for("the failover", lambda s: s["state"] in ("failed_over", "recovering"), 30)
    failover = stack.events("failover")[-1]
    decided_at, switched = stack.pair.timings["decided_at"], failover["data"]["decision_to_switch_seconds"]
    assert decided_at - killed_at <= 5.0, f"detection took {decided_at - killed_at:.2f} s"
    assert switched <= 1.0, f"the endpoint switched {switched:.3f} s after the decision"

    cpu_id = status["primary"]["instance_id"]
    cpu = stack.host(cpu_id)
    write = 'printenv DUMONT_HOST; echo "written on the cpu" > "$DUMONT_WORKSPACE/cpu-notes.txt"'
    login = await stack.endpoint_ssh("sh", "-c", write)
    assert login.returncode == 0, login.stderr
    assert login.last_line == cpu.name
    agent = stack.controller.ctx.hosts.agent(stack.pair.primary)  # type: ignore[attr-defined]  # the CPU
    standby_status = await agent.status()
    assert standby_status.latest is not None
    manifest = await agent.manifest(standby_status.latest.seq)
    problems = await agent.verify_tree(manifest)
    # Exactly the user's write differs from the promoted snapshot (the new file, and its folder's mtime).
    assert problems == ["'.' differs in mtime", "'cpu-notes.txt' is not in the manifest"], problems

    status = await stack.wait_for("the recovery", synced_on_new_gpu(gpu_id), 180)
    new_gpu = stack.host(status["primary"]["instance_id"])
    assert (new_gpu.workspace / "cpu-notes.txt").read_text() == "written on the cpu\n"
    assert (new_gpu.workspace / "model.pt").read_bytes() == b"weights" * 10_000
    final = await stack.endpoint_ssh("printenv", "DUMONT_HOST")
    assert final.last_line == new_gpu.name, final.stderr
    assert status["standby"]["instance_id"] == cpu_id
    destroyed = [e for e in stack.events("instance_destroyed") if gpu_id in e["reason"]]
    assert destroyed, "the failed GPU is destroyed after the failback"
    after = status["last_sync"]["seq"] if status["last_sync"] else 0
    await stack.wait_for("replication from the new GPU", lambda s: s["last_sync"]["seq"] > after, 30)
    import os
    if os.environ.get("DUMONT_PRINT_EVENTS"):
        for e in stack.events():
            print(round(e["at"] - killed_at, 2), e["kind"], e["reason"])


def synced_on_new_gpu(old_gpu: str):  # type: ignore[no-untyped-def]
    def check(status: dict[str, object]) -> bool:
        primary = status["primary"]
        return (status["state"] == "syncing" and isinstance(primary, dict) and primary["role"] == "gpu"
                and primary["instance_id"] != old_gpu)

    return check
