"""The core's ports: every kind of I/O the controller does, as a small typed interface.

The effectors (failover, recovery, renting, standby replacement, start-up) and the loop reach the outside only
through these, plus the providers' ``GpuMarket``/``StandbyCloud`` (``providers/base.py``) and the endpoint's
``Endpoint`` (``endpoint/ports.py``). The product wires the real ones (``core/hosts.py`` over OpenSSH and the
host agent, ``store/sqlite.py``, ``time.time`` and ``asyncio.sleep``); the unit tests wire the in-memory fakes of
``core/fakes.py`` and move a virtual clock, so a whole recovery runs in milliseconds of wall time.

Error contracts: a ``HostAccess`` method raises only ``DumontError`` subclasses (``TransportError`` when the host
cannot be reached or its channel broke, ``ReplicationError`` when the agent refused or a pass failed,
``HostNotReady`` when readying failed); a ``StateStore`` method raises ``EpochConflict`` from ``advance_epoch``
and nothing else on purpose. Anything else is a bug, which the loop reports once and survives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from dumont.core.bootstrap import HostReadiness
from dumont.core.model import HostRef, ProbeResult
from dumont.replication.engine import PassReport, ReplicationPolicy
from dumont.replication.manifest import Manifest
from dumont.store.rows import EventRow, IntentRow, LeaseRow, OperationRow, PairRow

Clock = Callable[[], float]
"""Wall-clock seconds now (``time.time`` in the product)."""

Sleep = Callable[[float], Awaitable[None]]
"""Wait this many seconds (``asyncio.sleep`` in the product; a virtual clock's advance in tests)."""

NetworkCheck = Callable[[], Awaitable[bool | None]]
"""Whether the controller's own network is up (True/False), or None when there is nothing to check."""


class HostAccess(Protocol):
    """What the controller does to its machines: reach, ready, probe, replicate, fence and promote."""

    async def reach(self, ref: HostRef, *, deadline: float) -> None:
        """Wait until the host accepts our key over SSH (pinning its host key on first contact), by ``deadline``."""
        ...

    async def ready(self, ref: HostRef) -> HostReadiness:
        """Ready the host for the agent once (Python, rsync, workspace); later calls answer from memory."""
        ...

    def host_key(self, ref: HostRef) -> str | None:
        """The host's own key (``"ssh-ed25519 AAAA..."``), as pinned at first contact; None before it."""
        ...

    async def certify_host(self, ref: HostRef, pair: str) -> None:
        """Make the host present a certificate of its own key, signed by the pair's host CA, for the endpoint."""
        ...

    async def probe(self, ref: HostRef, *, timeout: float, command: str | None) -> tuple[ProbeResult, ...]:
        """TCP, SSH round trip and the optional check command, concurrently; never raises (failures are data)."""
        ...

    async def pair(self, pair: str, epoch: int, source: HostRef, target: HostRef) -> None:
        """Direct mode: ``source`` at ``epoch`` pushes to ``target`` with the pair key, for that epoch only."""
        ...

    async def run_pass(self, pair: str, source: HostRef, target: HostRef, policy: ReplicationPolicy,
                       progress: Callable[[int, int], None] | None = None) -> PassReport:
        """One replication pass ``source`` -> ``target`` (guards, staging, commit); raises if it did not land.
        ``progress`` hears (bytes copied, bytes to copy) while files are copied."""
        ...

    async def take_over(self, pair: str, standby: HostRef, new_epoch: int) -> dict[str, Any]:
        """Failover on the standby, one step: the old primary's key revoked and its pushes killed, the newest data
        promoted, and only then ``new_epoch`` taken (a failed promotion leaves the standby's epoch unchanged)."""
        ...

    async def promote(self, ref: HostRef, *, epoch: int, mode: str) -> dict[str, Any]:
        """Make the newest snapshot the live workspace (``candidate`` on a standby, ``take`` on a restored GPU)."""
        ...

    async def snapshot_manifest(self, ref: HostRef, seq: int) -> Manifest:
        """The manifest of the host's snapshot ``seq``."""
        ...

    async def verify_promoted(self, ref: HostRef, manifest: Manifest) -> bool:
        """Whether the promoted workspace matches ``manifest``."""
        ...

    async def set_epoch(self, ref: HostRef, epoch: int) -> int:
        """Raise the host's epoch to ``epoch``; return the host's epoch."""
        ...

    async def salvage_signature(self, ref: HostRef, folder: str) -> tuple[int, int, int]:
        """(files, bytes, newest change in ns) of a salvage folder in the host's workspace."""
        ...

    async def salvage_sort(self, ref: HostRef, folder: str) -> list[dict[str, Any]]:
        """Drop from a salvage folder what equals the live workspace; the files kept (path, size, mtime)."""
        ...

    async def watch(self, ref: HostRef, *, timeout: float) -> dict[str, Any]:
        """Wait up to ``timeout`` s for a change in the host's workspace: ``changed``, and the watcher's ``mode``
        (``inotify``, or ``poll`` with its ``reason``)."""
        ...

    async def scrub(self, ref: HostRef, *, budget_bytes: int) -> dict[str, Any]:
        """Re-read up to ``budget_bytes`` of the host's stored copies; ``corrupt`` lists what was wrong and whether
        it was mended (``repaired_from``) or will be sent again."""
        ...

    async def epoch(self, ref: HostRef) -> int:
        """The highest epoch the host has accepted."""
        ...

    async def retire_workspace(self, ref: HostRef, *, epoch: int) -> None:
        """Move a former primary's live workspace aside as it becomes a standby."""
        ...

    async def disk(self, ref: HostRef) -> tuple[int, int]:
        """Free and total bytes of the host's data disk."""
        ...

    async def forget(self, ref: HostRef, *, still_ready: bool = False) -> None:
        """Close the host's channels (``still_ready``: its key or address changed, not its disk)."""
        ...

    async def close(self) -> None:
        """Close every channel."""
        ...


class StateStore(Protocol):
    """The controller's durable state (``store/sqlite.py``)."""

    def get_pair(self, name: str) -> PairRow | None:
        """The pair called ``name``, if known."""
        ...

    def pairs(self) -> list[PairRow]:
        """Every pair, by name."""
        ...

    def save_pair(self, row: PairRow) -> None:
        """Insert or update a pair; its epoch never goes back."""
        ...

    def advance_epoch(self, pair: str, expected: int, *, to: int | None = None) -> int:
        """Take the pair's next epoch (or ``to`` if higher) if it is still ``expected`` (compare-and-set); raise
        EpochConflict if not."""
        ...

    def add_event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any] | None = None, *,
                  controller: str = "") -> int:
        """Append an event (``controller``: the one that wrote it)."""
        ...

    def lease(self, pair: str) -> LeaseRow | None:
        """Who owns a pair in the fleet."""
        ...

    def leases(self) -> list[LeaseRow]:
        """Every pair's lease."""
        ...

    def claim_lease(self, pair: str, owner: str, expected: int | None) -> int | None:
        """Take or renew a pair's lease if it is still at version ``expected`` (compare-and-set); the new version,
        or None if another controller moved it first."""
        ...

    def release_lease(self, pair: str, owner: str, expected: int) -> bool:
        """Give a pair's lease up, if still held at ``expected``."""
        ...

    def events(self, *, after: int = 0, pair: str | None = None, limit: int = 500,
               newest: bool = False) -> list[EventRow]:
        """Events after an id, oldest first: the first ``limit``, or the last ``limit`` with ``newest``."""
        ...

    def add_intent(self, pair: str, kind: str) -> int:
        """Record an operator's intent."""
        ...

    def pending_intents(self, pair: str) -> list[IntentRow]:
        """Intents not yet consumed."""
        ...

    def consume_intent(self, intent_id: int, outcome: str) -> None:
        """Mark an intent handled."""
        ...

    def start_operation(self, pair: str, kind: str, step: str, data: dict[str, Any] | None = None) -> int:
        """Open a long operation; return its id."""
        ...

    def update_operation(self, op_id: int, *, step: str | None = None, data: dict[str, Any] | None = None) -> None:
        """Record an operation's progress."""
        ...

    def finish_operation(self, op_id: int, *, succeeded: bool, error: str | None = None) -> None:
        """Close an operation."""
        ...

    def operation(self, op_id: int) -> OperationRow | None:
        """One operation."""
        ...

    def open_operation(self, pair: str) -> OperationRow | None:
        """The pair's unfinished operation, if any."""
        ...

    def operations_since(self, pair: str, kind: str, since: float, *, failed: bool = False) -> int:
        """How many operations of ``kind`` started since ``since`` (``failed``: only those that failed)."""
        ...

    def record_pass(self, pair: str, report: dict[str, Any]) -> None:
        """Record a completed pass."""
        ...

    def record_host(self, provider: str, instance_id: str, pair: str, role: str, note: str = "") -> None:
        """Record an instance the pair holds (rented, created or adopted)."""
        ...

    def release_host(self, provider: str, instance_id: str, note: str = "") -> None:
        """Record that an instance is no longer held."""
        ...

    def held_hosts(self, pair: str) -> list[tuple[str, str, str]]:
        """(provider, instance id, role) of every instance the pair still holds."""
        ...

    def last_event_id(self) -> int:
        """The newest event's id (0 when there is none)."""
        ...

    def intent(self, intent_id: int) -> IntentRow | None:
        """One intent."""
        ...

    def last_pass(self, pair: str) -> dict[str, Any] | None:
        """The pair's newest recorded pass."""
        ...

    def passes_since(self, pair: str, finished_after: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Passes that finished after a time, oldest first."""
        ...

    def recent_passes(self, pair: str, limit: int = 200) -> list[dict[str, Any]]:
        """The newest passes, oldest first."""
        ...
