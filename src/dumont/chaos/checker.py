"""The chaos campaign's checker (SPEC §8): one pure pass over a pair's history, every violation named with the
seed and the time to replay it.

The rules, per pair:
- **nothing acknowledged is lost** beyond the RPO bound: a record acknowledged more than ``rpo_bound`` before a
  failover, or acknowledged after the last failover, must be in the workspace at the end (judged only for a pair
  protected at the end: for one that is not, that is the violation);
- **nothing torn**: the snapshot checks found no torn, partial or mixed-version file;
- **no false failover**: every failover follows a fault that justifies one (a GPU fault on that pair) by at most
  ``detection_bound`` seconds after the fault began (or while it lasted);
- **a changed host key is refused**: a GPU that starts presenting another host key is failed over from within
  ``detection_bound`` seconds (the controller's pinned key refuses it, so it can no longer be trusted);
- **no leak**: every instance rented for the pair is destroyed by the end, unless the pair holds it;
- **no double rental**: a recovery never holds two rented instances at once;
- **back to protected**: a fault that cost the pair its protection is followed by the pair protected again
  within ``recovery_bound`` seconds of its end (or another fault has begun by then, whose own bound then
  applies), and the pair is protected at the end.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from dumont.chaos.history import Fault, PairHistory


@dataclass(frozen=True)
class Bounds:
    """How long each promise may take, in seconds."""

    rpo: float
    detection: float
    recovery: float


@dataclass(frozen=True)
class Violation:
    """One broken promise: which, on which pair, when (seconds into the campaign), and what was seen."""

    rule: str
    pair: str
    at: float
    detail: str

    def describe(self, seed: int) -> str:
        """The violation as a sentence a person can replay: rule, pair, time, seed."""
        return f"{self.rule} on {self.pair} at T+{self.at:.1f} s (replay with --seed {seed}): {self.detail}"


@dataclass
class FaultOutcome:
    """How the faults of one kind went: how many, how many led to a failover, time to protected again."""

    kind: str
    count: int = 0
    failovers: int = 0
    back_in: list[float] = field(default_factory=list)


def check(history: PairHistory, bounds: Bounds) -> list[Violation]:
    """Every violation in one pair's history (none: the pair kept every promise)."""
    return [*_lost_records(history, bounds), *_torn(history), *_false_failovers(history, bounds),
            *_trusted_keys(history, bounds), *_leaks(history), *_double_rentals(history),
            *_unprotected(history, bounds)]


def outcomes(history: PairHistory, bounds: Bounds) -> list[FaultOutcome]:
    """Faults by kind with what followed each (for the campaign's table)."""
    by_kind: dict[str, FaultOutcome] = {}
    for fault in history.faults:
        outcome = by_kind.setdefault(fault.kind, FaultOutcome(fault.kind))
        outcome.count += 1
        if any(_explains(fault, f.at, bounds) for f in history.failovers):
            outcome.failovers += 1
        lost, back = _protection_lost_and_back(history, fault, bounds)
        if lost is None:
            outcome.back_in.append(0.0)  # the pair never lost its protection to this fault
        elif back is not None:
            outcome.back_in.append(back - fault.ended)
    return sorted(by_kind.values(), key=lambda o: o.kind)


def ended_unprotected(history: PairHistory) -> bool:
    """The pair's last sample saw it unprotected (its final workspace is no protected copy)."""
    last = max(history.protection, key=lambda s: s.at, default=None)
    return last is not None and not last.protected


def _lost_records(history: PairHistory, bounds: Bounds) -> list[Violation]:
    if ended_unprotected(history):
        return []  # its final workspace is no protected copy to count records in: "not protected at the end" says so
    failovers = sorted(f.at for f in history.failovers)
    missing = []
    for record in history.records:
        if record.number in history.final_records:
            continue
        # A record may be lost only if a failover came within the RPO bound after it was acknowledged.
        excused = any(record.acked <= at < record.acked + bounds.rpo for at in failovers)
        if not excused:
            missing.append(record)
    if not missing:
        return []
    first = min(missing, key=lambda r: r.acked)
    numbers = ", ".join(str(r.number) for r in sorted(missing, key=lambda r: r.number)[:10])
    return [Violation("acknowledged record lost", history.pair, first.acked,
                      f"{len(missing)} record(s) acknowledged and missing at the end, no failover within "
                      f"{bounds.rpo:g} s after them (numbers {numbers}{', …' if len(missing) > 10 else ''})")]


def _torn(history: PairHistory) -> list[Violation]:
    return [Violation("torn or mixed-version file in a snapshot", history.pair, 0.0, problem)
            for problem in history.snapshot_problems]


def _explains(fault: Fault, at: float, bounds: Bounds) -> bool:
    return fault.justifies_failover and fault.began <= at <= max(fault.ended, fault.began + bounds.detection)


def _false_failovers(history: PairHistory, bounds: Bounds) -> list[Violation]:
    return [Violation("failover without a fault that justifies it", history.pair, failover.at,
                      f"the endpoint moved to the standby ({failover.reason}) with no GPU fault on this pair "
                      f"within {bounds.detection:g} s before")
            for failover in history.failovers
            if not any(_explains(fault, failover.at, bounds) for fault in history.faults)]


def _trusted_keys(history: PairHistory, bounds: Bounds) -> list[Violation]:
    return [Violation("a changed host key was not refused", history.pair, fault.began,
                      f"{fault.detail or 'the GPU'} presented a new host key and the pair did not fail over from it "
                      f"within {bounds.detection:g} s")
            for fault in history.faults if fault.kind == "host_key_change"
            and not any(fault.began <= f.at <= fault.began + bounds.detection for f in history.failovers)]


def _leaks(history: PairHistory) -> list[Violation]:
    return [Violation("instance left rented", history.pair, rental.created,
                      f"instance {rental.instance_id} is still rented at the end and the pair does not hold it")
            for rental in history.rentals
            if rental.destroyed is None and rental.instance_id not in history.held_at_end]


def _double_rentals(history: PairHistory) -> list[Violation]:
    by_recovery = defaultdict(list)
    for rental in history.rentals:
        if rental.recovery is not None:
            by_recovery[rental.recovery].append(rental)
    found = []
    for recovery, rentals in sorted(by_recovery.items()):
        rentals.sort(key=lambda r: r.created)
        for earlier, later in itertools.pairwise(rentals):
            if earlier.destroyed is None or earlier.destroyed > later.created:
                found.append(Violation("two rentals for one recovery", history.pair, later.created,
                                       f"recovery {recovery} rented {later.instance_id} while it still held "
                                       f"{earlier.instance_id}"))
    return found


def _protection_lost_and_back(history: PairHistory, fault: Fault, bounds: Bounds) -> tuple[float | None, float | None]:
    """When the pair was first seen unprotected after ``fault`` began (while it lasted, or within the detection
    bound of it), and when it was next seen protected; ``(None, None)``: it never lost its protection. A sample
    taken before the controller noticed the fault is not taken for a recovery."""
    samples = sorted(history.protection, key=lambda s: s.at)
    window = max(fault.ended, fault.began + bounds.detection)
    lost = next((s.at for s in samples if fault.began <= s.at <= window and not s.protected), None)
    if lost is None:
        return None, None
    return lost, next((s.at for s in samples if s.at > lost and s.protected), None)


def _unprotected(history: PairHistory, bounds: Bounds) -> list[Violation]:
    found = []
    starts = sorted(f.began for f in history.faults)
    for fault in history.faults:
        lost, back = _protection_lost_and_back(history, fault, bounds)
        deadline = fault.ended + bounds.recovery
        if lost is None or (back is not None and back <= deadline):
            continue
        if any(fault.ended < began <= deadline for began in starts):
            continue  # another fault came before this one's bound: that one's bound applies
        seen = f"protected again after {back - fault.ended:.1f} s" if back is not None else "never protected again"
        found.append(Violation("not protected again in time", history.pair, fault.ended,
                               f"after {fault.kind} ({fault.detail or 'no detail'}): {seen} "
                               f"(bound {bounds.recovery:g} s)"))
    if ended_unprotected(history):
        last = max(s.at for s in history.protection)
        found.append(Violation("not protected at the end", history.pair, last,
                               "the campaign ended with the pair unprotected (so its acknowledged records were not "
                               "counted: its final workspace is no protected copy)"))
    return found
