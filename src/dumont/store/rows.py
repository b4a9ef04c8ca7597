"""What the store hands back: one frozen row per table, the same whichever database holds them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PairRow:
    """A pair's durable state; hosts are stored as JSON objects (HostRef.as_dict)."""

    name: str
    state: str
    epoch: int
    primary: dict[str, Any] | None
    standby: dict[str, Any] | None
    updated_at: float


@dataclass(frozen=True)
class EventRow:
    """One entry of the append-only event log."""

    id: int
    at: float
    pair: str | None
    kind: str
    reason: str
    data: dict[str, Any]
    controller: str = ""  # the controller that wrote it ("" before fleets were recorded)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"id": self.id, "at": self.at, "pair": self.pair, "kind": self.kind, "reason": self.reason,
                "data": self.data, "controller": self.controller}


@dataclass(frozen=True)
class LeaseRow:
    """Who owns a pair in a fleet: ``version`` moves on with every renewal and every change of hands (the
    compare-and-set token); ``renewed_at`` is the writer's wall clock, for people only (no decision reads it)."""

    pair: str
    owner: str  # "" once released
    version: int
    renewed_at: float


@dataclass(frozen=True)
class IntentRow:
    """An operator's request waiting for (or handled by) the loop."""

    id: int
    pair: str
    kind: str
    created_at: float
    consumed_at: float | None
    outcome: str | None


@dataclass(frozen=True)
class OperationRow:
    """A long operation and its progress."""

    id: int
    pair: str
    kind: str
    step: str
    started_at: float
    finished_at: float | None
    succeeded: bool | None
    error: str | None
    data: dict[str, Any]


# The columns of a pass as the store hands it back, and the select every operation query starts from.
PASS_KEYS = ("epoch", "seq", "snapshot_seq", "started_at", "finished_at", "files", "bytes", "bytes_sent", "copied")
OP_SELECT = "SELECT id, pair, kind, step, started_at, finished_at, succeeded, error, data FROM operations"


def to_json(value: dict[str, Any] | None) -> str | None:
    """A host column's text (None stays NULL)."""
    return json.dumps(value) if value is not None else None


def pair_row(row: tuple[Any, ...]) -> PairRow:
    """A ``pairs`` row as read."""
    return PairRow(row[0], row[1], int(row[2]), json.loads(row[3]) if row[3] else None,
                   json.loads(row[4]) if row[4] else None, float(row[5]))


def operation_row(row: tuple[Any, ...]) -> OperationRow:
    """An ``operations`` row as read (``succeeded`` is stored as 0/1)."""
    succeeded = None if row[6] is None else bool(row[6])
    return OperationRow(row[0], row[1], row[2], row[3], row[4], row[5], succeeded, row[7], json.loads(row[8]))
