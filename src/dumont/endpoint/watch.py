"""Whether a controller is heard: its heartbeats, the deadline of the next one, and the sentence status shows.

A controller sends a heartbeat every tick (any request that carries ``controller`` counts as one) and says how
long the endpoint should wait for the next (``expect_within``). Past that deadline the controller is absent: the
endpoint keeps serving the last published routes and says so.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

DEFAULT_EXPECT_WITHIN = 30.0


class Change(enum.Enum):
    """What a heartbeat or a look at the clock changed."""

    NONE = "none"
    ARRIVED = "arrived"  # a controller is heard after none was
    REPLACED = "replaced"  # another controller process took over
    LEFT = "left"  # the controller's deadline passed


@dataclass
class ControllerWatch:
    """The last controller heard; times are the endpoint's monotonic clock, except ``seen_wall``."""

    started_at: float
    pid: int | None = None
    seen_at: float | None = None
    seen_wall: float | None = None
    expect_within: float = DEFAULT_EXPECT_WITHIN
    _present: bool = False
    _recent: dict[int, float] = field(default_factory=dict)  # pid -> last heard: a fleet's controllers take turns

    def heard(self, pid: int, *, now: float, wall: float, expect_within: float | None = None) -> Change:
        """Record a heartbeat from controller ``pid``; return what changed (the controllers of a fleet, each
        serving its own pairs here, are heard in turn: that is no take-over)."""
        self._recent = {p: at for p, at in self._recent.items() if now - at <= self.expect_within}
        change = Change.NONE
        if not self._present:
            change = Change.ARRIVED
        elif pid != self.pid and pid not in self._recent:
            change = Change.REPLACED
        self._recent[pid] = now
        self.pid, self.seen_at, self.seen_wall, self._present = pid, now, wall, True
        if expect_within is not None:
            self.expect_within = expect_within
        return change

    def look(self, now: float) -> Change:
        """Notice a passed deadline; return LEFT once, when the controller has just become absent."""
        if self._present and not self.is_present(now):
            self._present = False
            return Change.LEFT
        return Change.NONE

    def deadline(self) -> float | None:
        """When the controller becomes absent unless it is heard again; None while it is absent."""
        if not self._present or self.seen_at is None:
            return None
        return self.seen_at + self.expect_within

    def is_present(self, now: float) -> bool:
        """True while the last heartbeat is younger than the controller's ``expect_within``."""
        return self.seen_at is not None and now - self.seen_at <= self.expect_within

    def silent_for(self, now: float) -> float:
        """Seconds since the last heartbeat (since the endpoint started, if none came)."""
        return now - (self.seen_at if self.seen_at is not None else self.started_at)

    def summary(self, now: float) -> str:
        """One sentence: which controller is heard, or for how long none has been."""
        silent = self.silent_for(now)
        if self.is_present(now):
            return f"controller {self.pid} heard {silent:.0f} s ago"
        if self.pid is None:
            return f"no controller for {silent:.0f} s (none since the endpoint started); serving the saved routes"
        return f"no controller for {silent:.0f} s (last: pid {self.pid}); serving the last published routes"
