"""The replication campaign (issue 14): the primary killed at random instants of 100+ passes over a workspace
that changes between them, every retained snapshot checked after each kill; prints the campaign's table.

Usage: ``python bench/replication_campaign.py [--kills 100] [--seed N] [--out FILE.json]``.
Exits 1 when any snapshot was ever found damaged (each problem names the seed and the round to replay it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from dumont.chaos.replication import CampaignResult, ChangingWorkspace, run_campaign
from dumont.replication.engine import ReplicationPolicy, Replicator
from sync_cycle import Bench, bench_hosts


async def campaign(kills: int, seed: int) -> CampaignResult:
    """One campaign on fresh hosts; passes slowed to 10 MB/s so a kill lands inside them."""
    async with bench_hosts(Bench) as bench:
        workspace = ChangingWorkspace(bench.gpu.workspace, seed)
        replicator = Replicator("bench", bench.primary, bench.standby,
                                ReplicationPolicy(bandwidth_limit_kbps=10_000))

        def progress(result: CampaignResult, round_no: int) -> None:
            print(f"round {round_no}: {result.kills} kills mid-pass, {result.snapshot_checks} snapshot checks, "
                  f"{len(result.problems)} problems", file=sys.stderr)

        return await run_campaign(bench.pool, primary=bench.gpu.name, replicator=replicator, standby=bench.standby,
                                  snapshots_dir=bench.cpu.data_dir / "snapshots", workspace=workspace,
                                  kills=kills, seed=seed, progress=progress)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="Kills that must land inside a pass (default 100).")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="The campaign's seed (default: the time).")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/replication_campaign.json"))
    args = parser.parse_args()
    result = asyncio.run(campaign(args.kills, args.seed))
    print(result.table())
    for problem in result.problems:
        print(f"PROBLEM {problem}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**asdict(result), "ok": result.ok,
                                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
