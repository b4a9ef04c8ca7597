"""What the drill measured: phases with start, end and figures, the controller's events, passes and probe ticks."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = {
    "setup": "Setup",
    "normal": "Normal operation",
    "failure": "Failure",
    "detection": "Detection",
    "failover": "Failover",
    "recovery": "Auto-recovery",
    "recovered": "Recovered",
}


@dataclass
class Phase:
    """One phase of the drill, measured."""

    key: str
    started: float
    ended: float | None = None
    deadline_seconds: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    @property
    def title(self) -> str:
        """The phase's name in the report."""
        return PHASES[self.key]

    @property
    def seconds(self) -> float:
        """How long it took (so far)."""
        return (self.ended or time.time()) - self.started

    @property
    def in_time(self) -> bool:
        """Whether it ended within its deadline."""
        return self.deadline_seconds is None or (self.ended is not None and self.seconds <= self.deadline_seconds)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the measured duration."""
        return {**asdict(self), "title": self.title, "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class Check:
    """One pass/fail verdict of the drill, with what was measured against what bound."""

    name: str
    ok: bool
    detail: str


@dataclass
class Timeline:
    """Everything the drill observed, with absolute times."""

    origin: float = field(default_factory=time.time)
    phases: list[Phase] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    ticks: list[dict[str, Any]] = field(default_factory=list)
    quiet: bool = False

    def begin(self, key: str, deadline_seconds: float | None = None) -> Phase:
        """Start a phase (ending the previous one if it is still open)."""
        now = time.time()
        if self.phases and self.phases[-1].ended is None:
            self.phases[-1].ended = now
        phase = Phase(key, now, deadline_seconds=deadline_seconds)
        self.phases.append(phase)
        self.say(f"[{now - self.origin:7.2f} s] {phase.title}")
        return phase

    def end(self) -> None:
        """Close the current phase."""
        if self.phases and self.phases[-1].ended is None:
            self.phases[-1].ended = time.time()

    def phase(self, key: str) -> Phase | None:
        """The phase called ``key``, if it ran."""
        return next((p for p in self.phases if p.key == key), None)

    def on_event(self, pair: str | None, kind: str, reason: str, data: dict[str, Any]) -> None:
        """Record one controller event (and show it live)."""
        now = time.time()
        self.events.append({"at": now, "pair": pair, "kind": kind, "reason": reason, "data": data})
        if kind not in ("intent",):
            self.say(f"[{now - self.origin:7.2f} s]   {kind}: {reason}")

    def events_of(self, kind: str, after: float = 0.0) -> list[dict[str, Any]]:
        """Events of one kind after a time."""
        return [e for e in self.events if e["kind"] == kind and e["at"] >= after]

    def say(self, line: str) -> None:
        """Live progress on stderr."""
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)
