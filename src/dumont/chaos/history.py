"""What a chaos campaign records as it runs, per pair: the faults it injected, the writer's acknowledged records,
the failovers and recoveries the controller made, the instances the providers held, and the pair's protection.

Everything here is plain data with times in seconds since the campaign began, so the checker
(:mod:`dumont.chaos.checker`) is a pure function of it, tested with planted violations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Faults whose target is the GPU and that justify a failover (the GPU stops serving, or can no longer be trusted:
# a GPU presenting another host key is a reinstalled machine or a man in the middle, and must never be talked to).
GPU_FAULTS = frozenset({"gpu_kill", "gpu_outbid", "gpu_blackhole", "host_key_change"})
FAULT_KINDS = GPU_FAULTS | {"standby_preempt", "standby_disk_full", "link_degrade", "controller_kill",
                            "api_errors"}


@dataclass(frozen=True)
class Fault:
    """One injected fault: when it began and ended (a heal, a restart; ``ended == began`` for an instant one)."""

    kind: str
    pair: str
    began: float
    ended: float
    detail: str = ""

    @property
    def justifies_failover(self) -> bool:
        """Whether this fault may lead the controller to move the endpoint to the standby."""
        return self.kind in GPU_FAULTS


@dataclass(frozen=True)
class Record:
    """A numbered record the writer wrote through the pair's endpoint and saw acknowledged at ``acked``."""

    pair: str
    number: int
    acked: float


@dataclass(frozen=True)
class Failover:
    """The endpoint moved to the standby at ``at``."""

    pair: str
    at: float
    reason: str


@dataclass(frozen=True)
class Rental:
    """An instance a provider held for the pair from ``created`` to ``destroyed`` (None: still held at the end);
    ``recovery``: the recovery operation that rented it (None: not rented by a recovery)."""

    pair: str
    instance_id: str
    created: float
    destroyed: float | None
    recovery: int | None = None


@dataclass(frozen=True)
class Protection:
    """A sample of the pair's state: ``protected`` when it serves from a GPU with a synced standby."""

    pair: str
    at: float
    protected: bool


@dataclass
class PairHistory:
    """Everything the campaign saw of one pair."""

    pair: str
    faults: list[Fault] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    rentals: list[Rental] = field(default_factory=list)
    protection: list[Protection] = field(default_factory=list)
    # Record numbers present in the pair's workspace at the end (read through the endpoint after the campaign).
    final_records: set[int] = field(default_factory=set)
    # Problems the snapshot checks found (torn, partial or mixed-version files), each with where it was seen.
    snapshot_problems: list[str] = field(default_factory=list)
    # How many record files those checks read (in the final workspace and the standby's retained snapshots).
    records_checked: int = 0
    # Instance ids the pair holds at the end (its primary and standby): anything else still rented is a leak.
    held_at_end: set[str] = field(default_factory=set)
