"""Benchmark: restoring a workspace onto a fresh host, ours against plain rsync and a raw pipe, on real hosts.

A restore is the first pass onto a host that holds nothing (the new GPU after a failover), without the
promotion candidate a standby keeps. Two trees: the seed's 1.2 GB workspace (950 MB random model.pt, 240 MB of
CSV, a config file) and 100,000 small files. For each, in one run and on the same two hosts and SSH:
- ours: one pass of the replication engine, agents and connections already up, as in a recovery (the source's
  scan cache warm, as a promoted workspace's first scan is: it takes the hashes it was promoted with); and the
  same pass in two parallel rsyncs over separate connections;
- ``rsync -a``: a fresh ``ssh source rsync -a workspace/ target:dir/``, what a careful script would do;
- the raw pipe: ``ssh source "tar -cf - -C workspace . | ssh target tar -xf - -C dir"``, no checks at all: the
  most one SSH stream moves on this machine, the limit to compare with.
Every target directory is emptied before each run. The table shows medians and ratios. Exit 1 if ours is slower
than rsync on either tree, or below 0.7 of the raw pipe's rate on the 1.2 GB one (issue 13).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dumont.replication.engine import ReplicationPolicy, Replicator
from dumont.transport.ssh import run_local
from sync_cycle import MB, Bench, bench_hosts, build_seed, build_small_files

RSYNC_FLOOR, PIPE_FLOOR = 1.0, 0.7
STREAMS = 2


@dataclass
class Tree:
    """One tree's timings for the three ways."""

    label: str
    bytes: int = 0
    ours: list[float] = field(default_factory=list)
    ours_streams: list[float] = field(default_factory=list)  # the same pass in STREAMS parallel rsyncs
    rsync: list[float] = field(default_factory=list)
    pipe: list[float] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        """Medians, rates and ratios (a ratio above 1 means ours is faster)."""
        ours, streams, rsync, pipe = (statistics.median(x) for x in (self.ours, self.ours_streams, self.rsync,
                                                                      self.pipe))
        return {"tree": self.label, "bytes": self.bytes, "ours_s": round(ours, 3),
                f"ours_{STREAMS}_streams_s": round(streams, 3), "rsync_s": round(rsync, 3),
                "pipe_s": round(pipe, 3), "ours_mb_s": round(self.bytes / MB / ours, 1),
                "rsync_mb_s": round(self.bytes / MB / rsync, 1), "pipe_mb_s": round(self.bytes / MB / pipe, 1),
                "ours_vs_rsync": round(rsync / ours, 3), "ours_vs_pipe": round(pipe / ours, 3),
                "runs": len(self.ours), "ours_all_s": [round(x, 3) for x in self.ours]}


class Restore(Bench):
    """The sync_cycle bench's two hosts; the standby side plays the fresh host being restored."""

    async def setup(self) -> None:
        """Hosts, pairing, and a replicator that keeps no promotion candidate (a new GPU does not)."""
        await super().setup()
        self.replicator = Replicator("bench", self.primary, self.standby, ReplicationPolicy(keep_candidate=False))
        self.parallel = Replicator("bench", self.primary, self.standby,
                                   ReplicationPolicy(keep_candidate=False, streams=STREAMS))
        base = self.baseline_argv[:-1]
        remote = self.baseline_argv[-1]
        ssh = remote[remote.index("-e '") + 4: remote.index("' ")]
        self.pipe_dest = self.cpu.base / "pipe"
        self.pipe_argv = [*base, f"tar -cf - -C {self.gpu.workspace} . | {ssh} {self.cpu.user}@127.0.0.1 "
                                 f"'mkdir -p {self.pipe_dest} && tar -xf - -C {self.pipe_dest}'"]

    async def pipe(self) -> float:
        """One raw tar-over-ssh copy."""
        shutil.rmtree(self.pipe_dest, ignore_errors=True)
        started = time.perf_counter()
        result = await run_local(self.pipe_argv, timeout=3600, what="tar pipe")
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode(errors="replace"))
        return time.perf_counter() - started


async def measure(bench: Restore, tree: Tree, runs: int) -> None:
    """``runs`` rounds of the three ways, interleaved, each onto an empty target."""
    for _ in range(runs):
        bench.reset()
        seconds, _ = await bench.ours()
        tree.ours.append(seconds)
        bench.reset()
        started = time.perf_counter()
        await bench.parallel.run_pass()
        tree.ours_streams.append(time.perf_counter() - started)
        tree.rsync.append(await bench.baseline())
        tree.pipe.append(await bench.pipe())
    tree.bytes = sum(p.stat().st_size for p in bench.gpu.workspace.rglob("*") if p.is_file())


async def run(scale: float, files: int, runs: int) -> list[dict[str, object]]:
    """Both trees in turn."""
    async with bench_hosts(Restore) as bench:
        seed = Tree(build_seed(bench, scale))
        await measure(bench, seed, runs)
        small = Tree(build_small_files(bench, files))
        await measure(bench, small, runs)
        return [seed.row(), small.row()]


def print_table(rows: list[dict[str, object]]) -> None:
    """The results as an aligned table."""
    head = (f"{'tree':<20}{'ours (s)':>10}{f'{STREAMS} streams':>11}{'rsync (s)':>11}{'pipe (s)':>10}"
            f"{'ours MB/s':>11}{'rsync MB/s':>12}"
            f"{'pipe MB/s':>11}{'vs rsync':>10}{'vs pipe':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['tree']:<20}{r['ours_s']:>10.3f}{r[f'ours_{STREAMS}_streams_s']:>11.3f}{r['rsync_s']:>11.3f}{r['pipe_s']:>10.3f}{r['ours_mb_s']:>11.1f}"
              f"{r['rsync_mb_s']:>12.1f}{r['pipe_mb_s']:>11.1f}{r['ours_vs_rsync']:>10.3f}{r['ours_vs_pipe']:>9.3f}")


def main() -> None:
    """Entry point: ``python bench/restore.py [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A tiny run (1/20 of the data, 2,000 files, 1 run).")
    parser.add_argument("--runs", type=int, default=3, help="Rounds per tree (default 3).")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/restore.json"))
    args = parser.parse_args()
    scale, files, runs = (0.05, 2_000, 1) if args.quick else (1.0, 100_000, args.runs)
    rows = asyncio.run(run(scale, files, runs))
    print_table(rows)
    seed, small = rows

    def num(value: object) -> float:
        return float(value)  # type: ignore[arg-type]

    checks = {
        "seed workspace: ours at least as fast as rsync -a": num(seed["ours_vs_rsync"]) >= RSYNC_FLOOR,
        f"{small['tree']}: ours at least as fast as rsync -a": num(small["ours_vs_rsync"]) >= RSYNC_FLOOR,
        f"seed workspace: ours at least {PIPE_FLOOR} of the raw pipe": num(seed["ours_vs_pipe"]) >= PIPE_FLOOR,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "checks": checks, "quick": args.quick,
                                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    print(f"results: {args.out}")
    sys.exit(0 if all(checks.values()) or args.quick else 1)


if __name__ == "__main__":
    main()
