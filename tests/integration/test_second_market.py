"""A GPU market of the tests' own (tests/plugins/spotlab.py) rents beside Vast, on real hosts, through the registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dumont.providers.registry import unregister
from tests.integration.stack import Stack, running_stack
from tests.plugins import spotlab

pytestmark = pytest.mark.slow


def recovered_on(provider: str, old: str) -> Any:
    def check(status: dict[str, Any]) -> bool:
        primary = status["primary"]
        return (status["state"] == "syncing" and primary["role"] == "gpu" and primary["provider"] == provider
                and primary["instance_id"] != old and (status["operation"] or {}).get("finished", True))
    return check


@pytest.fixture
def market() -> Iterator[None]:
    spotlab.install()
    spotlab.OPENED.clear()
    yield
    unregister(spotlab.NAME)


async def test_a_recovery_rents_on_the_plugin_market_and_each_failed_gpu_goes_back_to_its_own(
        tmp_path: Path, market: None) -> None:
    overrides = {"gpu_markets": ["spotlab", "vast"],
                 "spotlab": {"state_dir": str(tmp_path / "spotlab"), "price_per_hour": 0.05}}
    async for stack in running_stack(tmp_path / "stack", overrides):
        status = await stack.wait_for("the first pass", lambda s: s["state"] == "syncing"
                                      and s["last_sync"] is not None, 180)
        vast_gpu = status["primary"]["instance_id"]
        await stack.cloud.pool.kill(stack.host(vast_gpu).name)
        status = await stack.wait_for("a spotlab GPU", recovered_on("spotlab", vast_gpu), 180)
        vast = next(e for e in stack.cloud.emulators if e.name == "vast")
        assert int(vast_gpu) not in vast.instances, "the failed Vast GPU was destroyed through Vast"
        lab = spotlab.OPENED[-1]
        first = status["primary"]["instance_id"]
        await lab.pool.kill(f"spotlab-{first}")
        await stack.wait_for("another spotlab GPU", recovered_on("spotlab", first), 180)
        assert lab.destroyed == [first], "the failed spotlab GPU was destroyed through spotlab"
        _no_leftovers(stack, lab)
    assert not spotlab.OPENED[-1].pool.leftover_processes(), "the market's hosts went with the controller"


def _no_leftovers(stack: Stack, lab: spotlab.Spotlab) -> None:
    held = {h.instance_id for h in lab.pool.hosts()}
    assert held == {stack.status()["primary"]["instance_id"]}, held
