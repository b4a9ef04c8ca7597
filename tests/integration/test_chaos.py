"""A short chaos campaign on the real local cloud: the controller as its own process (SIGKILLed and restarted),
faults that combine, a writer through the endpoint, and the checker over what was seen. `make chaos` runs the
long ones (an hour on one pair, twenty minutes on three); the checker's rules are tested with planted
violations in tests/unit/chaos/test_checker.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dumont.chaos.campaign import SUPPORTED, ChaosOptions, run_chaos
from dumont.chaos.schedule import plan

pytestmark = pytest.mark.serial  # its bounds are promises in seconds: run alone

log = logging.getLogger("tests.chaos")

# A seed whose 60 s hold a kill, two outbids, a blackhole, a changed host key, a standby preemption, a controller
# kill in the middle of a failover, a degraded link and an API error burst (the plan is printed on failure).
SEED = 2292
SECONDS = 60.0
GAP = 8.0


async def test_a_short_campaign_of_combined_faults_keeps_every_promise(tmp_path: Path) -> None:
    planned = plan(SEED, seconds=SECONDS, pairs=["main"], mean_gap=GAP, kinds=SUPPORTED)
    assert {"gpu_kill", "gpu_outbid", "gpu_blackhole", "host_key_change", "standby_preempt", "link_degrade",
            "controller_kill", "api_errors"} <= {f.kind for f in planned}
    result = await run_chaos(tmp_path, ChaosOptions(seed=SEED, minutes=SECONDS / 60, mean_gap=GAP, say=log.info))
    report = "\n".join([*(f.describe() for f in result.plan), result.table(),
                        *(v.describe(SEED) for v in result.violations)])
    assert result.ok, report
    history = result.histories["main"]
    assert len(history.faults) >= 4, report  # the rest found nothing to hit (the GPU was already gone)
    assert history.failovers, report
    assert len(history.records) > 100 and history.final_records, report
    assert history.records_checked > 2 * len(history.final_records), report  # the snapshots' copies too
