"""A chaos campaign's schedule: which fault hits which pair when, drawn from a seed (the same seed, the same plan).

Faults come one after another with a random gap, so some overlap the recovery from the one before (a partition
during a recovery, a standby preempted while it restores): that is the point. A controller kill can wait for a
moment of the pair's story (``during="failover"`` or ``"recovery"``): the runner holds it until the pair gets
there, or drops it when the pair never does before the next fault.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dumont.chaos.history import FAULT_KINDS
from dumont.errors import UsageError

# How often each kind is drawn (relative), and how long the lasting ones last (seconds, min and max).
WEIGHTS = {"gpu_kill": 3, "gpu_outbid": 2, "gpu_blackhole": 2, "standby_preempt": 2, "standby_disk_full": 1,
           "link_degrade": 2, "controller_kill": 3, "api_errors": 2, "host_key_change": 1}
DURATIONS = {"gpu_blackhole": (5.0, 20.0), "standby_disk_full": (10.0, 30.0), "link_degrade": (10.0, 40.0),
             "api_errors": (5.0, 15.0)}
MOMENTS = (None, "failover", "recovery")  # when a controller kill lands: any time, or in the middle of one


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the plan: at ``at`` seconds into the campaign, on ``pair``, lasting ``duration`` seconds."""

    at: float
    kind: str
    pair: str
    duration: float = 0.0
    during: str | None = None  # controller kills only: wait for the pair's failover or recovery

    def describe(self) -> str:
        """``T+12.3 s gpu_blackhole on main for 8.0 s`` (for the schedule the campaign prints)."""
        lasting = f" for {self.duration:.1f} s" if self.duration else ""
        moment = f" (in the middle of a {self.during})" if self.during else ""
        return f"T+{self.at:.1f} s {self.kind} on {self.pair}{lasting}{moment}"


def plan(seed: int, *, seconds: float, pairs: list[str], mean_gap: float,
         kinds: frozenset[str] = FAULT_KINDS) -> list[PlannedFault]:
    """The faults of a campaign of ``seconds`` over ``pairs``, about one every ``mean_gap`` seconds."""
    if not pairs:
        raise UsageError("a chaos campaign needs at least one pair", hint="pass --pairs 1 or more")
    unknown = sorted(kinds - FAULT_KINDS)
    if unknown:
        raise UsageError(f"unknown fault kind(s): {', '.join(unknown)}", hint=f"use {', '.join(sorted(FAULT_KINDS))}")
    if mean_gap <= 0 or seconds <= 0:
        raise UsageError(f"a campaign needs a length and a gap above 0 (got {seconds:g} s, gap {mean_gap:g} s)",
                         hint="e.g. --minutes 20")
    rng = random.Random(seed)  # noqa: S311 - a repeatable plan, not a secret
    names = sorted(kinds)
    weights = [WEIGHTS[k] for k in names]
    faults, at = [], rng.uniform(0.5, 1.5) * mean_gap
    while at < seconds:
        kind = rng.choices(names, weights)[0]
        low, high = DURATIONS.get(kind, (0.0, 0.0))
        faults.append(PlannedFault(round(at, 1), kind, rng.choice(pairs), round(rng.uniform(low, high), 1),
                                   rng.choice(MOMENTS) if kind == "controller_kill" else None))
        at += rng.uniform(0.5, 1.5) * mean_gap
    return faults
