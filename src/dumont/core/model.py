"""The controller's vocabulary: pair states, host references, probe results, the observation, the actions.

Everything here is a frozen value. The loop gathers one :class:`Observation` per pair per tick, hands it with
the pair's :class:`Memory` to the pure ``decide``, and carries out the :class:`Decision`'s actions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dumont.providers.base import InstanceState


class PairState(enum.StrEnum):
    """Where a pair is (SPEC §4)."""

    STARTING = "starting"  # the controller is bringing the pair up (standby provisioning, first pass)
    SYNCING = "syncing"  # normal: the GPU is primary, the CPU standby receives passes
    DEGRADED = "degraded"  # the primary fails some checks, not yet enough to fail over
    FAILED_OVER = "failed_over"  # the CPU serves the endpoint; no recovery is running
    RECOVERING = "recovering"  # a new GPU is being rented and restored while the CPU serves
    STANDBY_LOST = "standby_lost"  # the standby is being replaced; the GPU is untouched
    PAUSED = "paused"  # an operator paused the pair: no syncs, no failover


class RecoveryStep(enum.StrEnum):
    """The steps of a recovery (SPEC §4.5), in order."""

    SEARCHING = "searching"
    RENTING = "renting"
    WAITING_SSH = "waiting_ssh"
    RESTORING = "restoring"
    CATCHING_UP = "catching_up"
    SWITCHING_BACK = "switching_back"


class Health(enum.StrEnum):
    """The result of one probe."""

    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"  # the probe could not tell (it was not run, or timed out for a reason not its own)


@dataclass(frozen=True)
class HostRef:
    """One machine of a pair, as the controller reaches it."""

    provider: str
    instance_id: str
    ssh_host: str
    ssh_port: int
    ssh_user: str
    role: str  # "gpu" or "cpu": what the machine is, whichever role (primary/standby) it plays
    alias: str  # the SSH alias its host key is pinned under

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"provider": self.provider, "instance_id": self.instance_id, "ssh_host": self.ssh_host,
                "ssh_port": self.ssh_port, "ssh_user": self.ssh_user, "role": self.role, "alias": self.alias}


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one host."""

    name: str  # provider, tcp, ssh, command
    health: Health
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class HostHealth:
    """Every probe of one host in one tick, and what its provider says."""

    provider_state: InstanceState | None
    provider_detail: str
    probes: tuple[ProbeResult, ...]
    moved_to: tuple[str, int] | None = None  # the provider reports the host at another address (a restart)

    @property
    def provider_says_lost(self) -> bool:
        """The provider reports the machine cannot serve (authoritative: no need to wait for probes)."""
        return self.provider_state is not None and self.provider_state.is_lost

    @property
    def failed(self) -> bool:
        """At least one connectivity probe failed."""
        return any(p.health == Health.FAIL for p in self.probes)

    @property
    def ok(self) -> bool:
        """Every probe that could tell says the host is fine."""
        return not self.failed and any(p.health == Health.OK for p in self.probes)

    def summary(self) -> str:
        """The failing probes in a few words, for reasons and events."""
        failing = [f"{p.name}: {p.detail}" if p.detail else p.name for p in self.probes if p.health == Health.FAIL]
        return "; ".join(failing) or "all probes ok"


@dataclass(frozen=True)
class SyncStatus:
    """Replication as the loop sees it."""

    last_good_at: float | None = None  # when the last pass finished (RPO is measured from here)
    last_started_at: float | None = None
    consecutive_failures: int = 0
    running: bool = False
    last_error: str | None = None


@dataclass(frozen=True)
class OperationStatus:
    """A long operation (recovery, standby replacement) as the loop sees it."""

    kind: str  # "recovery" or "replace_standby"
    step: str
    started_at: float
    finished: bool = False
    succeeded: bool = False
    error: str | None = None
    progress: Mapping[str, Any] | None = None  # a restore's bytes done and total, rate and time left


@dataclass(frozen=True)
class Outcome:
    """What an effector that ran inline reports for the next decision (it never sets a state itself)."""

    kind: str  # "failover"
    succeeded: bool
    detail: str  # the cause of a failover, or why it failed
    at: float


@dataclass(frozen=True)
class Intent:
    """An operator's request recorded by the API or CLI, waiting for the loop."""

    id: int
    kind: str  # failover, sync, recover, pause, resume
    created_at: float


@dataclass(frozen=True)
class Observation:
    """Everything ``decide`` may know about one pair at one instant."""

    now: float
    state: PairState
    has_standby: bool
    primary: HostHealth | None
    standby: HostHealth | None
    network_ok: bool | None  # the controller's own network; None when not checked this tick
    sync: SyncStatus
    operation: OperationStatus | None
    intents: tuple[Intent, ...] = ()
    recoveries_today: int = 0
    standby_attempts_last_hour: int = 0  # replace_standby operations that failed in the last hour
    recovery_turn: bool = True  # False: the fleet's recovery slots are taken by pairs that failed over first
    recoveries_in_flight: int = 0  # the fleet's recoveries running now (for the waiting pair's sentence)
    outcome: Outcome | None = None  # reported by an inline effector since the last decision
    probed: bool = True  # False: the host health is an earlier tick's (a woken tick), so it counts no failure
    changed_at: float | None = None  # the first change the primary's watcher saw since the last pass started


@dataclass(frozen=True)
class Policy:
    """The parts of the configuration ``decide`` needs."""

    failover_threshold: int = 3
    standby_threshold: int = 3
    auto_failover: bool = True
    auto_recovery: bool = True
    sync_interval: float = 30.0
    change_debounce: float = 0.2  # a change starts a pass this long after it (when the watcher reports changes)
    sync_failure_alert: int = 3  # seed: alert after more than 3 consecutive sync failures
    health_failure_alert: int = 5  # seed: alert after more than 5 consecutive failed checks
    max_recoveries_per_day: int = 3
    max_standby_attempts_per_hour: int = 3


@dataclass(frozen=True)
class Memory:
    """What ``decide`` remembers between ticks for one pair (kept by the loop, reset on restart)."""

    primary_failures: int = 0
    standby_failures: int = 0
    paused_from: PairState | None = None
    alerted: frozenset[str] = frozenset()  # alert kinds already raised and not yet cleared


# ---------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Action:
    """Something the executor does for one pair."""


@dataclass(frozen=True)
class RunSync(Action):
    """Start a replication pass (if none is running)."""


@dataclass(frozen=True)
class FailOver(Action):
    """Fence the primary, promote the standby, switch the endpoint (SPEC §4.4)."""

    cause: str


@dataclass(frozen=True)
class StartRecovery(Action):
    """Rent a new GPU, restore, fail back (SPEC §4.5), in the background."""


@dataclass(frozen=True)
class ReplaceStandby(Action):
    """Restart the lost standby or create a new one, and fully sync it (SPEC §4.6), in the background. With
    ``only_restart`` (the GPU is failing too, so nothing could fill a new one) only start the stopped or preempted
    standby again, with the snapshots its disk kept, so the pair can fail over to it."""

    only_restart: bool = False


@dataclass(frozen=True)
class StartCpu(Action):
    """Ask the standby cloud to start the CPU VM serving a failed-over pair again (stopped or preempted, its disk
    kept); the next observations follow it to the address it comes back on."""


@dataclass(frozen=True)
class RefreshAddress(Action):
    """Reach a host (``primary`` or ``standby``) at the address its provider now reports; its key stays pinned."""

    role: str
    ssh_host: str
    ssh_port: int


@dataclass(frozen=True)
class SetState(Action):
    """Record a new pair state."""

    state: PairState


@dataclass(frozen=True)
class Alert(Action):
    """Raise an alert (an event, a notification) once, until its condition clears."""

    kind: str
    message: str


@dataclass(frozen=True)
class ConsumeIntent(Action):
    """Mark an operator intent as handled."""

    intent_id: int
    outcome: str


@dataclass(frozen=True)
class Decision:
    """What to do, why (one sentence, used everywhere), and what to remember."""

    actions: tuple[Action, ...]
    reason: str
    memory: Memory = field(default_factory=Memory)

    def has(self, kind: type[Action]) -> bool:
        """True when an action of ``kind`` is among the actions."""
        return any(isinstance(a, kind) for a in self.actions)
