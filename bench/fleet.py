"""Benchmark: one controller carrying a fleet of pairs on the local cloud (issue 15, SPEC §7).

For each profile (the fast one, and the seed's intervals), ``--pairs`` pairs are protected by one ``dumont run``
process (a process of its own, so that its CPU and memory are its alone). Once every pair is protected, a window of
steady state measures the controller's CPU per pair per tick, its memory, and the API calls per minute it makes to
the Vast and GCP emulators. Then ``--kill`` GPUs are killed at once (one Vast host machine going down) and, once
all pairs are protected again, ``--kill`` standbys are preempted at once (one GCP zone): detection p50/p95 (kill
to the failover's decision, preemption to the pair noticing), the p95 of kill to the endpoint switched (the
failovers of one tick run side by side, so this one shows what they cost each other on a loaded machine), the time
until every pair is protected again, rentals per recovery (never two), and what is left running at the end
(nothing beyond what the pairs hold). A single pair goes through the same GPU kill at the same profile first, five
times: the fleet's detection p95 is judged against its p95.

Usage: ``python bench/fleet.py [--pairs 50] [--kill 10] [--profiles fast,seed] [--out FILE.json]``.
Exit 1 if a killed GPU was not failed over, a recovery rented twice, an instance leaked, or the fleet's detection
p95 is over twice the single pair's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import httpx

from dumont.chaos.process import ControllerProcess
from dumont.drill.profiles import FAST, SEED
from dumont.drill.stack import Stack, add_pairs, build_stack, tear_down
from dumont.localcloud.emulators.gcp import GcpEmulator
from dumont.localcloud.emulators.gcp_project import DEFAULT_LIMITS
from dumont.localcloud.emulators.vast import VastEmulator
from dumont.localcloud.ready import LOCAL_PROJECT
from dumont.store.rows import EventRow
from dumont.store.sqlite import Store

PROFILES = {"fast": FAST, "seed": SEED}
DETECTION_FACTOR = 2.0  # the fleet's detection p95 may be at most this many times the single pair's
SINGLE_KILLS = 5  # kills of the single pair: its detection depends on where in a tick the kill lands
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _names(count: int) -> list[str]:
    return ["main", *(f"pair-{n}" for n in range(2, count + 1))]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


class Fleet:
    """A stack of ``names`` pairs and its controller process."""

    def __init__(self, stack: Stack, controller: ControllerProcess, names: list[str]) -> None:
        self.stack, self.controller, self.names = stack, controller, names
        emulators = {e.name: e for e in stack.cloud.emulators}
        vast, gcp = emulators["vast"], emulators["gcp"]
        assert isinstance(vast, VastEmulator) and isinstance(gcp, GcpEmulator)
        self.vast, self.gcp = vast, gcp
        self.store = Store(stack.config.state_dir / "dumont.db")
        self._events_read: list[EventRow] = []

    @property
    def pid(self) -> int:
        assert self.controller.proc is not None
        return self.controller.proc.pid

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in (await self.controller.get("/api/status"))["pairs"]}

    async def ticks(self) -> int:
        return int((await self.controller.get("/api/status")).get("controller", {}).get("ticks", 0))

    def api_calls(self) -> int:
        return sum(self.vast.requests.values()) + sum(self.gcp.requests.values())

    async def until_protected(self, what: str, timeout: float) -> float:
        """Wait until every pair serves from a GPU with a synced standby and no operation running; seconds."""
        started = time.monotonic()

        async def protected() -> bool:
            found = await self.statuses()
            return len(found) == len(self.names) and all(map(_protected, found.values()))

        await _until(what, protected, timeout)
        return time.monotonic() - started

    async def until_every(self, what: str, seen: Callable[[], Collection[str]], victims: list[str],
                          timeout: float) -> None:
        """Wait until ``seen()`` names every victim."""

        async def all_seen() -> bool:
            return set(victims) <= set(seen())

        await _until(what, all_seen, timeout)

    def _events(self) -> list[EventRow]:
        """Every event so far, read page by page from where the last read ended (this process also runs the
        emulators: reading the whole log at every poll held their answers back past the probes' timeout)."""
        while page := self.store.events(after=self._events_read[-1].id if self._events_read else 0, limit=5000):
            self._events_read += page
        return self._events_read

    def first_after(self, since: float, matches: Callable[[EventRow], bool]) -> dict[str, EventRow]:
        """Each pair's first event after ``since`` (wall clock) that ``matches``, by pair."""
        first: dict[str, EventRow] = {}
        for event in self._events():
            if event.pair is not None and event.at > since and matches(event):
                first.setdefault(event.pair, event)
        return first

    def gpu_rentals_after(self, since: float) -> dict[str, int]:
        """GPUs each pair rented after ``since`` (the store's own record of every instance it created)."""
        rows = self.store._rows("SELECT pair, COUNT(*) FROM hosts WHERE role = 'gpu' AND created_at > ? "
                                "GROUP BY pair", (since,))
        return {str(pair): int(count) for pair, count in rows}

    async def leaked(self) -> list[str]:
        """Instances alive in the clouds that no pair holds as its primary or standby."""
        held = {str(s[role]["instance_id"]) for s in (await self.statuses()).values()
                for role in ("primary", "standby") if s.get(role)}
        alive = {str(i) for i in self.vast.instances}
        alive |= {vm.name for vm in self.gcp.vms.values() if self.gcp._status(vm) is not None}  # stopped: its disk
        return sorted(alive - held)


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll ``check`` (the controller runs in a process of its own: nothing here announces its progress)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached after {timeout:g} s")
        await asyncio.sleep(0.5)


def _protected(status: dict[str, Any]) -> bool:
    operation = status.get("operation")
    return (status["state"] == "syncing" and status["primary"]["role"] == "gpu" and status["standby"] is not None
            and status["last_sync"] is not None and (operation is None or operation.get("finished", True)))


async def _fleet(root: Path, profile: dict[str, Any], count: int) -> Fleet:
    names = _names(count)
    stack = await build_stack(root, {"auto_recovery": True, "health": {"fresh_login_every": 5},
                                     "controller": {"max_recoveries_per_day": 1000}}, profile)
    # A new GCP project may hold 8 external addresses per region, as the emulator's does: a fleet asks for more,
    # as its operator would (50 standbys stopped at 8 in a first run of this bench).
    limits = {metric: limit * max(1, count) for metric, limit in DEFAULT_LIMITS.items()}
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{stack.cloud.urls['gcp_url']}/_dumont/projects/{LOCAL_PROJECT}/quotas",
                                 json=limits, timeout=10)
        answer.raise_for_status()
    await add_pairs(stack, names[1:])
    cfg = stack.config
    controller = ControllerProcess(stack.config_path, cfg.state_dir, cfg.controller.api_listen, root / "controller.log")
    await controller.start(timeout=120)
    return Fleet(stack, controller, names)


async def _close(fleet: Fleet) -> list[int]:
    await fleet.controller.stop()
    fleet.store.close()
    return sorted(await tear_down(fleet.stack))


def _failover(event: EventRow) -> bool:
    return event.kind == "failover"


def _standby_lost(event: EventRow) -> bool:
    return event.kind == "state" and event.data.get("to") == "standby_lost"


async def kill_gpus(fleet: Fleet, victims: list[str], timeout: float) -> dict[str, Any]:
    """Kill the victims' GPUs at once; detection and the time until every pair is protected again."""
    statuses = await fleet.statuses()
    hosts = [fleet.stack.host(str(statuses[v]["primary"]["instance_id"])) for v in victims]
    killed_at = time.time()
    await asyncio.gather(*(fleet.stack.cloud.pool.kill(h.name) for h in hosts))
    with contextlib.suppress(TimeoutError):  # a GPU not failed over is counted below, not waited for forever
        await fleet.until_every("the failovers", lambda: fleet.first_after(killed_at, _failover), victims, timeout)
    await fleet.until_protected("after the GPU kills", timeout)
    reprotected = time.time() - killed_at
    failovers = fleet.first_after(killed_at, _failover)
    switched = [failovers[v].at - killed_at for v in victims if v in failovers]  # the user's endpoint moved
    detection = [failovers[v].at - float(failovers[v].data["decision_to_switch_seconds"]) - killed_at
                 for v in victims if v in failovers]  # the failure noticed
    rentals = fleet.gpu_rentals_after(killed_at)
    return {"killed": len(victims), "failed_over": sum(v in failovers for v in victims),
            "detection_s": [round(d, 3) for d in detection],
            "detection_p50_s": round(statistics.median(detection), 3) if detection else None,
            "detection_p95_s": round(_p95(detection), 3) if detection else None,
            "switched_s": [round(d, 3) for d in switched],
            "switched_p95_s": round(_p95(switched), 3) if switched else None,
            "reprotected_s": round(reprotected, 1),
            "double_rentals": sum(1 for v in victims if rentals.get(v, 0) > 1),
            "rentals_by_others": sum(n for p, n in rentals.items() if p not in victims)}


async def preempt_standbys(fleet: Fleet, victims: list[str], timeout: float) -> dict[str, Any]:
    """Preempt the victims' standbys at once; when each pair noticed, and when every pair was protected again."""
    statuses = await fleet.statuses()
    hosts = [fleet.stack.host(str(statuses[v]["standby"]["instance_id"])) for v in victims]
    preempted_at = time.time()
    await asyncio.gather(*(fleet.gcp.fault("preempt", h) for h in hosts))
    with contextlib.suppress(TimeoutError):
        await fleet.until_every("the preemptions noticed", lambda: fleet.first_after(preempted_at, _standby_lost),
                                victims, timeout)
    await fleet.until_protected("after the preemptions", timeout)
    reprotected = time.time() - preempted_at
    noticed = fleet.first_after(preempted_at, _standby_lost)
    detection = [noticed[v].at - preempted_at for v in victims if v in noticed]
    return {"preempted": len(victims), "noticed": len(detection),
            "detection_p50_s": round(statistics.median(detection), 3) if detection else None,
            "detection_p95_s": round(_p95(detection), 3) if detection else None,
            "reprotected_s": round(reprotected, 1)}


async def steady(fleet: Fleet, seconds: float) -> dict[str, Any]:
    """The controller at rest over ``seconds``: CPU per pair per tick, memory, API calls per minute."""
    cpu, ticks, calls, started = _cpu_seconds(fleet.pid), await fleet.ticks(), fleet.api_calls(), time.monotonic()
    await asyncio.sleep(seconds)  # the measuring window: these figures are rates over it
    elapsed = time.monotonic() - started
    cpu, ticks, calls = _cpu_seconds(fleet.pid) - cpu, await fleet.ticks() - ticks, fleet.api_calls() - calls
    pairs = len(fleet.names)
    return {"window_s": round(elapsed, 1), "ticks": ticks, "cpu_s": round(cpu, 2),
            "cpu_share": round(cpu / elapsed, 3),
            "cpu_ms_per_pair_tick": round(1000 * cpu / max(ticks, 1) / pairs, 2),
            "rss_mb": round(_rss_mb(fleet.pid), 1), "api_calls_per_min": round(60 * calls / elapsed, 1)}


async def one_profile(name: str, pairs: int, kill: int, root: Path, rng: random.Random) -> dict[str, Any]:
    profile = PROFILES[name]
    interval = float(profile["health_check_interval"])
    settle = max(300.0, 10.0 * pairs) + 30 * interval  # a bound to report against, far above what is measured
    single = await _fleet(root / "single", profile, 1)
    try:
        await single.until_protected("the single pair", settle)
        kills = [await kill_gpus(single, ["main"], settle) for _ in range(SINGLE_KILLS)]
    finally:
        single_left = await _close(single)
    detection = [d for k in kills for d in k["detection_s"]]
    switched = [d for k in kills for d in k["switched_s"]]
    baseline = {**kills[-1], "killed": SINGLE_KILLS, "failed_over": sum(k["failed_over"] for k in kills),
                "detection_s": detection, "detection_p50_s": round(statistics.median(detection), 3),
                "detection_p95_s": round(_p95(detection), 3), "switched_s": switched,
                "switched_p95_s": round(_p95(switched), 3)}
    print(f"{name}: one pair: detection {baseline['detection_p95_s']} s", file=sys.stderr, flush=True)
    fleet = await _fleet(root / "fleet", profile, pairs)
    try:
        ready = await fleet.until_protected("the fleet's start", settle)
        print(f"{name}: {pairs} pairs protected after {ready:.0f} s", file=sys.stderr, flush=True)
        rest = await steady(fleet, max(30.0, 6 * interval))
        print(f"{name}: steady {rest}", file=sys.stderr, flush=True)
        gpus = await kill_gpus(fleet, rng.sample(fleet.names, min(kill, pairs)), settle)
        print(f"{name}: GPU kills {gpus}", file=sys.stderr, flush=True)
        zone = await preempt_standbys(fleet, rng.sample(fleet.names, min(kill, pairs)), settle)
        print(f"{name}: preemptions {zone}", file=sys.stderr, flush=True)
        leaked = await fleet.leaked()
    finally:
        fleet_left = await _close(fleet)
    return {"profile": name, "pairs": pairs, "ready_s": round(ready, 1), "steady": rest, "single": baseline,
            "gpu_kills": gpus, "preemptions": zone, "leaked": leaked, "leftover_pids": single_left + fleet_left}


def table(results: list[dict[str, Any]]) -> str:
    rows = [("profile", "pairs", "CPU ms/pair/tick", "CPU share", "RSS MB", "API calls/min",
             "detection p50/p95 (1 pair)", "switched p95 (1 pair)", "GPUs failed over", "reprotected",
             "zone p50/p95", "reprotected", "double rentals", "leaked")]
    for r in results:
        s, g, z, one = r["steady"], r["gpu_kills"], r["preemptions"], r["single"]
        rows.append((r["profile"], str(r["pairs"]), f"{s['cpu_ms_per_pair_tick']:.2f}", f"{s['cpu_share']:.0%}",
                     f"{s['rss_mb']:.0f}", f"{s['api_calls_per_min']:.0f}",
                     f"{g['detection_p50_s']}/{g['detection_p95_s']} s ({one['detection_p95_s']} s)",
                     f"{g['switched_p95_s']} s ({one['switched_p95_s']} s)",
                     f"{g['failed_over']}/{g['killed']}", f"{g['reprotected_s']} s",
                     f"{z['detection_p50_s']}/{z['detection_p95_s']} s", f"{z['reprotected_s']} s",
                     str(g["double_rentals"]), str(len(r["leaked"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def problems(result: dict[str, Any]) -> list[str]:
    found = []
    g, one = result["gpu_kills"], result["single"]
    if g["failed_over"] < g["killed"]:
        found.append(f"{result['profile']}: {g['killed'] - g['failed_over']} killed GPU(s) not failed over")
    if g["double_rentals"] or g["rentals_by_others"]:
        found.append(f"{result['profile']}: rentals beyond one per recovery: {g}")
    if result["leaked"]:
        found.append(f"{result['profile']}: leaked instances {result['leaked']}")
    if g["detection_p95_s"] is not None and one["detection_p95_s"] is not None and \
            g["detection_p95_s"] > DETECTION_FACTOR * one["detection_p95_s"]:
        found.append(f"{result['profile']}: detection p95 {g['detection_p95_s']} s is over {DETECTION_FACTOR:g}x "
                     f"the single pair's {one['detection_p95_s']} s")
    return found


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    results = []
    for name in args.profiles.split(","):
        root = Path(tempfile.mkdtemp(prefix="dumont-fleet-"))
        try:
            results.append(await one_profile(name, args.pairs, args.kill, root, rng))
        except BaseException:
            print(f"{name}: failed; the controllers' logs are kept in {root}", file=sys.stderr)
            raise
        if args.keep:
            print(f"{name}: the controllers' logs and stores are kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50, help="Pairs in the fleet (default 50).")
    parser.add_argument("--kill", type=int, default=10, help="GPUs killed, then standbys preempted, at once.")
    parser.add_argument("--profiles", default="fast,seed", help="Comma-separated: fast, seed (default both).")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="Which pairs are hit (default: the time).")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/fleet.json"))
    parser.add_argument("--keep", action="store_true", help="Keep the controllers' logs and stores.")
    args = parser.parse_args()
    unknown = set(args.profiles.split(",")) - set(PROFILES)
    if unknown or args.pairs < 1 or args.kill < 1:
        parser.error(f"--profiles takes {', '.join(PROFILES)}; --pairs and --kill at least 1 (got "
                     f"{args.profiles!r}, {args.pairs}, {args.kill})")
    results = asyncio.run(run(args))
    print(table(results))
    found = [p for r in results for p in problems(r)]
    for problem in found:
        print(f"PROBLEM {problem}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "results": results, "problems": found,
                                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
